"""A hub model that is not cached fails at once with one line naming it and how to provide it."""

import pytest

from dermsynth.errors import ModelNotFoundError
from dermsynth.hub import load_pretrained


def test_uncached_hub_id_names_the_model_and_the_remedy(monkeypatch, tmp_path):
    from transformers import ViTForImageClassification

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(ModelNotFoundError) as err:
        load_pretrained(ViTForImageClassification, "google/vit-base-patch16-224-in21k")
    msg = str(err.value)
    assert "\n" not in msg
    assert "google/vit-base-patch16-224-in21k" in msg and "huggingface-cli download" in msg


def test_missing_local_directory_is_reported(tmp_path):
    from transformers import ViTForImageClassification

    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_pretrained(ViTForImageClassification, str(tmp_path / "no-such-model"))
