"""Integrations with training frameworks (optional dependencies, imported on use).

* :mod:`rwwce.integrations.huggingface`: ``RWWCETrainer``, a ``transformers.Trainer`` with an
  exactly normalised RWWCE loss, and ``make_compute_metrics`` for the Real World Cost
  (``pip install rwwce[hf]``).

PyTorch Lightning needs no adapter: use :class:`rwwce.RWWCELoss` in ``training_step`` and
:class:`rwwce.metrics.RealWorldCost` in ``validation_step`` (``examples/lightning_train.py``).
"""

__all__: list[str] = []
