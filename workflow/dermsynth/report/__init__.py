"""The final report: Table IV of Derm-T2IM beside our numbers, the paired hybrid-vs-real test, figures,
and ``summary.md`` with the data counts, a Methods paragraph rendered from the config, the other
stages' fragments and the provenance.

- ``stats``: the numbers (Table IV with pooled bootstrap CIs, the paired test and Holm, the sweep,
  realism, validation accuracy, training-set composition, wall times)
- ``figures``: every figure, through one matplotlib set-up
- ``tables``: Markdown tables and the cell format
- ``sections``: one writer per section of summary.md, ``section_<name>``
- ``methods``: the Methods paragraph, one template filled from the validated config
- ``summary``: ``build`` / ``build_from_workflow``, which write the files and summary.md, once
- ``names``: display names and order of models, regimes and test sets

Units: percentages except AUROC, as the docstring of ``stats`` says.
"""

from .summary import build, build_from_workflow

__all__ = ["build", "build_from_workflow"]
