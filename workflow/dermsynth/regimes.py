"""Names and synthetic fractions of the training regimes, including the optional ratio sweep.

``hybrid.regimes`` lists the paper's regimes (real, hybrid, synthetic); ``hybrid.sweep`` adds one regime
per synthetic fraction at a fixed real count, named ``sweep<percent>`` (0.25 -> ``sweep25``). A sweep
point that equals an existing regime reuses it instead of training the same set twice: 0 is ``real`` and
``hybrid.synthetic_fraction`` is ``hybrid``.
"""

from __future__ import annotations

import math

from .errors import ConfigError

SWEEP_PREFIX = "sweep"
PAPER_REGIMES = ("real", "hybrid", "synthetic")


def _hybrid_fraction(hybrid_cfg: dict) -> float:
    return float((hybrid_cfg or {}).get("synthetic_fraction", 0.75))


def sweep_regime(fraction: float, hybrid_fraction: float) -> str:
    """The regime that trains on ``fraction`` synthetic images at the full real count."""
    f = float(fraction)
    if not 0.0 <= f < 1.0:
        raise ConfigError(f"hybrid.sweep value {f} must lie in [0, 1): the real count stays fixed")
    if f == 0.0:
        return "real"
    if math.isclose(f, hybrid_fraction, abs_tol=1e-9):
        return "hybrid"
    return f"{SWEEP_PREFIX}{round(100 * f):d}"


def sweep_points(hybrid_cfg: dict) -> list[tuple[float, str]]:
    """(synthetic fraction, regime) of every sweep point, in config order."""
    fh = _hybrid_fraction(hybrid_cfg)
    points = [(float(f), sweep_regime(f, fh)) for f in (hybrid_cfg or {}).get("sweep") or []]
    names = [n for _, n in points]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"hybrid.sweep gives the same regime twice ({', '.join(dup)}): drop a value")
    return points


def regime_names(hybrid_cfg: dict) -> list[str]:
    """Every regime to train: hybrid.regimes, then the sweep points not already among them."""
    names = list((hybrid_cfg or {}).get("regimes") or ["real", "hybrid"])
    for _, name in sweep_points(hybrid_cfg):
        if name not in names:
            names.append(name)
    return names


def regime_fraction(regime: str, hybrid_cfg: dict) -> float:
    """Share of synthetic images in ``regime``'s training set (as configured; the pool may run short)."""
    if regime == "real":
        return 0.0
    if regime == "synthetic":
        return 1.0
    if regime == "hybrid":
        return _hybrid_fraction(hybrid_cfg)
    for f, name in sweep_points(hybrid_cfg):
        if name == regime:
            return f
    raise ConfigError(f"regime '{regime}' is neither in hybrid.regimes nor in hybrid.sweep")


def base_regime(regime: str) -> str:
    """The splits.make_regime kind that builds ``regime``: a sweep point is a hybrid at its fraction."""
    return "hybrid" if regime.startswith(SWEEP_PREFIX) else regime
