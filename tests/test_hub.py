"""A model that cannot be loaded fails at once with one line: which model, why, and the fix."""

import httpx2
import pytest
from huggingface_hub import errors as E

from dermsynth import hub
from dermsynth.errors import ModelNotFoundError
from dermsynth.hub import load_pretrained


def _response(status: int):
    return httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/x"))


class Raising:
    """A model class whose from_pretrained raises ``error``, the way transformers wraps hub errors."""

    calls = 0

    def __init__(self, error):
        self.error = error

    def from_pretrained(self, ref, **kwargs):
        Raising.calls += 1
        raise OSError(f"wrapped: cannot load {ref}") from self.error


def _load(error, ref="org/model"):
    with pytest.raises(ModelNotFoundError) as err:
        load_pretrained(Raising(error), ref)
    msg = str(err.value)
    assert "\n" not in msg and f"'{ref}'" in msg
    return msg


def test_uncached_hub_id_names_the_model_and_the_remedy(tmp_path):
    from transformers import ViTForImageClassification

    # the real loader, offline (conftest), on an empty cache
    with pytest.raises(ModelNotFoundError) as err:
        load_pretrained(
            ViTForImageClassification, "google/vit-base-patch16-224-in21k", cache_dir=str(tmp_path / "hf")
        )
    msg = str(err.value)
    assert "\n" not in msg
    assert "`hf download google/vit-base-patch16-224-in21k`" in msg and "HF_HUB_OFFLINE" in msg


def test_missing_local_directory_is_reported(tmp_path):
    from transformers import ViTForImageClassification

    with pytest.raises(ModelNotFoundError, match="no such folder"):
        load_pretrained(ViTForImageClassification, str(tmp_path / "no-such-model"))


def test_malformed_id_is_reported_without_a_load():
    Raising.calls = 0
    msg = _load(E.HFValidationError("unused"), ref="google//vit")
    assert "neither an existing folder nor a hub id" in msg and Raising.calls == 0


@pytest.mark.parametrize(
    "error, expected, not_expected",
    [
        (E.GatedRepoError("restricted", response=_response(403)), "gated", "typo"),
        (E.RepositoryNotFoundError("404", response=_response(404)), "typo", "gated"),
        (E.LocalEntryNotFoundError("not cached"), "HF_HUB_OFFLINE", "typo"),
        (E.OfflineModeIsEnabled("offline"), "HF_HUB_OFFLINE", "typo"),
        (httpx2.ConnectError("Name or service not known"), "cannot be reached", "HF_HUB_OFFLINE"),
        (E.RemoteEntryNotFoundError("no config.json", response=_response(404)), "lacks a file", "typo"),
    ],
)
def test_each_hub_failure_gets_its_own_reason(error, expected, not_expected):
    msg = _load(error)
    assert expected in msg and not_expected not in msg
    if expected in ("gated", "HF_HUB_OFFLINE", "cannot be reached"):
        assert "`hf download org/model`" in msg


def test_the_first_hub_error_in_the_chain_decides():
    # diffusers: OSError <- LocalEntryNotFoundError <- OfflineModeIsEnabled
    inner = E.LocalEntryNotFoundError("not cached")
    inner.__cause__ = E.OfflineModeIsEnabled("offline")
    assert hub.classify(OSError("x")) is None
    try:
        raise OSError("outer") from inner
    except OSError as e:
        assert hub.classify(e) == hub.OFFLINE


def test_an_error_that_is_not_the_hubs_is_not_called_offline():
    msg = _load(PermissionError("[Errno 13] Permission denied: 'blob'"))
    assert "Permission denied" in msg and "HF_HUB_OFFLINE" not in msg and "hf download" not in msg


def test_an_incomplete_local_folder_is_not_reported_as_a_hub_problem(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    msg = _load(E.LocalEntryNotFoundError("no weights"), ref=str(tmp_path))
    assert "incomplete" in msg and "--local-dir" in msg
