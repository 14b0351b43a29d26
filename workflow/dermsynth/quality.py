"""How close synthetic images are to real ones, and how varied: FID/KID, precision/recall, diversity.

Every metric works on features from one pluggable extractor (config ``quality.features``):

- ``inception``: the standard FID network (torch-fidelity's InceptionV3 weights, as torchmetrics uses
  them). It needs torch-fidelity and the weights file, which a networked job downloads; offline
  without it the job stops with one line naming the file, its folder and the command that fetches it
  (the preflight check before any job says the same, dermsynth.preflight).
- ``domain``: the penultimate features (the classification head's input) of the project's own
  real-only classifier, the way medigan reports a RadImageNet-FID: distances a dermoscopy model sees.
- ``tiny``: a fixed random conv net (seeded, no weights file), for the offline demo and the tests.
- ``dinov2`` and ``clip`` (``quality.extra_features``, dermsynth.embeddings): DINOv2 and CLIP image
  features through transformers, for the metrics beside FID (dermsynth.fidelity): Fréchet distance
  and precision/recall/density/coverage in DINOv2 features, CMMD in CLIP features, and a classifier
  two-sample test (C2ST) on the features ``quality.c2st.features`` names.

On those features: FID and KID (torchmetrics, fed the features through an identity "network"), the
k-NN manifold metrics precision / recall / density / coverage (Kynkäänniemi et al. 2019; Naeem et
al. 2020), which separate low fidelity (precision, density) from low diversity (recall, coverage);
and on the pixels: mean pairwise MS-SSIM within a set (higher = less varied) and the fraction of
near-duplicate pairs. A set smaller than ``min_images`` gets ``None`` with the reason, never a crash.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import config, embeddings, fidelity, hub, io, preflight
from .device import resolve_device
from .errors import ConfigError, ModelNotFoundError, one_line
from .progress import Bar

log = logging.getLogger("dermsynth.quality")

INCEPTION_FILE, INCEPTION_URL = preflight.INCEPTION_FILE, preflight.INCEPTION_URL
METRICS = (
    "fid",
    "kid",
    "kid_std",
    "precision",
    "recall",
    "density",
    "coverage",
    "ms_ssim",
    "ms_ssim_real",
    "near_duplicates",
)

# ---------------------------------------------------------------- feature extractors


class TinyEncoder(torch.nn.Module):
    """A fixed random conv net: 3 strided conv layers, mean+std pooled (256 features).

    Random conv features separate colour, texture and shape statistics well enough for FID-style
    comparisons (and grow with noise), need no download, and are identical for a given seed.
    """

    def __init__(self, seed: int = 0, size: int = 64):
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        chans = (3, 32, 64, 128)
        self.convs = torch.nn.ModuleList()
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            conv = torch.nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / (cin * 9)))
                conv.bias.zero_()
            self.convs.append(conv)
        self.size = int(size)
        self.num_features = 2 * chans[-1]
        self.eval()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # uint8 (B, 3, H, W)
        x = x.float() / 127.5 - 1.0
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = torch.nn.functional.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
        for conv in self.convs:
            x = torch.relu(conv(x))
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def inception_weights_path(path: str | None = None) -> Path:
    """The InceptionV3 FID weights file (downloaded there when missing and online), or one
    ModelNotFoundError line naming the file, its folder and the command that fetches it."""
    p = preflight.inception_file(path)
    if not p.is_file() and not hub.offline():
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            # writes a temporary file beside it and renames: no half file is left behind
            torch.hub.download_url_to_file(INCEPTION_URL, str(p), progress=False)
        except Exception as e:  # the message below says what to do; the cause goes to the log
            log.warning("downloading %s failed: %s", INCEPTION_URL, one_line(e))
    if not p.is_file():
        why = "the network is off (HF_HUB_OFFLINE)" if hub.offline() else "downloading it failed"
        raise ModelNotFoundError(f"quality.inception_weights: {preflight.missing_weights(p, why)}")
    try:
        import torch_fidelity  # noqa: F401
    except Exception as e:  # ImportError, or a RuntimeError from a torchvision of another build
        raise ModelNotFoundError(
            f"quality.features: inception needs torch-fidelity, which fails to import ({one_line(e, 120)}): "
            f"`pip install {preflight.FIDELITY_PACKAGES}` (torchvision built for the installed torch), "
            "or use quality.features: domain|tiny"
        ) from None
    return p


class Extractor:
    """images (uint8 tensor B, 3, H, W) -> features (float tensor B, D), and the input side."""

    def __init__(self, kind: str, size: int, fn, name: str, device: torch.device):
        self.kind, self.size, self.fn, self.name, self.device = kind, int(size), fn, name, device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.fn(x.to(self.device)).float().cpu()


def load_extractor(
    kind: str, cfg: dict | None = None, model_dir=None, classes=None, device: str = "auto"
) -> Extractor:
    """The ``kind`` extractor; ``cfg``: the rest of the quality section.

    ``model_dir``: for ``domain`` the trained classifier's folder; for ``dinov2`` and ``clip`` the
    model (hub id or folder; None = the schema's ``models.<kind>`` default). E.g.
    ``load_extractor("dinov2", model_dir=config["models"]["dinov2"], device="cpu")``.
    """
    dev = resolve_device(device)
    if kind in embeddings.KINDS:
        ref = str(model_dir or config.section("models")[kind])
        fn, size, name = embeddings.load(kind, ref, dev)
        return Extractor(kind, size, fn, name, dev)
    c = config.section("quality", {**(cfg or {}), "features": kind})
    if kind == "tiny":
        enc = TinyEncoder(seed=c["seed"], size=c["image_size"]).to(dev)
        return Extractor(kind, c["image_size"], enc, f"tiny random conv net (seed {c['seed']})", dev)
    if kind == "inception":
        weights = inception_weights_path(c["inception_weights"])
        # imported here: torch-fidelity is optional and pulls torchvision
        from torchmetrics.image.fid import NoTrainInceptionV3

        net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights)
        ).to(dev)
        return Extractor(kind, 299, net, "InceptionV3 pool3 (torch-fidelity weights)", dev)
    return _domain_extractor(model_dir, classes, dev)  # the schema allows no other kind


def _domain_extractor(model_dir, classes, dev) -> Extractor:
    """Penultimate features of a trained classifier: the input of its classification head."""
    from .classify import load_trained, normalizer

    if model_dir is None or not Path(model_dir).exists():
        raise ModelNotFoundError(
            f"quality.features: domain needs the real-only classifier at {model_dir}: train it first "
            "(rule train_classifier) or use quality.features: tiny|inception"
        )
    model, mean, std, size = load_trained(model_dir, list(classes or []))
    model.to(dev).eval()
    norm = normalizer(mean, std, dev)
    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Module):
        raise ConfigError(f"classifier at {model_dir} has no .classifier head to take features from")
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, args):
        captured["x"] = args[0]

    head.register_forward_pre_hook(hook)

    def fn(x: torch.Tensor) -> torch.Tensor:
        model(pixel_values=norm(x.float() / 255.0))
        return captured["x"].reshape(x.shape[0], -1)

    return Extractor("domain", size, fn, f"penultimate features of {io.rel(model_dir)}", dev)


def load_uint8(paths: list[str], size: int, threads: int = 1) -> torch.Tensor:
    from .classify import load_images

    return load_images([str(p) for p in paths], size, threads)


def extract(
    paths: list[str], extractor: Extractor, batch_size: int = 64, threads: int = 1, desc: str | None = None
) -> np.ndarray:
    """Features of every image in ``paths`` (N, D) float64."""
    out = []
    for i in Bar(range(0, len(paths), batch_size), desc=desc, disable=not desc, leave=False):
        x = load_uint8(paths[i : i + batch_size], extractor.size, threads)
        out.append(extractor(x).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


# ---------------------------------------------------------------- metrics on features


class _Identity(torch.nn.Module):
    """Hands precomputed features to torchmetrics' FID/KID as if it were the network."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x):
        return x


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    m = FrechetInceptionDistance(feature=_Identity(real.shape[1]), reset_real_features=True)
    m.update(torch.as_tensor(real, dtype=torch.float64), real=True)
    m.update(torch.as_tensor(fake, dtype=torch.float64), real=False)
    # eigenvalues of a near-singular product can come out a hair below zero for identical sets
    return max(0.0, float(m.compute()))


def kid(
    real: np.ndarray, fake: np.ndarray, subsets: int = 50, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float, int]:
    """(KID mean, std over subsets, subset size used): the subset shrinks to fit the smaller set."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = int(min(subset_size, len(real), len(fake)))
    with warnings.catch_warnings():  # "features kept in a buffer": we hand it features, not images
        warnings.simplefilter("ignore", UserWarning)
        m = KernelInceptionDistance(feature=_Identity(real.shape[1]), subsets=int(subsets), subset_size=size)
    m.update(torch.as_tensor(real, dtype=torch.float64), real=True)
    m.update(torch.as_tensor(fake, dtype=torch.float64), real=False)
    state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))  # KID draws its subsets with torch.randperm
    try:
        mean, std = m.compute()
    finally:
        torch.random.set_rng_state(state)
    return float(mean), float(std), size


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict:
    """Precision, recall (Kynkäänniemi 2019), density, coverage (Naeem 2020) with k-NN balls."""
    from sklearn.metrics import pairwise_distances

    d_rr = pairwise_distances(real, real)
    d_ff = pairwise_distances(fake, fake)
    d_rf = pairwise_distances(real, fake)
    # k-th neighbour excluding the point itself: column k of the sorted row (column 0 is the 0 self-distance)
    r_real = np.sort(d_rr, axis=1)[:, k]
    r_fake = np.sort(d_ff, axis=1)[:, k]
    in_real = d_rf <= r_real[:, None]  # (n_real, n_fake): fake j inside real i's ball
    return {
        "precision": float(in_real.any(axis=0).mean()),
        "recall": float((d_rf <= r_fake[None, :]).any(axis=1).mean()),
        "density": float(in_real.sum(axis=0).mean() / k),
        "coverage": float((d_rf.min(axis=1) <= r_real).mean()),
    }


# ---------------------------------------------------------------- diversity on pixels


def _ms_ssim_betas(size: int, kernel: int = 11) -> tuple[float, ...]:
    """MS-SSIM's five scale weights, cut to the scales an image of ``size`` px supports, renormalised."""
    betas = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    n = 1
    while n < len(betas) and size > (kernel - 1) * 2**n:
        n += 1
    b = np.asarray(betas[:n])
    return tuple(float(x) for x in b / b.sum())


def pairwise_ms_ssim(
    images: torch.Tensor, max_pairs: int = 500, seed: int = 0, batch: int = 64
) -> np.ndarray:
    """MS-SSIM of up to ``max_pairs`` random distinct pairs of ``images`` (uint8 N, 3, S, S)."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    n = len(images)
    if n < 2:
        return np.zeros(0)
    all_pairs = n * (n - 1) // 2
    rng = np.random.default_rng(seed)
    if all_pairs <= max_pairs:
        i, j = np.triu_indices(n, 1)
    else:
        i = rng.integers(0, n, max_pairs * 2)
        j = rng.integers(0, n, max_pairs * 2)
        keep = i != j
        i, j = i[keep][:max_pairs], j[keep][:max_pairs]
    betas = _ms_ssim_betas(images.shape[-1])
    x = images.float() / 255.0
    out = []
    for s in range(0, len(i), batch):
        a, b = x[i[s : s + batch]], x[j[s : s + batch]]
        v = ms_ssim(a, b, data_range=1.0, betas=betas, reduction="none", normalize="relu")
        out.append(v.reshape(-1).numpy())
    return np.concatenate(out).astype(np.float64)


# ---------------------------------------------------------------- one comparison


def _na(reason: str) -> dict:
    return {**dict.fromkeys(METRICS), **dict.fromkeys(fidelity.MODERN), "status": "n/a", "reason": reason}


def compare(
    real_feats: np.ndarray,
    fake_feats: np.ndarray,
    fake_images: torch.Tensor | None,
    real_images: torch.Tensor | None,
    cfg: dict | None = None,
) -> dict:
    """Every metric of one real-vs-synthetic comparison; ``n/a`` with the reason for too few images."""
    c = config.section("quality", cfg)
    n_r, n_f = len(real_feats), len(fake_feats)
    need = max(int(c["min_images"]), int(c["nearest_k"]) + 2, 2)
    base = {"n_real": int(n_r), "n_synthetic": int(n_f)}
    if n_r < need or n_f < need:
        which = "synthetic" if n_f < need else "real"
        return {
            **base,
            **_na(f"too few {which} images ({min(n_r, n_f)} < {need}) for FID/KID and k-NN metrics"),
        }
    out = dict(base)
    out["fid"] = fid(real_feats, fake_feats)
    out["kid"], out["kid_std"], out["kid_subset_size"] = kid(
        real_feats, fake_feats, c["kid_subsets"], c["kid_subset_size"], c["seed"]
    )
    out.update(prdc(real_feats, fake_feats, int(c["nearest_k"])))
    out["ms_ssim"] = out["near_duplicates"] = out["ms_ssim_real"] = None
    if fake_images is not None:
        v = pairwise_ms_ssim(fake_images, int(c["max_pairs"]), int(c["seed"]))
        out["ms_ssim"] = float(v.mean()) if len(v) else None
        out["near_duplicates"] = float((v >= c["near_duplicate_ms_ssim"]).mean()) if len(v) else None
        out["n_pairs"] = int(len(v))
    if real_images is not None:
        v = pairwise_ms_ssim(real_images, int(c["max_pairs"]), int(c["seed"]) + 1)
        out["ms_ssim_real"] = float(v.mean()) if len(v) else None
    out["status"], out["reason"] = "ok", ""
    return out


# ---------------------------------------------------------------- the stage


def _subsample(paths: list[str], max_images, seed: int) -> list[str]:
    if max_images and len(paths) > int(max_images):
        idx = np.sort(np.random.default_rng(seed).choice(len(paths), int(max_images), replace=False))
        return [paths[i] for i in idx]
    return paths


def _paths(df: pd.DataFrame, label: str, sampler: str | None = None) -> list[str]:
    if df.empty:
        return []
    m = df["label"].astype(str) == label
    if sampler is not None and "sampler" in df.columns:
        m &= df["sampler"].astype(str) == sampler
    return df.loc[m, "path"].astype(str).tolist()


class _Featurizer:
    """Features of every configured kind and diversity-size pixels of image lists, per job.

    ``feature_models``: kind -> model (hub id or folder) of the ``dinov2``/``clip`` extractors.
    """

    def __init__(
        self, cfg: dict, model_dir=None, classes=None, device="auto", threads=1, feature_models=None
    ):
        self.c = config.section("quality", cfg)
        self.threads = threads
        models = dict(feature_models or {})
        self.extractors = {
            kind: load_extractor(
                kind, self.c, models.get(kind) if kind in embeddings.KINDS else model_dir, classes, device
            )
            for kind in fidelity.kinds(self.c)
        }
        self.ex = self.extractors[self.c["features"]]
        self.names = {kind: ex.name for kind, ex in self.extractors.items()}

    def __call__(self, paths: list[str], desc: str) -> tuple[dict, torch.Tensor]:
        bs = int(self.c["batch_size"])
        feats = {
            k: extract(paths, ex, bs, self.threads, f"{desc} ({k})") for k, ex in self.extractors.items()
        }
        pix = load_uint8(paths, int(self.c["image_size"]), self.threads) if paths else None
        return feats, pix

    def compare(self, real: dict, fake: dict, fake_pix, real_pix) -> dict:
        """:func:`compare` on the main features, then the metrics beside FID on the others."""
        main = self.c["features"]
        res = compare(real[main], fake[main], fake_pix, real_pix, self.c)
        if res["status"] == "ok":
            res.update(fidelity.modern(real, fake, self.c))
        return res


def quality_job(
    real_manifests,
    synthetic_manifest,
    label: str,
    sampler: str,
    out_json,
    cfg: dict,
    model_dir=None,
    classes=None,
    run: str = "",
    device: str = "auto",
    threads: int = 1,
    feature_models: dict | None = None,
) -> dict:
    """One class x sampler: the kept synthetic images against the real training images of the class."""
    torch.set_num_threads(max(1, int(threads)))
    c = config.section("quality", cfg)
    real = _subsample(_paths(io.read_manifests(real_manifests), label), c["max_images"], c["seed"])
    synth_df = io.read_csv(synthetic_manifest)
    fake = _subsample(_paths(synth_df, label, sampler), c["max_images"], c["seed"])
    feat = _Featurizer(c, model_dir, classes, device, threads, feature_models)
    rf, rp = feat(real, f"real {label}")
    ff, fp = feat(fake, f"{label} {sampler}")
    res = feat.compare(rf, ff, fp, rp)
    res.update(
        {
            "kind": "synthetic",
            "label": label,
            "sampler": sampler,
            "run": run,
            "reference": "real train",
            "features": c["features"],
            "extractor": feat.ex.name,
        }
    )
    io.write_json(out_json, res)
    log.info(
        "%s/%s: %s",
        label,
        sampler,
        {
            k: res.get(k)
            for k in ("fid", "kid", "precision", "recall", "fd_dinov2", "cmmd_clip", "c2st_auroc")
        },
    )
    return res


def reference_job(
    train_manifests,
    dataset_manifests: dict,
    classes: list[str],
    out_json,
    cfg: dict,
    model_dir=None,
    gap_datasets=None,
    device: str = "auto",
    threads: int = 1,
    feature_models: dict | None = None,
) -> dict:
    """The scale for every synthetic row, per class: two halves of the real training set (the floor)
    and the two real datasets against each other (the domain gap)."""
    torch.set_num_threads(max(1, int(threads)))
    c = config.section("quality", cfg)
    feat = _Featurizer(c, model_dir, classes, device, threads, feature_models)
    train = io.read_manifests(train_manifests)
    rows = []
    for label in classes:
        paths = _subsample(_paths(train, label), c["max_images"], c["seed"])
        order = np.random.default_rng(c["seed"]).permutation(len(paths))
        a = [paths[i] for i in order[: len(paths) // 2]]
        b = [paths[i] for i in order[len(paths) // 2 :]]
        fa, pa = feat(a, f"{label} half A")
        fb, pb = feat(b, f"{label} half B")
        res = feat.compare(fa, fb, pb, pa)
        res.update(
            {
                "kind": "real_floor",
                "label": label,
                "sampler": "real halves",
                "reference": "other half of real train",
            }
        )
        rows.append(res)
        gap = list(gap_datasets or [])
        if len(gap) == 2 and all(d in dataset_manifests for d in gap):
            d1 = _subsample(
                _paths(io.read_manifests([dataset_manifests[gap[0]]]), label), c["max_images"], c["seed"]
            )
            d2 = _subsample(
                _paths(io.read_manifests([dataset_manifests[gap[1]]]), label), c["max_images"], c["seed"]
            )
            f1, p1 = feat(d1, f"{label} {gap[0]}")
            f2, p2 = feat(d2, f"{label} {gap[1]}")
            res = feat.compare(f1, f2, p2, p1)
            res.update(
                {
                    "kind": "real_gap",
                    "label": label,
                    "sampler": f"real {gap[1]}",
                    "reference": f"real {gap[0]}",
                }
            )
        else:
            res = {
                **_na(f"domain gap needs two configured datasets, got {gap}"),
                "kind": "real_gap",
                "label": label,
                "sampler": "real gap",
                "reference": "-",
                "n_real": 0,
                "n_synthetic": 0,
            }
        rows.append(res)
    for r in rows:
        r.update({"features": c["features"], "extractor": feat.ex.name})
    out = {"rows": rows, "extractors": feat.names}
    io.write_json(out_json, out)
    return out


TABLE_COLUMNS = [
    "label",
    "sampler",
    "kind",
    "reference",
    "n_real",
    "n_synthetic",
    *METRICS,
    *fidelity.MODERN,
    "status",
    "reason",
]


def quality_table(reference_json, job_jsons: list) -> pd.DataFrame:
    """Reference rows first (floor, then gap, per class), then class x sampler rows."""
    import json

    ref = json.loads(Path(reference_json).read_text())["rows"]
    jobs = [json.loads(Path(p).read_text()) for p in job_jsons]
    df = pd.DataFrame(ref + jobs)
    for col in TABLE_COLUMNS:
        if col not in df.columns:
            df[col] = None
    return df[TABLE_COLUMNS + [c for c in ("features", "extractor") if c in df.columns]]


def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}g}" if abs(float(v)) >= 100 else f"{float(v):.{digits}f}"


MAIN_MARKDOWN = [m for m in METRICS if m != "kid_std"]
MODERN_MARKDOWN = [*fidelity.COLUMNS["dinov2"], *fidelity.COLUMNS["clip"], "c2st_auroc"]


def _cell(r, col: str) -> str:
    if col in ("label", "sampler", "reference"):
        return str(r[col])
    if col == "c2st_auroc" and _fmt(r["c2st_auroc"]) != "n/a" and _fmt(r["c2st_lo"]) != "n/a":
        return f"{_fmt(r['c2st_auroc'])} [{_fmt(r['c2st_lo'])}, {_fmt(r['c2st_hi'])}]"
    return _fmt(r[col])


def table_markdown(df: pd.DataFrame, metrics: list[str] | None = None) -> str:
    """The rows of ``df`` with the ``metrics`` columns (default: FID's table); n/a rows say why."""
    cols = ["label", "sampler", "reference", "n_real", "n_synthetic", *(metrics or MAIN_MARKDOWN)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [_cell(r, c) for c in cols]
        if r["status"] != "ok":
            cells[-1] += f" ({r['reason']})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _modern_text(c: dict, extractors: dict) -> str:
    """How to read the second table; empty when no metric beside FID is configured."""
    t = c["c2st"]
    if not c["extra_features"] and not t["activate"]:
        return ""
    parts = []
    if "dinov2" in c["extra_features"]:
        parts.append(
            "`fd_dinov2` is the Fréchet distance (FID's formula) and "
            "`precision/recall/density/coverage_dinov2` the k-NN metrics in DINOv2 features "
            f"({extractors.get('dinov2', 'models.dinov2')}), which follow human judgement of realism "
            "more closely than Inception's."
        )
    if "clip" in c["extra_features"]:
        parts.append(
            f"`cmmd_clip` is CMMD: the squared MMD, Gaussian RBF kernel (sigma {fidelity.CMMD_SIGMA:g}), "
            f"between CLIP embeddings ({extractors.get('clip', 'models.clip')}) times "
            f"{fidelity.CMMD_SCALE:g}; no normality assumption, 0 for identical sets, lower = closer."
        )
    if t["activate"]:
        parts.append(
            f"`c2st_auroc` is a classifier two-sample test: a standardised logistic regression on "
            f"`{t['features']}` features learns to tell the real from the synthetic images, and its AUROC "
            f"on the {t['test_fraction']:.0%} of images it did not train on ({t['ci']:.0%} bootstrap CI in "
            "brackets) says how well it can. 0.5 (a CI that covers 0.5): it cannot tell them apart, the "
            "set passes as real to this classifier; 1.0: every synthetic image is recognisable. Compare "
            "it with the real-halves row, whose CI should cover 0.5, and the real-gap row."
        )
    return "\n\n### Beside FID\n\n" + " ".join(parts) + "\n\n"


def section_quality(reference_json, job_jsons, out_csv, out_md, cfg: dict) -> pd.DataFrame:
    """The table as CSV and the report fragment "Synthetic data quality"."""
    import json

    c = config.section("quality", cfg)
    df = quality_table(reference_json, job_jsons)
    io.write_csv(out_csv, df)
    extractors = json.loads(Path(reference_json).read_text()).get("extractors", {})
    extractor = (
        df["extractor"].dropna().iloc[0] if "extractor" in df and df["extractor"].notna().any() else "?"
    )
    tiny_note = (
        " The `tiny` extractor is a random conv net: its numbers rank sets against the real "
        "reference rows of the same table, they are not comparable to published FIDs."
        if c["features"] == "tiny"
        else ""
    )
    modern = _modern_text(c, extractors)
    text = (
        "## Synthetic data quality\n\n"
        f"Features: {extractor} (`quality.features: {c['features']}`).{tiny_note} "
        "Each synthetic row compares the kept images of one class × sampler with the real training "
        "images of that class. The first rows are the scale: two disjoint halves of the real training "
        "set (the floor a perfect generator would reach) and the two real datasets against each other "
        "(the domain gap). FID/KID: lower = closer; precision/density: fidelity (synthetic images inside "
        "the real manifold); recall/coverage: diversity (real images reached by synthetic ones); "
        "ms_ssim: mean pairwise MS-SSIM within the set (higher = less varied; `ms_ssim_real` is the "
        f"real class's own value); near_duplicates: share of pairs with MS-SSIM ≥ "
        f"{c['near_duplicate_ms_ssim']} (up to {c['max_pairs']} random pairs). "
        f"k = {c['nearest_k']} nearest neighbours; KID subset size adapts to the smaller set. "
        f"Sets with fewer than {c['min_images']} images read n/a.\n\n" + table_markdown(df) + "\n"
    )
    if modern:
        text += modern + table_markdown(df, MODERN_MARKDOWN) + "\n"
    io.write_text(out_md, text)
    return df
