"""Same lesion, different photograph: embedding-similarity pairs for the splitter, and their calibration.

pHash only pairs near-identical pixels. A lesion re-photographed (other zoom, angle, light) and filed
under a second lesion id needs a descriptor that survives those changes (config ``split.embedding``):

- ``sift`` (default): SIFT keypoints (OpenCV, offline) in two views of each image: the whole image,
  and the lesion at a common size (:func:`lesion_view`), since re-photographs differ most in zoom.
  Keypoint votes across the whole set (:func:`votes`) shortlist each image's candidates; each is
  verified by the keypoints matched under one similarity transform of plausible zoom (RANSAC),
  which survives rotation, zoom and light. The score is the number of inlier matches in the better
  view: it needs the same structures in the same geometry, rare across lesions.
- ``colour``: a joint HSV histogram (16x8x8 bins, square-rooted), offline and cheap. It ignores
  where a colour is, so rotation and flips leave it unchanged, but it is weak on HAM10000.
- ``tiny`` / ``dinov2`` / ``clip``: the image features of ``quality.load_extractor`` (torch; dinov2
  and clip need the weights of ``models.dinov2`` / ``models.clip``).

Cosine features pair mutual k-nearest neighbours (``k``) whose similarity reaches ``min_similarity``:
an image pairs at most with its own few nearest, so a cluster of look-alikes cannot merge. ``sift``
pairs candidates with ``min_inliers`` or more. Merged groups are capped at ``max_group`` images,
best pairs first, so a weak pair never chains two groups together. :func:`calibrate` picks the
threshold on lesions known to have several images: the lowest score at which pairs of different
lesions stay within a budget per 1,000 images (benchmarks/_evaluation_leakage.py).

Measured on HAM10000 (200x150; calibrated on half of the lesions, measured on the other half):
``sift`` pairs 0.88 of the same-lesion pairs directly at under 1 pair per 1,000 images that the
metadata proves false (docs/evaluation.md has the figures); the lesion view, the votes and the zoom
bound each matter. ``colour`` and ``tiny`` reach < 1% at the same false-pair budget. The closest
pairs of two lesion ids are one lesion filed twice (checked by eye), as expected."""

from __future__ import annotations

import functools
import logging

import cv2
import numpy as np
from scipy import sparse

from . import config, io
from .errors import ConfigError
from .imaging import image_threads
from .progress import Bar

log = logging.getLogger("dermsynth")

FEATURES = ("colour", "sift", "tiny", "dinov2", "clip")
_HSV_BINS = (16, 8, 8)


# ---------------------------------------------------------------------------------------------
# descriptors


def _read(path, size: int) -> np.ndarray:
    """RGB uint8, longest side ``size`` (aspect kept)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr is not None else np.asarray(io.load_rgb(path))
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    if scale != 1:
        rgb = cv2.resize(
            rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    return rgb


def colour_descriptor(rgb: np.ndarray) -> np.ndarray:
    """Square-rooted joint HSV histogram (unit L1 before the root, so unit L2 after)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    h = cv2.calcHist([hsv], [0, 1, 2], None, list(_HSV_BINS), [0, 180, 0, 256, 0, 256]).ravel()
    return np.sqrt(h / max(h.sum(), 1.0)).astype(np.float32)


_SIFT = None


