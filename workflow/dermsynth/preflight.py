"""Every model, tokenizer and weight file a run needs, found before its first job.

Without this an uncached model fails only when its job starts, maybe hours into a run. Snakemake's
``onstart`` hook (rules/common.smk; real runs only, never ``-n``) hands over the jobs it is about
to run; :func:`needs` maps them to what they load and :func:`check` resolves each: a local folder,
the Hugging Face cache, or the hub when online. Each missing one is one line: the config key, what
it is, the rules that need it, and why it is missing with the command that fetches it. The
wording comes from dermsynth.hub, which the loaders inside jobs share.

Imports neither torch nor snakemake: it runs inside the Snakemake process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import hub
from .errors import one_line

#: torch-fidelity's FID InceptionV3 weights (the TF-ported network every published FID uses)
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
#: what `pip install` needs for quality.features: inception; torchvision must be the build of the
#: installed torch (2.13.0), of the same CPU or CUDA flavour
FIDELITY_PACKAGES = "torch-fidelity==0.4.0 torchvision==0.28.0"

# Files each model kind must have (each entry: alternatives, one of which must exist), read by the
# same from_pretrained calls as the jobs make: SD with use_safetensors=True, the CLIP tokenizer, ...
_SAFETENSORS = "diffusion_pytorch_model.safetensors"
SD_CONFIGS = (
    ("model_index.json",),
    ("scheduler/scheduler_config.json",),
    ("tokenizer/vocab.json",),
    ("tokenizer/merges.txt",),
    ("text_encoder/config.json",),
    ("unet/config.json",),
    ("vae/config.json",),
)
SD_WEIGHTS = (
    ("text_encoder/model.safetensors", "text_encoder/model.safetensors.index.json"),
    (f"unet/{_SAFETENSORS}", f"unet/{_SAFETENSORS}.index.json"),
    (f"vae/{_SAFETENSORS}", f"vae/{_SAFETENSORS}.index.json"),
)
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
CLASSIFIER_FILES = (("config.json",), _WEIGHTS)
SAM_FILES = (("config.json",), _WEIGHTS, ("preprocessor_config.json", "processor_config.json"))
#: DINOv2 / CLIP of the quality stage; without a preprocessor config the published defaults apply
EMBEDDING_FILES = (("config.json",), _WEIGHTS)
EMBEDDINGS = {"dinov2": "DINOv2 features", "clip": "CLIP image features"}
DETECTOR_FILES = (("config.json",), _WEIGHTS, ("preprocessor_config.json",))

SD_RULES = ("finetune", "generate")
CLASSIFIER_RULES = ("train_classifier",)
SAM_RULES = ("segment_real", "segment_synthetic")
QUALITY_RULES = ("quality", "quality_reference")
DETECTOR_RULES = ("train_detector",)
FILTER_RULES = ("filter",)

HUB_MODEL, WEIGHTS_FILE, MODULE = "model", "file", "module"


@dataclass
class Need:
    """One thing some jobs load: a model (hub id or folder), a weights file or a Python module."""

    key: str  # the config key that names it
    what: str
    ref: str
    kind: str = HUB_MODEL
    files: tuple[tuple[str, ...], ...] = ()
    rules: list[str] = field(default_factory=list)

    def line(self, why: str) -> str:
        # a weights file's message names its file and folder itself
        value = "" if self.kind == WEIGHTS_FILE else f" = '{self.ref}'"
        return f"{self.key}{value} ({self.what}; needed by {', '.join(sorted(self.rules))}): {why}"


def enabled(value) -> bool:
    """The ``preflight`` key: ``--config preflight=false`` arrives as the string "false"."""
    return value not in (False, "false")


def needs(cfg: dict, jobs: Iterable[tuple[str, dict]] | None = None, tiny_prefix: str = "") -> list[Need]:
    """What ``jobs`` ((rule name, wildcards) pairs) load; None: every job of the default target.

    Models under ``tiny_prefix`` are built by a rule of the run (tiny_model): never missing.
    """
    if jobs is None:
        jobs = [(r, {}) for r in SD_RULES + QUALITY_RULES + FILTER_RULES]
        jobs += [(r, {"model": m}) for r in CLASSIFIER_RULES for m in cfg["classify"]["models"]]
        jobs += [(r, {"method": m}) for r in SAM_RULES for m in cfg["segment"]["methods"]]
        if cfg.get("detect", {}).get("activate"):
            jobs += [(r, {}) for r in DETECTOR_RULES]
    out: dict[str, Need] = {}

    def add(key, what, ref, kind, files, rule):
        if kind == HUB_MODEL and tiny_prefix and str(ref).startswith(tiny_prefix):
            return
        n = out.setdefault(key, Need(key, what, str(ref), kind))
        n.files += tuple(f for f in files if f not in n.files)
        if rule not in n.rules:
            n.rules.append(rule)

    merged = cfg.get("generate", {}).get("checkpoint")
    for rule, wildcards in jobs:
        if rule in SD_RULES:
            # a merged checkpoint brings its own weights; models.sd supplies configs and tokenizer
            files = SD_CONFIGS if (rule == "generate" and merged) else SD_CONFIGS + SD_WEIGHTS
            add("models.sd", "Stable Diffusion", cfg["models"]["sd"], HUB_MODEL, files, rule)
        elif rule in CLASSIFIER_RULES and wildcards.get("model"):
            m = wildcards["model"]
            add(f"models.{m}", f"{m} classifier", cfg["models"][m], HUB_MODEL, CLASSIFIER_FILES, rule)
        elif rule in SAM_RULES and wildcards.get("method", "sam") == "sam":
            if "sam" in cfg["segment"]["methods"]:
                add("segment.sam_model", "SAM", cfg["segment"]["sam_model"], HUB_MODEL, SAM_FILES, rule)
        elif rule in QUALITY_RULES:
            kinds = quality_kinds(cfg["quality"])
            if "inception" in kinds:
                path = inception_file(cfg["quality"].get("inception_weights"))
                add("quality.inception_weights", "FID InceptionV3 weights", path, WEIGHTS_FILE, (), rule)
                add("quality.features", "torch-fidelity", "inception", MODULE, (), rule)
            for kind, what in EMBEDDINGS.items():
                if kind in kinds:
                    add(f"models.{kind}", what, cfg["models"][kind], HUB_MODEL, EMBEDDING_FILES, rule)
        elif rule in FILTER_RULES:
            mem = cfg.get("filter", {}).get("memorization", {})
            kind = mem.get("semantic", {}).get("features")
            if kind in EMBEDDINGS and mem.get("activate", True) and mem["semantic"].get("activate", True):
                what = f"{EMBEDDINGS[kind]} of the semantic memorization audit"
                add(f"models.{kind}", what, cfg["models"][kind], HUB_MODEL, EMBEDDING_FILES, rule)
        elif rule in DETECTOR_RULES:
            ref = cfg["models"]["detector"]
            add("models.detector", "lesion detector", ref, HUB_MODEL, DETECTOR_FILES, rule)
    return sorted(out.values(), key=lambda n: n.key)


def quality_kinds(q: dict) -> list[str]:
    """The feature extractors of one quality job, from the defaulted quality section: quality.features,
    quality.extra_features and the C2ST's features."""
    out = [q["features"], *q.get("extra_features", [])]
    c2st = q.get("c2st", {})
    if c2st.get("activate"):
        out.append(c2st["features"])
    return list(dict.fromkeys(out))


