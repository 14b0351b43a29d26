"""The check before the first job: what the jobs to run need, and one line per missing one.

Everything with the hub is monkeypatched (no network); the HF cache is a folder in tmp_path laid out
as huggingface_hub writes it. The last tests run the real Snakemake on a copy of the workflow.
"""

import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import yaml
from huggingface_hub import HfApi
from huggingface_hub import errors as E

from dermsynth import hub, preflight
from dermsynth.config import validate

ROOT = Path(__file__).resolve().parents[1]
TINY = "results/models/tiny-"
SD_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def config(name="config.yaml", **changes) -> dict:
    cfg = yaml.safe_load((ROOT / "config" / name).read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    validate(cfg, ROOT / "config" / "schema.yaml")
    return cfg


def all_files(groups) -> list[str]:
    return [alts[0] for alts in groups]


def fill_folder(folder: Path, files) -> Path:
    for f in files:
        (folder / f).parent.mkdir(parents=True, exist_ok=True)
        (folder / f).write_text("{}")
    return folder


def fill_cache(cache: Path, repo_id: str, files) -> Path:
    """huggingface_hub's cache layout: refs/main names the snapshot that holds the files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    fill_folder(repo / "snapshots" / commit, files)
    return cache


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(hub, "offline", lambda: True)


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setattr(hub, "offline", lambda: False)


@pytest.fixture
def no_hub(monkeypatch):
    """Fails the test if anything asks the hub."""

    def refuse(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(HfApi, "auth_check", refuse)
    monkeypatch.setattr(HfApi, "model_info", refuse)


def fake_hub(monkeypatch, error=None, files=()):
    class Info:
        siblings = [type("Sibling", (), {"rfilename": f})() for f in files]

    def auth_check(self, repo_id, **kwargs):
        if error is not None:
            raise error

    monkeypatch.setattr(HfApi, "auth_check", auth_check)
    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, **kw: Info())


def _response(status):
    return httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/x"))


# ---------------------------------------------------------------- what the jobs need


def test_the_paper_config_needs_every_hub_model_and_the_inception_weights():
    cfg = config()
    keys = {n.key for n in preflight.needs(cfg, tiny_prefix=TINY)}
    models = {f"models.{m}" for m in cfg["classify"]["models"]}
    outside = {"models.sd", "segment.sam_model", "quality.inception_weights", "quality.features"}
    assert keys == outside | models | {"models.dinov2", "models.clip", "models.detector"}
    # the detection check switched off: its detector is not needed
    off = {n.key for n in preflight.needs(config(detect__activate=False), tiny_prefix=TINY)}
    assert off == outside | models | {"models.dinov2", "models.clip"}


def test_the_demo_needs_nothing_from_outside():
    # tiny local models are built by the tiny_model rule; the tiny feature extractor has no weights
    assert preflight.needs(config("demo.yaml"), tiny_prefix=TINY) == []


def test_only_the_jobs_that_will_run_count():
    cfg = config()
    finetune = preflight.needs(cfg, [("download", {"dataset": "isic"}), ("finetune", {"run": "r"})], TINY)
    assert [(n.key, n.rules) for n in finetune] == [("models.sd", ["finetune"])]
    vit = preflight.needs(cfg, [("train_classifier", {"model": "vit", "regime": "real", "seed": "0"})], TINY)
    assert [n.key for n in vit] == ["models.vit"]
    classical = [("segment_real", {"method": "classical", "dataset": "isic"})]
    assert preflight.needs(cfg, classical, TINY) == []
    sam = preflight.needs(cfg, [*classical, ("segment_real", {"method": "sam", "dataset": "isic"})], TINY)
    assert [n.key for n in sam] == ["segment.sam_model"]
    job = [("quality", {"run": "r", "label": "benign", "sampler": "euler"})]
    domain = config(quality__features="domain", quality__extra_features=[], quality__c2st={"activate": False})
    assert preflight.needs(domain, job) == []
    # the metrics beside FID: DINOv2 for FD/PRDC and the C2ST, CLIP for CMMD, each only when used
    dino = config(quality__features="domain", quality__extra_features=[])
    assert [(n.key, n.ref, n.files) for n in preflight.needs(dino, job)] == [
        ("models.dinov2", "facebook/dinov2-base", preflight.EMBEDDING_FILES)
    ]
    clip = config(
        quality__features="domain", quality__extra_features=["clip"], quality__c2st={"features": "tiny"}
    )
    assert [n.key for n in preflight.needs(clip, job)] == ["models.clip"]
    # the semantic memorization audit embeds with DINOv2 in the paper config; off, it needs nothing
    audit = preflight.needs(cfg, [("filter", {"run": "r"})], TINY)
    assert [(n.key, n.rules) for n in audit] == [("models.dinov2", ["filter"])]
    mem = {**cfg["filter"]["memorization"], "semantic": {"features": "descriptor"}}
    assert preflight.needs(config(filter__memorization=mem), [("filter", {"run": "r"})], TINY) == []
    c2st_inception = config(
        quality__features="tiny", quality__extra_features=[], quality__c2st={"features": "inception"}
    )
    assert {n.key for n in preflight.needs(c2st_inception, job)} == {
        "quality.features",
        "quality.inception_weights",
    }


def test_a_merged_checkpoint_needs_the_sd_configs_but_not_its_weights():
    cfg = config()
    cfg["generate"]["checkpoint"] = "merged.safetensors"
    (gen,) = preflight.needs(cfg, [("generate", {})])
    assert set(gen.files) == set(preflight.SD_CONFIGS)
    (both,) = preflight.needs(cfg, [("generate", {}), ("finetune", {})])
    assert set(both.files) == set(preflight.SD_CONFIGS + preflight.SD_WEIGHTS)
    assert both.rules == ["generate", "finetune"]


# ---------------------------------------------------------------- local folders and the cache


def test_a_complete_local_folder_is_found_and_an_incomplete_one_named(tmp_path, offline, no_hub):
    sd = fill_folder(tmp_path / "sd", all_files(preflight.SD_CONFIGS + preflight.SD_WEIGHTS))
    files = preflight.SD_CONFIGS + preflight.SD_WEIGHTS
    assert preflight.model_problem(str(sd), files) is None
    (sd / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    why = preflight.model_problem(str(sd), files, key="models.sd")
    assert "incomplete" in why and "unet/diffusion_pytorch_model.safetensors" in why


def test_a_folder_that_does_not_exist_is_not_looked_up_on_the_hub(tmp_path, online, no_hub):
    why = preflight.model_problem(str(tmp_path / "nope"), preflight.CLASSIFIER_FILES, key="models.vit")
    assert "no such folder" in why and "models.vit" in why


def test_a_cached_model_is_found_offline(tmp_path, offline, no_hub):
    cache = fill_cache(tmp_path, "org/vit", ["config.json", "model.safetensors"])
    assert preflight.model_problem("org/vit", preflight.CLASSIFIER_FILES, cache_dir=cache) is None
    # the weights may be any of the formats transformers reads
    cache = fill_cache(tmp_path, "org/mnv2", ["config.json", "pytorch_model.bin"])
    assert preflight.model_problem("org/mnv2", preflight.CLASSIFIER_FILES, cache_dir=cache) is None


def test_an_uncached_model_offline_is_one_line_with_the_fetch_command(tmp_path, offline, no_hub):
    why = preflight.model_problem("org/vit", preflight.CLASSIFIER_FILES, key="models.vit", cache_dir=tmp_path)
    assert "`hf download org/vit`" in why and "HF_HUB_OFFLINE" in why and "models.vit" in why
    assert "\n" not in why


def test_a_partly_cached_model_names_the_missing_file(tmp_path, offline, no_hub):
    cache = fill_cache(tmp_path, "org/vit", ["config.json"])
    why = preflight.model_problem("org/vit", preflight.CLASSIFIER_FILES, cache_dir=cache)
    assert "partly" in why and "model.safetensors" in why and "`hf download org/vit`" in why


def test_a_malformed_id_is_a_typo_not_a_missing_download(tmp_path, online, no_hub):
    why = preflight.model_problem("google//vit", preflight.CLASSIFIER_FILES, "models.vit", tmp_path)
    assert "neither an existing folder nor a hub id" in why and "hf download" not in why


# ---------------------------------------------------------------- online


@pytest.mark.parametrize(
    "error, expected",
    [
        (E.GatedRepoError("restricted", response=_response(403)), "gated"),
        (E.RepositoryNotFoundError("404", response=_response(404)), "typo"),
        (httpx2.ConnectError("Name or service not known"), "cannot be reached"),
    ],
)
def test_online_the_hub_tells_gated_from_not_found_from_unreachable(
    tmp_path, online, monkeypatch, error, expected
):
    fake_hub(monkeypatch, error=error)
    why = preflight.model_problem("org/sam", preflight.SAM_FILES, key="segment.sam_model", cache_dir=tmp_path)
    assert expected in why and "\n" not in why
    others = {"gated", "typo", "cannot be reached"} - {expected}
    assert not any(o in why for o in others)


def test_online_a_reachable_repo_with_the_files_is_fine_and_one_without_is_named(
    tmp_path, online, monkeypatch
):
    fake_hub(monkeypatch, files=["config.json", "model.safetensors", "preprocessor_config.json"])
    assert preflight.model_problem("org/sam", preflight.SAM_FILES, cache_dir=tmp_path) is None
    fake_hub(monkeypatch, files=["config.json", "model.safetensors"])  # e.g. a classifier id given for SAM
    why = preflight.model_problem("org/sam", preflight.SAM_FILES, cache_dir=tmp_path)
    assert "lacks a file" in why and "preprocessor_config.json" in why


# ---------------------------------------------------------------- Inception weights and torch-fidelity


def test_inception_default_folder_is_torch_hubs(monkeypatch, tmp_path):
    import torch

    assert preflight.torch_hub_dir() == Path(torch.hub.get_dir())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert preflight.torch_hub_dir() == Path(torch.hub.get_dir()) == tmp_path / "hub"
    assert preflight.inception_file(None) == tmp_path / "hub" / "checkpoints" / preflight.INCEPTION_FILE


def test_missing_inception_weights_name_file_folder_and_url(tmp_path, offline, monkeypatch):
    path = tmp_path / "w" / preflight.INCEPTION_FILE
    why = preflight.weights_problem(path)
    assert preflight.INCEPTION_FILE in why and str(path.parent) in why and preflight.INCEPTION_URL in why
    path.parent.mkdir()
    path.write_bytes(b"weights")
    assert preflight.weights_problem(path) is None


def test_online_missing_inception_weights_are_fine_when_the_url_answers(tmp_path, online, monkeypatch):
    path = tmp_path / preflight.INCEPTION_FILE
    monkeypatch.setattr(preflight, "url_problem", lambda url, timeout=10: None)
    assert preflight.weights_problem(path) is None  # the job downloads them
    monkeypatch.setattr(preflight, "url_problem", lambda url, timeout=10: "its URL cannot be reached (x)")
    assert "cannot be reached" in preflight.weights_problem(path)


def test_inception_extractor_without_weights_offline_is_one_line(tmp_path, offline):
    from dermsynth import quality
    from dermsynth.errors import ModelNotFoundError

    path = tmp_path / "w" / preflight.INCEPTION_FILE
    with pytest.raises(ModelNotFoundError) as e:
        quality.load_extractor("inception", {"inception_weights": str(path)}, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and preflight.INCEPTION_FILE in msg and str(path.parent) in msg
    assert preflight.INCEPTION_URL in msg and not path.parent.exists()  # nothing downloaded offline


def _fidelity_importable() -> bool:
    try:
        import torch_fidelity  # noqa: F401
    except Exception:  # not installed, or a torchvision of another build than torch
        return False
    return True


@pytest.mark.skipif(not _fidelity_importable(), reason="torch-fidelity is not importable")
def test_inception_extractor_gives_2048_features_from_a_weights_file(tmp_path, offline, monkeypatch):
    import torch
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    from dermsynth import quality

    # a random-weight state dict of the real architecture: build it without its download
    with monkeypatch.context() as m:
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path / preflight.INCEPTION_FILE
    torch.save(net.state_dict(), path)
    ex = quality.load_extractor("inception", {"inception_weights": str(path)}, device="cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, ex.size, ex.size), dtype=torch.uint8, generator=g)
    f = ex(x)
    assert f.shape == (3, 2048) and torch.isfinite(f).all()
    assert (f[0] - f[1]).abs().max() > 0  # different images, different features


def fake_module(tmp_path, monkeypatch, body: str):
    (tmp_path / "torch_fidelity").mkdir()
    (tmp_path / "torch_fidelity" / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))


def test_torch_fidelity_that_does_not_import_is_named_with_its_error(tmp_path, monkeypatch):
    # what a CUDA torchvision wheel beside a CPU torch does on import
    fake_module(tmp_path, monkeypatch, 'raise RuntimeError("operator torchvision::nms does not exist")')
    why = preflight.fidelity_problem()
    assert "torchvision::nms" in why and preflight.FIDELITY_PACKAGES in why and "\n" not in why


def test_torch_fidelity_that_imports_passes(tmp_path, monkeypatch):
    fake_module(tmp_path, monkeypatch, "")
    assert preflight.fidelity_problem() is None


def test_torch_fidelity_not_installed(monkeypatch):
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None)
    assert "not installed" in preflight.fidelity_problem()


def test_check_gives_one_line_per_missing_need_and_skips_modules_on_request(tmp_path, offline, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(preflight, "fidelity_problem", lambda: "torch-fidelity is not installed")
    cfg = config()
    sd = fill_folder(tmp_path / "sd", all_files(preflight.SD_CONFIGS + preflight.SD_WEIGHTS))
    cfg["models"]["sd"] = str(sd)
    jobs = [
        ("finetune", {"run": "r"}),
        ("train_classifier", {"model": "vit"}),
        ("quality", {"label": "benign"}),
        ("quality_reference", {}),
    ]
    lines = preflight.check(cfg, jobs, TINY, cache_dir=tmp_path / "hf")
    assert [line.split(" ", 1)[0] for line in lines] == [
        "models.clip",
        "models.dinov2",
        "models.vit",
        "quality.features",
        "quality.inception_weights",
    ]
    assert "needed by quality, quality_reference" in lines[4] and "needed by train_classifier" in lines[2]
    assert "DINOv2 features; needed by quality, quality_reference" in lines[1]
    lines = preflight.check(cfg, jobs, TINY, modules=False, cache_dir=tmp_path / "hf")
    assert [line.split(" ", 1)[0] for line in lines] == [
        "models.clip",
        "models.dinov2",
        "models.vit",
        "quality.inception_weights",
    ]
    text = preflight.report(lines)
    assert text.splitlines()[-1].startswith("dermsynth preflight: 4 missing")
    # cached DINOv2 and CLIP are found
    for ref in ("facebook/dinov2-base", "openai/clip-vit-large-patch14"):
        fill_cache(tmp_path / "hf", ref, all_files(preflight.EMBEDDING_FILES))
    lines = preflight.check(cfg, jobs, TINY, modules=False, cache_dir=tmp_path / "hf")
    assert [line.split(" ", 1)[0] for line in lines] == ["models.vit", "quality.inception_weights"]


# ---------------------------------------------------------------- through Snakemake


def _copy_workflow(dst: Path, changes) -> Path:
    from test_workflow import copy_workflow

    copy_workflow(dst)
    cfg = yaml.safe_load((dst / "config" / "demo.yaml").read_text())
    changes(cfg)
    (dst / "config" / "missing.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst


def _smk(wd: Path, *args, timeout=300):
    env = {**os.environ, "HF_HOME": str(wd / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # the copy's own dermsynth (common.smk puts it on sys.path)
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    # targets first: --configfile and --config take every word after them
    cmd = [snakemake, *args, "--cores", "2", "--configfile", "config/missing.yaml"]
    return subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True, timeout=timeout)


def _preflight_lines(out) -> list[str]:
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("dermsynth preflight:")]


@pytest.fixture(scope="module")
def two_missing(tmp_path_factory):
    def change(cfg):
        cfg["models"]["vit"] = "google/vit-base-patch16-224-in21k"
        cfg["segment"]["sam_model"] = "facebook/sam-vit-base"

    return _copy_workflow(tmp_path_factory.mktemp("preflight"), change)


def test_snakemake_stops_before_any_job_with_one_line_per_missing_model(two_missing):
    cfg = yaml.safe_load((two_missing / "config" / "missing.yaml").read_text())
    out = _smk(two_missing)
    lines = _preflight_lines(out)
    print("\n".join(lines))  # the exact output, for the record (pytest -s)
    assert out.returncode != 0
    assert not (two_missing / "results").exists()  # no job started
    assert len(lines) == 3, lines
    vit, sam, tail = lines
    assert sam.startswith(f"dermsynth preflight: segment.sam_model = '{cfg['segment']['sam_model']}' (SAM")
    assert "needed by segment_real, segment_synthetic" in sam
    assert f"`hf download {cfg['segment']['sam_model']}`" in sam
    assert vit.startswith(f"dermsynth preflight: models.vit = '{cfg['models']['vit']}'")
    assert "needed by train_classifier" in vit and f"`hf download {cfg['models']['vit']}`" in vit
    assert tail.startswith("dermsynth preflight: 2 missing, no job was started")


def test_a_target_needs_only_what_its_jobs_load(two_missing):
    out = _smk(two_missing, "classify_all")
    lines = _preflight_lines(out)
    assert out.returncode != 0 and len(lines) == 2, lines
    assert lines[0].startswith("dermsynth preflight: models.vit")


def test_a_dry_run_needs_no_model(two_missing):
    out = _smk(two_missing, "-n", "--quiet", "rules")
    assert out.returncode == 0, out.stderr[-2000:]
    assert _preflight_lines(out) == []


@pytest.mark.e2e  # runs four jobs (~40 s on 2 cores)
def test_preflight_false_lets_the_job_start_and_fail_with_the_same_words(two_missing):
    # the cheapest job that loads SAM: segment one real dataset (after download, dullrazor, resize)
    target = "results/masks/sam/real/isic/masks.csv"
    out = _smk(two_missing, target, "--config", "preflight=false", timeout=600)
    assert out.returncode != 0 and _preflight_lines(out) == []
    assert (two_missing / "results" / "data").exists()  # jobs ran this time
    log = (two_missing / "results/logs/segment/sam/real_isic.log").read_text()
    assert "`hf download facebook/sam-vit-base`" in log and "HF_HUB_OFFLINE" in log