def sift_keypoints(
    rgb: np.ndarray, n: int = 500, contrast: float = 0.02, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(positions (k, 2), descriptors (k, 128)) of up to ``n`` SIFT keypoints on the local-contrast gray.

    ``contrast``: SIFT's contrast threshold; below OpenCV's 0.04, because dermoscopy is low-contrast
    and smooth lesions otherwise keep too few keypoints to verify. ``valid``: uint8 mask of the
    pixels keypoints may sit on (None: all).
    """
    global _SIFT
    if _SIFT is None or _SIFT[0] != (n, contrast):
        _SIFT = ((n, contrast), cv2.SIFT_create(nfeatures=n, contrastThreshold=contrast))
    gray = cv2.createCLAHE(2.0, (4, 4)).apply(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    kps, desc = _SIFT[1].detectAndCompute(gray, valid)
    pts = np.float32([k.pt for k in kps]).reshape(-1, 2)
    return pts, desc if desc is not None else np.zeros((0, 128), np.float32)


def lesion_view(
    rgb: np.ndarray, side: int, margin: float, max_upscale: float
) -> tuple[np.ndarray, np.ndarray]:
    """(view, valid mask) of the lesion at a common scale: the classical mask's bounding box plus
    ``margin`` of its longest side on each side, fitted to ``side`` px (zoom at most ``max_upscale``).

    Re-photographs differ most in zoom; at 200 px a lesion seen from afar has too few pixels for its
    keypoints to match the close-up's at their native scales, but both views put it at one size.
    Falls back to the whole image when the mask is empty. Outside the image is black and not valid.
    """
    from . import segment  # imported here: only the sift features need it

    h, w = rgb.shape[:2]
    ys, xs = np.nonzero(segment.classical_mask(rgb))
    x0, x1, y0, y1 = (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) if len(xs) else (0, w, 0, h)
    scale = min(side / (max(x1 - x0, y1 - y0) * (1 + 2 * margin)), max_upscale)
    shift = side / 2 - scale * np.array([x0 + x1, y0 + y1]) / 2
    m = np.float32([[scale, 0, shift[0]], [0, scale, shift[1]]])
    view = cv2.warpAffine(rgb, m, (side, side), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)
    inside = cv2.warpAffine(np.full((h, w), 255, np.uint8), m, (side, side), flags=cv2.INTER_NEAREST)
    # keypoints on the black edge would match every other view's edge
    return view, cv2.erode(inside, np.ones((7, 7), np.uint8))


def inliers(a: tuple, b: tuple, ratio: float = 0.8, reproj_px: float = 4.0, max_zoom: float = 4.0) -> int:
    """SIFT matches of ``a`` and ``b`` (Lowe's ratio test) consistent with one similarity transform
    whose zoom lies within [1 / ``max_zoom``, ``max_zoom``] (0 otherwise).

    The zoom bound drops RANSAC's degenerate fits: a few chance matches collapsed onto one spot
    (zoom near 0) make half of the high-scoring pairs of different lesions on HAM10000.
    """
    (pa, da), (pb, db) = a, b
    if len(da) < 3 or len(db) < 3:
        return 0
    matches = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if len(good) < 4:
        return 0
    src = pa[[g.queryIdx for g in good]]
    dst = pb[[g.trainIdx for g in good]]
    m, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=reproj_px)
    if m is None or not 1 / max_zoom <= float(np.hypot(m[0, 0], m[1, 0])) <= max_zoom:
        return 0
    return int(mask.sum())


def _root(desc: np.ndarray) -> np.ndarray:
    """RootSIFT: L1-normalised, square-rooted descriptors (Hellinger kernel, better for retrieval)."""
    d = desc.astype(np.float32)
    return np.sqrt(d / np.abs(d).sum(1, keepdims=True).clip(1e-9))


def votes(descs: list[np.ndarray], neighbours: int, checks: int, threads: int = 1) -> sparse.csr_matrix:
    """Symmetric sparse (n, n) keypoint votes: how often a keypoint of one image has a keypoint of the
    other among its ``neighbours`` nearest in the whole set, over sqrt(keypoints_i x keypoints_j).

    Nearest by RootSIFT, approximately: FLANN's randomised kd-trees with ``checks`` leaf visits
    (deterministic). Unlike a global descriptor, a few structures shared by two photographs of one
    lesion are enough to rank them close (HAM10000: 94% of same-lesion pairs in each other's top 10,
    against 56% for the VLAD of the same keypoints).
    """
    n = len(descs)
    counts = np.array([len(d) for d in descs], np.float64)
    if counts.sum() < 2:
        return sparse.csr_matrix((n, n))
    owner = np.repeat(np.arange(n), counts.astype(int))
    x = np.concatenate([_root(d) for d in descs if len(d)])
    k = min(int(neighbours) + 1, len(x))
    cv2.setRNGSeed(0)  # the kd-trees draw from OpenCV's RNG: same trees whatever ran before
    index = cv2.flann_Index(x, {"algorithm": 1, "trees": 4})
    chunks = np.array_split(np.arange(len(x)), max(1, -(-len(x) // 20000)))
    search = lambda c: index.knnSearch(x[c], k, params={"checks": int(checks)})[0]  # noqa: E731
    with image_threads(threads) as pmap:
        nn = np.concatenate(list(Bar(pmap(search, chunks), total=len(chunks), desc="keypoint votes")))
    query, other = np.repeat(owner, k), owner[nn.ravel()]
    keep = query != other
    v = sparse.coo_matrix((np.ones(keep.sum()), (query[keep], other[keep])), shape=(n, n)).tocsr()
    v = (v + v.T).tocoo()
    v.data = v.data / np.sqrt((counts[v.row] + 1) * (counts[v.col] + 1))
    return v.tocsr()


def shortlist(v, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) where j is among i's ``k`` highest votes or i among j's."""
    found = set()
    for i in range(v.shape[0]):
        row = slice(v.indptr[i], v.indptr[i + 1])
        cols, vals = v.indices[row], v.data[row]
        for j in cols[np.argsort(-vals, kind="stable")[:k]].tolist():
            found.add((min(i, j), max(i, j)))
    keys = sorted(found)
    return np.array([p[0] for p in keys], np.int64), np.array([p[1] for p in keys], np.int64)


@functools.cache
def _dullrazor_defaults() -> dict:
    return config.section("preprocess")["dullrazor"]


def dehair(rgb: np.ndarray) -> np.ndarray:
    """DullRazor (the schema's preprocess.dullrazor defaults, scaled to the image): hair crossings
    make keypoints that match between any two hairy images."""
    from . import hair  # imported here: only the sift features need it

    return hair.dullrazor(rgb, **hair.scaled_params(_dullrazor_defaults(), *rgb.shape[:2]))[0]


VIEWS = ("whole", "lesion")


def _local(path, cfg: dict):
    rgb = _read(path, cfg["image_size"])
    if cfg["features"] == "sift":
        rgb = dehair(rgb) if cfg["dehair"] else rgb
        view, valid = lesion_view(rgb, cfg["view_side"], cfg["view_margin"], cfg["view_max_upscale"])
        n, contrast = cfg["keypoints"], cfg["contrast"]
        return (sift_keypoints(rgb, n, contrast), sift_keypoints(view, n, contrast, valid)), None
    return None, colour_descriptor(rgb)


def describe(paths, cfg: dict, threads: int = 1, device: str = "auto", model_dir=None):
    """(unit-norm embeddings (n, d) float32, or None for ``sift``; SIFT keypoints per image or None).

    ``sift``: each image's keypoints in two views (:data:`VIEWS`): the whole image at its own scale,
    and :func:`lesion_view`; they make the shortlist (:func:`votes`) and verify it.
    """
    kind = cfg["features"]
    paths = [str(p) for p in paths]
    if kind in ("colour", "sift"):
        if kind == "sift":
            from . import segment

            segment.load_skimage()  # the lesion views segment on worker threads
        kps, emb = [], []
        fn = lambda p: _local(p, cfg)  # noqa: E731
        with image_threads(threads) as pmap:
            for k, e in Bar(pmap(fn, paths), total=len(paths), desc=f"embedding ({kind})"):
                kps.append(k)
                emb.append(e)
        if kind == "sift":
            return None, kps
        return (np.stack(emb) if emb else np.zeros((0, int(np.prod(_HSV_BINS))), np.float32)), None
    from . import quality  # torch: only for the network features

    ext = quality.load_extractor(kind, {}, model_dir, None, device)
    feats = quality.extract(paths, ext, threads=threads, desc=f"embedding ({kind})")
    feats = feats - feats.mean(0, keepdims=True)  # cosine around the set's mean: the shared look cancels
    return (feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)).astype(np.float32), None


# ---------------------------------------------------------------------------------------------
# candidates, scores, groups


def knn(emb: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows by cosine: (indices (n, k), similarities (n, k)), best first."""
    n = len(emb)
    k = min(int(k), max(n - 1, 0))
    idx, sim = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
    for s in range(0, n, chunk):
        block = emb[s : s + chunk] @ emb.T
        block[np.arange(len(block)), np.arange(s, s + len(block))] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k else np.zeros((len(block), 0), int)
        vals = np.take_along_axis(block, top, 1)
        order = np.argsort(-vals, axis=1, kind="stable")
        idx[s : s + chunk] = np.take_along_axis(top, order, 1)
        sim[s : s + chunk] = np.take_along_axis(vals, order, 1)
    return idx, sim


def candidates(emb: np.ndarray, k: int, mutual: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j, cosine) where each is among the other's ``k`` nearest (or either, ``mutual=False``)."""
    idx, sim = knn(emb, k)
    found: dict[tuple[int, int], float] = {}
    count: dict[tuple[int, int], int] = {}
    for i in range(len(idx)):
        for j, s in zip(idx[i].tolist(), sim[i].tolist(), strict=True):
            key = (min(i, j), max(i, j))
            found[key] = s
            count[key] = count.get(key, 0) + 1
    keys = sorted(p for p in found if count[p] == 2 or not mutual)
    ii = np.array([p[0] for p in keys], np.int64)
    jj = np.array([p[1] for p in keys], np.int64)
    return ii, jj, np.array([found[p] for p in keys], np.float64)


def scores(emb, kps, cfg: dict, threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All candidate pairs (i, j, score): cosine, or for ``sift`` the inliers of the vote shortlist
    (the better of the two views)."""
    if cfg["features"] != "sift":
        return candidates(emb, cfg["k"], mutual=True)
    v = sum(
        votes([views[w][1] for views in kps], cfg["vote_neighbours"], cfg["vote_checks"], threads)
        for w in range(len(VIEWS))
    )
    ii, jj = shortlist(v, cfg["shortlist"])

    def verify(pair):
        i, j = pair
        return max(inliers(a, b, max_zoom=cfg["max_zoom"]) for a, b in zip(kps[i], kps[j], strict=True))

    with image_threads(threads) as pmap:
        found = pmap(verify, zip(ii.tolist(), jj.tolist(), strict=True))
        ss = [s for s in Bar(found, total=len(ii), desc="SIFT verification")]
    return ii, jj, np.array(ss, np.float64)


def threshold_of(cfg: dict) -> float:
    return float(cfg["min_inliers"] if cfg["features"] == "sift" else cfg["min_similarity"])


def capped_pairs(ii, jj, ss, threshold: float, n: int, max_group: int) -> list[tuple[int, int, float]]:
    """Pairs scoring >= ``threshold``, best first, dropping any that would merge past ``max_group`` images."""
    parent = list(range(n))
    size = [1] * n

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    out = []
    for k in np.argsort(-np.asarray(ss), kind="stable"):
        if ss[k] < threshold:
            break
        i, j = int(ii[k]), int(jj[k])
        a, b = find(i), find(j)
        if a != b and size[a] + size[b] > max_group:
            continue
        if a != b:
            parent[b] = a
            size[a] += size[b]
        out.append((i, j, float(ss[k])))
    return sorted(out)


def find_pairs(paths, cfg: dict | None = None, threads: int = 1, device: str = "auto", model_dir=None):
    """Same-lesion pairs (i < j, score) among ``paths`` under ``split.embedding`` (defaults filled)."""
    c = validate(cfg)
    if len(paths) < 2:
        return []
    emb, kps = describe(paths, c, threads, device, model_dir)
    ii, jj, ss = scores(emb, kps, c, threads)
    pairs = capped_pairs(ii, jj, ss, threshold_of(c), len(paths), c["max_group"])
    log.info(
        "embedding (%s): %d candidate pairs, %d at score >= %g",
        c["features"],
        len(ii),
        len(pairs),
        threshold_of(c),
    )
    return pairs


def validate(cfg: dict | None) -> dict:
    """``split.embedding`` with defaults; one-line ConfigError for values the schema cannot express."""
    c = config.section("split", {"embedding": dict(cfg or {})})["embedding"]
    if c["features"] not in FEATURES:
        raise ConfigError(f"split.embedding.features is '{c['features']}'; allowed: {', '.join(FEATURES)}")
    if c["features"] == "sift" and c["shortlist"] < 1:
        raise ConfigError("split.embedding.shortlist must be >= 1 for features: sift")
    return c


# ---------------------------------------------------------------------------------------------
# calibration


def tail_estimate(scores_, thresholds, fit_range: tuple[int, int] = (3, 100)) -> np.ndarray:
    """Expected number of ``scores_`` at or above each threshold: the observed count, or where more,
    a geometric tail fitted to it (log count linear in the threshold, over the thresholds where the
    count lies within ``fit_range``).

    At the operating point the observed count of false pairs is 0 or 1 by chance; the tail fitted
    above it says how many to expect (HAM10000: pairs of different lesions fall ~4x per inlier).
    """
    s = np.sort(np.asarray(scores_, np.float64))
    t = np.asarray(thresholds, np.float64)
    count = len(s) - np.searchsorted(s, t, side="left")
    grid = np.unique(s)
    at = len(s) - np.searchsorted(s, grid, side="left")
    fit = (at >= fit_range[0]) & (at <= fit_range[1])
    if fit.sum() < 2:
        return count.astype(np.float64)
    slope, icept = np.polyfit(grid[fit], np.log(at[fit]), 1)
    if slope >= 0:
        return count.astype(np.float64)
    return np.maximum(count, np.exp(icept + slope * t))


def calibrate(
    scores_,
    positive,
    n_images: int,
    n_positive: int,
    false_per_1000: float = 1.0,
    negative=None,
    false_scale: float = 1.0,
    tail: bool = True,
    sigmas: float = 1.0,
) -> dict:
    """The operating point: the lowest score threshold at which pairs of different lesions stay
    <= ``false_per_1000`` per 1,000 images; recall = positives at or above it / ``n_positive``
    (all same-lesion pairs, also those no candidate reached).

    ``negative``: the pairs known to be different lesions (default: all not ``positive``); when only
    some are known (lesion ids miss re-photographs), ``false_scale`` = 1 / the share of false pairs
    that can be known, so the estimate counts the unknown ones too. ``tail``: count false pairs by
    :func:`tail_estimate`, not only those observed, plus ``sigmas`` Poisson standard deviations
    (its square root): another set of the same size is another draw (on HAM10000 the held-out half
    had 10 false pairs where the calibration half expected 4).
    """
    s = np.asarray(scores_, np.float64)
    pos = np.asarray(positive, bool)
    neg = ~pos if negative is None else np.asarray(negative, bool)
    grid = np.unique(s)[::-1]  # descending: false pairs only grow as the threshold falls
    if tail:
        expected = false_scale * tail_estimate(s[neg], grid)
        false = expected + sigmas * np.sqrt(expected)
    else:
        false = false_scale * (neg.sum() - np.searchsorted(np.sort(s[neg]), grid, side="left"))
    budget = false_per_1000 * n_images / 1000 + 1e-9
    over = np.nonzero(false > budget)[0]
    k = (over[0] if len(over) else len(grid)) - 1
    best, n_false = (grid[k], float(false[k])) if k >= 0 else (np.inf, 0.0)
    hits = int((pos & (s >= best)).sum())
    return {
        "threshold": float(best),
        "recall": hits / n_positive if n_positive else float("nan"),
        "false_pairs": n_false,
        "false_pairs_per_1000_images": 1000 * n_false / n_images if n_images else 0.0,
    }