def check(
    cfg: dict,
    jobs: Iterable[tuple[str, dict]] | None = None,
    tiny_prefix: str = "",
    modules: bool = True,
    cache_dir=None,
) -> list[str]:
    """One line per missing model, file or module that ``jobs`` need; [] when all are there.

    ``modules``: also import-check Python packages (off when jobs run in conda or containers,
    whose interpreter is not this one).
    """
    lines = []
    for n in needs(cfg, jobs, tiny_prefix):
        if n.kind == HUB_MODEL:
            why = model_problem(n.ref, n.files, key=n.key, cache_dir=cache_dir)
        elif n.kind == WEIGHTS_FILE:
            why = weights_problem(Path(n.ref))
        else:
            why = fidelity_problem() if modules else None
        if why:
            lines.append(n.line(why))
    return lines


def model_problem(ref: str, files=(), key: str | None = None, cache_dir=None) -> str | None:
    """Why ``ref`` cannot be loaded with every one of ``files``, or None when it can."""
    local = Path(ref)
    if local.is_dir():
        gaps = [alts for alts in files if not any((local / f).is_file() for f in alts)]
        return hub.explain(hub.INCOMPLETE, ref, "no " + _names(gaps[0]), key) if gaps else None
    if hub.is_local_ref(ref):
        return hub.explain(hub.NO_FOLDER, ref, key=key)
    why = hub.malformed(ref)
    if why:
        return hub.explain(hub.MALFORMED, ref, why, key)
    gaps, cached = _cache_gaps(ref, files, cache_dir)
    if not gaps:
        return None
    if hub.offline():
        if cached:
            return hub.explain(hub.PARTIAL, ref, _names(gaps[0]), key)
        return hub.explain(hub.OFFLINE, ref, key=key)
    return _hub_problem(ref, gaps, key)


