"""The paper's experiments (Ho & Wookey 2020): data, batched models, training, scenarios, reports.

Needs the ``experiments`` extra (scikit-learn, scipy, matplotlib, rich). Entry point:
``rwwce experiment`` (see :mod:`rwwce.cli`) or :func:`rwwce.experiments.runner.run_experiment`.
"""

__all__ = ["datasets", "models", "report", "runner", "scenarios", "training"]
