"""How models, regimes and test sets are named and ordered in every table and figure of the report."""

from __future__ import annotations

from collections.abc import Iterable

MODEL_NAMES = {"vit": "ViT-B/16", "mobilenet_v2": "MobileNetV2"}
REGIME_NAMES = {
    "real": "Baseline (real)",
    "hybrid": "Hybrid (synthetic + real)",
    "synthetic": "Synthetic only",
}
TESTSET_NAMES = {"isic": "ISIC Archive", "ham10000": "HAM10000"}
METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "auroc": "AUROC"}


def nice(name: str, table: dict) -> str:
    """The display name of ``name`` in ``table``, or the name itself (a sweep regime, a new dataset)."""
    return table.get(name, name)


def order(values: Iterable[str], preferred: Iterable[str]) -> list[str]:
    """The distinct ``values``: those in ``preferred`` first, in its order, then the rest sorted."""
    values = list(dict.fromkeys(values))
    pref = [p for p in preferred if p in values]
    return pref + sorted(v for v in values if v not in pref)