def _names(alts: tuple[str, ...]) -> str:
    return " or ".join(alts)


def _cache_gaps(ref: str, files, cache_dir) -> tuple[list, bool]:
    """The file groups missing from the HF cache, and whether any file of the repo is cached."""
    from huggingface_hub import try_to_load_from_cache

    gaps, cached = [], False
    for alts in files:
        found = [isinstance(try_to_load_from_cache(ref, f, cache_dir=cache_dir), str) for f in alts]
        cached |= any(found)
        if not any(found):
            gaps.append(alts)
    return gaps, cached


def _hub_problem(ref: str, gaps: list, key: str | None) -> str | None:
    """Online: is the repository there, readable with our credentials, and does it hold the files?"""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.auth_check(ref)  # GatedRepoError / RepositoryNotFoundError without access
        names = {s.rfilename for s in (api.model_info(ref).siblings or [])}
    except Exception as e:  # every hub failure is reported as one line, never a traceback
        kind = hub.classify(e) or hub.UNREACHABLE
        return hub.explain(kind, ref, one_line(e), key)
    lacking = [alts for alts in gaps if not names.intersection(alts)]
    return hub.explain(hub.NO_FILE, ref, _names(lacking[0]), key) if lacking else None


# ---------------------------------------------------------------- the FID Inception network


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub."""
    default = os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default))) / "hub"


def inception_file(path: str | None = None) -> Path:
    """quality.inception_weights, or torch hub's checkpoints folder (where torch-fidelity looks)."""
    return Path(path) if path else torch_hub_dir() / "checkpoints" / INCEPTION_FILE


def inception_fetch_command(path: Path) -> str:
    return f"curl -L --create-dirs -o {path} {INCEPTION_URL}"


def weights_problem(path: Path, timeout: float = 10.0) -> str | None:
    """None when the file is there, or when online and its URL answers (the job downloads it)."""
    if path.is_file():
        return None
    if hub.offline():
        why = "the network is off (HF_HUB_OFFLINE)"
    else:
        why = url_problem(INCEPTION_URL, timeout)
        if why is None:
            return None
    return missing_weights(path, why)


def missing_weights(path: Path, why: str) -> str:
    name = path.name if path.name == INCEPTION_FILE else f"{path.name} (the FID weights {INCEPTION_FILE})"
    return (
        f"{name} is not in {path.parent} and {why}: on a networked machine run "
        f"`{inception_fetch_command(path)}`, or use quality.features: domain|tiny"
    )


def url_problem(url: str, timeout: float = 10.0) -> str | None:
    """None when ``url`` answers a HEAD request, else why not."""
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except Exception as e:  # DNS, refused, timeout, HTTP error: all mean "cannot fetch it now"
        return f"its URL cannot be reached ({one_line(e, 120)})"


def fidelity_problem(python: str | None = None, timeout: float = 300.0) -> str | None:
    """None when torch-fidelity imports in the jobs' interpreter, else why not and how to install it.

    A fresh interpreter: a torchvision of the wrong build (a CUDA wheel beside a CPU torch) fails at
    import with a RuntimeError, and must not take the Snakemake process down with it.
    """
    remedy = f"`pip install {FIDELITY_PACKAGES}`, or use quality.features: domain|tiny"
    if importlib.util.find_spec("torch_fidelity") is None:
        return f"torch-fidelity is not installed: {remedy}"
    try:
        r = subprocess.run(
            [python or sys.executable, "-c", "import torch_fidelity"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"importing torch-fidelity took over {timeout:.0f} s: {remedy}"
    if r.returncode == 0:
        return None
    last = (r.stderr.strip().splitlines() or ["exit status " + str(r.returncode)])[-1]
    return (
        f"torch-fidelity fails to import ({last[:160]}); torchvision must be the build of the "
        f"installed torch: {remedy}"
    )


def report(lines: list[str]) -> str:
    """The text Snakemake prints when the check fails: the lines, then what happened."""
    tail = (
        f"dermsynth preflight: {len(lines)} missing, no job was started "
        "(`--config preflight=false` skips this check)"
    )
    return "\n".join([*(f"dermsynth preflight: {line}" for line in lines), tail])
