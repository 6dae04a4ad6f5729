"""Integrations with training frameworks (optional dependencies, imported on first use).

* :mod:`rwwce.integrations.huggingface`: ``RWWCETrainer``, a ``transformers.Trainer`` with an
  exactly normalised RWWCE loss, and ``make_compute_metrics`` for the Real World Cost
  (``pip install rwwce[hf]``). ``rwwce.integrations.huggingface`` imports transformers when it
  is first accessed, not when ``rwwce`` is imported.

PyTorch Lightning needs no adapter: use :class:`rwwce.RWWCELoss` in ``training_step`` and
:class:`rwwce.metrics.RealWorldCost` in ``validation_step`` (``examples/lightning_train.py``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["huggingface"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
