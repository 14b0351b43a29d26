"""Loading pretrained models by hub id or local directory, and one line saying why one is missing.

One classifier serves the check before any job (dermsynth.preflight) and the loaders inside jobs
(load_pretrained): offline and not cached, hub unreachable, no such repository (a typo, or private),
gated, unknown revision, a file the repository lacks, a malformed id, a missing or incomplete folder.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelNotFoundError, one_line

OFFLINE = "offline"
PARTIAL = "partial"
UNREACHABLE = "unreachable"
NOT_FOUND = "not_found"
GATED = "gated"
REVISION = "revision"
NO_FILE = "no_file"
MALFORMED = "malformed"
NO_FOLDER = "no_folder"
INCOMPLETE = "incomplete"


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it: the project's one offline switch (Makefile, tests)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def fetch_command(ref: str) -> str:
    return f"hf download {ref}"


def is_local_ref(ref: str) -> bool:
    """A reference written as a path: from_pretrained would never look it up on the hub."""
    return Path(ref).is_absolute() or ref.startswith((".", "~", "results/")) or Path(ref).is_dir()


def malformed(ref: str) -> str | None:
    """Why ``ref`` cannot be a hub id (huggingface_hub's own rule), or None when it can."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError as e:
        return one_line(e).split(": ", 1)[-1]
    return None


def classify(e: BaseException) -> str | None:
    """The kind of a failure to reach a model, read from the huggingface_hub errors in the chain.

    transformers and diffusers wrap the hub's errors in their own OSError; the first recognised one
    along ``__cause__``/``__context__`` decides. None: not a hub failure (a corrupt file, a full disk).
    """
    from huggingface_hub import errors as E

    # subclasses first: GatedRepoError is a RepositoryNotFoundError, LocalEntryNotFoundError an
    # EntryNotFoundError, OfflineModeIsEnabled a ConnectionError
    kinds = (
        (E.GatedRepoError, GATED),
        (E.RepositoryNotFoundError, NOT_FOUND),
        (E.RevisionNotFoundError, REVISION),
        (E.OfflineModeIsEnabled, OFFLINE),
        (E.LocalEntryNotFoundError, OFFLINE),
        (E.EntryNotFoundError, NO_FILE),
        (E.HFValidationError, MALFORMED),
    )
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for cls, kind in kinds:
            if isinstance(e, cls):
                return kind
        if _is_connection_error(e):
            return UNREACHABLE
        e = e.__cause__ or e.__context__
    return None


def _is_connection_error(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    name, module = type(e).__name__, type(e).__module__
    return module.split(".")[0].startswith(("httpx", "requests", "urllib3")) and (
        "Connect" in name or "Timeout" in name or "Network" in name
    )


def explain(kind: str, ref: str, detail: str = "", key: str | None = None) -> str:
    """Why ``ref`` cannot be loaded and the command or edit that fixes it: one line that does not
    repeat the reference's name up front (the caller says which model it is about)."""
    setting = f"set {key}" if key else "set the config key"
    cmd = f"`{fetch_command(ref)}`"
    detail = " ".join(str(detail).split())
    texts = {
        OFFLINE: "not in the Hugging Face cache and the hub is off (HF_HUB_OFFLINE): on a networked "
        f"machine run {cmd}, or {setting} to a local folder",
        PARTIAL: f"only partly in the Hugging Face cache (no {detail}) and the hub is off "
        f"(HF_HUB_OFFLINE): on a networked machine run {cmd}",
        UNREACHABLE: f"not in the Hugging Face cache and the hub cannot be reached ({detail}): on a "
        f"networked machine run {cmd}, or {setting} to a local folder",
        NOT_FOUND: "no such repository on the hub: check the id for a typo (a private one needs "
        f"`hf auth login`), or {setting} to a local folder",
        GATED: f"gated on the hub: accept its terms at https://huggingface.co/{ref}, run "
        f"`hf auth login`, then {cmd}",
        REVISION: f"no such revision on the hub ({detail})",
        NO_FILE: f"the hub repository lacks a file it needs ({detail}): is it the right kind of model? "
        "fix the id",
        MALFORMED: f"neither an existing folder nor a hub id (namespace/name: {detail}): fix "
        f"{key or 'the config key'}",
        NO_FOLDER: "no such folder: build it (demo: the tiny_model rule), save a model there, or "
        f"{setting} to a hub id",
        INCOMPLETE: f"the folder is incomplete ({detail}): save the whole model there "
        f"(save_pretrained, or `hf download <hub id> --local-dir {ref}`)",
    }
    return texts[kind]


def load_pretrained(cls, name_or_path: str, **kwargs):
    """``cls.from_pretrained`` whose failure to find the model is one ModelNotFoundError line."""
    ref = str(name_or_path)
    exists = Path(ref).exists()
    if not exists and is_local_ref(ref):
        raise ModelNotFoundError(f"model '{ref}': {explain(NO_FOLDER, ref)}")
    if not exists and (why := malformed(ref)):
        # checked first: diffusers reports a malformed id as a ValueError, not an OSError
        raise ModelNotFoundError(f"model '{ref}': {explain(MALFORMED, ref, why)}")
    try:
        return cls.from_pretrained(ref, **kwargs)
    except OSError as e:
        kind = INCOMPLETE if exists else classify(e)
        if kind:
            why = explain(kind, ref, one_line(e))
        else:  # not the hub's: a corrupt file, a full disk, permissions; its own words, and the cause's
            cause = f"; {one_line(e.__cause__, 120)}" if e.__cause__ is not None else ""
            why = f"cannot be loaded ({one_line(e, 120)}{cause})"
        raise ModelNotFoundError(f"model '{ref}': {why}") from None
