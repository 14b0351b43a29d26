"""Static promises of the rule files, checked without building a DAG."""

import re
from pathlib import Path

RULES = Path(__file__).resolve().parents[1] / "rules"


def report_calls(text: str) -> list[str]:
    """The argument text of every Snakemake ``report(...)`` call in ``text`` (comments aside)."""
    text = re.sub(r"#[^\n]*", "", text)
    calls = []
    for m in re.finditer(r"(?<![\w.])report\(", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        calls.append(text[m.end() : i - 1])
    return calls


def test_every_report_item_has_labels_and_a_category():
    # the HTML report lists a category's results by their labels (model, regime, test set, class,
    # sampler...) instead of by file name, the "figure" label first
    calls = [c for p in sorted(RULES.glob("*.smk")) for c in report_calls(p.read_text())]
    assert len(calls) >= 15
    for call in calls:
        assert "category=" in call and "caption=" in call, call
        assert "labels=" in call, call
