"""The paper's experiments (Ho & Wookey 2020): data, batched models, training, scenarios, reports.

Needs the ``experiments`` extra (scikit-learn, scipy, matplotlib, rich). Entry point:
``rwwce experiment`` (see :mod:`rwwce.cli`) or :func:`rwwce.experiments.runner.run_experiment`
with a :class:`Settings` (:mod:`rwwce.experiments.spec`: the options and their defaults). The
output folder's files are :mod:`rwwce.experiments.store`'s.
"""

from .spec import Settings

__all__ = [
    "Settings",
    "datasets",
    "models",
    "plots",
    "report",
    "runner",
    "scenarios",
    "spec",
    "store",
    "training",
]
