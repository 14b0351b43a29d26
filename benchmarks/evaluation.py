"""Issue 25's evaluation measurements, each checked on data whose answer is known.

One part per measurement, each in ``benchmarks/_evaluation_<part>.py`` with ``run(quick) -> dict``:

- ``skintone``: ITA on skin patches of known L*, b* (``ita_error_deg``), and the ITA difference
  "Fitzpatrick V-VI" minus "I-II" on images the project's renderer draws at those tones
  (``ita_modifier_effect``, with its bootstrap CI);
- ``semaudit``: the semantic memorization audit on planted near-copies of real ISIC images
  (``semantic_audit_recall``) and on distinct lesions (``semantic_audit_false_rate``);
- ``c2st``: the classifier two-sample test on two halves of one real set (``c2st_auroc_same``, its CI
  must cover 0.5) and on real vs a visibly shifted copy (``c2st_auroc_shifted``);
- ``leakage``: the splitter's embedding grouping on HAM10000 lesions with several images, held out
  from its calibration (``same_lesion_recall`` where ``false_pairs_per_1000_images`` <= 1);
- ``ece`` (here): the expected calibration error against a case computed by hand (``ece_error``).

``--quick`` runs each part at its CPU size (under 2 minutes in all; leakage takes most);
``--part`` picks parts.
Last line: one JSON object with every figure, ``targets`` and ``targets_met``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "workflow"))

from dermsynth import metrics  # noqa: E402

PARTS = ("skintone", "semaudit", "c2st", "leakage", "ece")

#: figure -> (comparison, bound), as issue 25 sets them
TARGETS = {
    "ita_error_deg": ("<=", 1.0),
    "ita_modifier_effect_hi": ("<", 0.0),  # negative with a CI that excludes 0
    "semantic_audit_recall": (">=", 0.95),
    "semantic_audit_false_rate": ("<=", 0.02),
    "c2st_auroc_same_lo": ("<=", 0.5),  # the CI covers 0.5 ...
    "c2st_auroc_same_hi": (">=", 0.5),  # ... from both sides
    "c2st_auroc_shifted": (">=", 0.9),
    "ece_error": ("<=", 1e-9),
    "same_lesion_recall": (">=", 0.8),
    "false_pairs_per_1000_images": ("<=", 1.0),
}


def ece_case() -> dict:
    """ECE of five predictions in two bins, worked by hand:
    bin [0, 0.5): p 0.1, 0.4 (mean 0.25), labels 0, 1 (frequency 0.5): |0.5 - 0.25| = 0.25, weight 2/5;
    bin [0.5, 1]: p 0.8, 0.9, 0.95 (mean 0.88333), labels 1, 0, 1 (2/3): 0.21667, weight 3/5;
    ECE = 0.4 * 0.25 + 0.6 * 0.21667 = 0.23."""
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.8, 0.9, 0.95])
    got = metrics.expected_calibration_error(y, p, n_bins=2)
    return {"ece_error": abs(got - 0.23), "ece_value": got}


def _part(name: str):
    """The ``run`` of benchmarks/_evaluation_<name>.py."""
    path = HERE / f"_evaluation_{name}.py"
    spec = importlib.util.spec_from_file_location(f"_evaluation_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.run


def with_bounds(figures: dict) -> dict:
    """``<name>_lo`` and ``<name>_hi`` beside every ``<name>_ci`` pair, the form the targets name."""
    out = dict(figures)
    for k, v in figures.items():
        if k.endswith("_ci") and isinstance(v, list | tuple) and len(v) == 2:
            out.setdefault(f"{k[:-3]}_lo", v[0])
            out.setdefault(f"{k[:-3]}_hi", v[1])
    return out


def headline(figures: dict) -> dict:
    """The figures the issue names (a target's key, or the figure whose CI bound it is) with their
    CIs; context keys stay in their part, where two parts' "threshold" cannot overwrite each other."""
    named = {k.removesuffix("_lo").removesuffix("_hi") for k in TARGETS}
    full = with_bounds(figures)
    return {
        k: v
        for k, v in full.items()
        if k.removesuffix("_lo").removesuffix("_hi").removesuffix("_ci") in named
    }


def check(figures: dict) -> dict[str, bool]:
    """Each target whose figure the run produced: met or not."""
    ops = {"<=": np.less_equal, "<": np.less, ">=": np.greater_equal}
    return {
        k: bool(ops[op](figures[k], bound))
        for k, (op, bound) in TARGETS.items()
        if isinstance(figures.get(k), int | float) and np.isfinite(figures[k])
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU size, under 2 minutes")
    ap.add_argument("--part", action="append", choices=PARTS, help="run only these parts (repeatable)")
    a = ap.parse_args(argv)
    out: dict = {}
    parts, seconds = {}, {}
    for name in a.part or PARTS:
        t0 = time.perf_counter()
        figures = ece_case() if name == "ece" else _part(name)(a.quick)
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {json.dumps(figures)}", flush=True)
        parts[name] = figures
        out.update(headline(figures))
    met = check(out)
    result = {**out, "seconds": seconds, "targets": {k: f"{o} {b}" for k, (o, b) in TARGETS.items()}}
    result["targets_met"] = met
    result["all_targets_met"] = bool(met) and all(met.values())
    result["parts"] = parts  # every figure of every part, context included, under its part's name
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
