"""rwwce: the Real-World-Weight Cross-Entropy loss and cost-sensitive training tools for PyTorch."""

from typing import Any

from rwwce import calibration, integrations, metrics
from rwwce.costs import CostMatrix
from rwwce.functional import (
    binary_real_world_weight_cross_entropy,
    real_world_weight_cross_entropy,
)
from rwwce.linear import linear_real_world_weight_cross_entropy
from rwwce.modules import BinaryRWWCELoss, LinearRWWCELoss, RWWCELoss
from rwwce.monitor import CostMonitor, LossBreakdown, loss_breakdown
from rwwce.weights import adjust_class_weights, class_weights, count_classes

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "BinaryRWWCELoss",
    "LinearRWWCELoss",
    "RWWCELoss",
    "CostMatrix",
    "CostMonitor",
    "LossBreakdown",
    "loss_breakdown",
    "adjust_class_weights",
    "class_weights",
    "count_classes",
    "calibration",
    "integrations",
    "metrics",
    "binary_real_world_weight_cross_entropy",
    "linear_real_world_weight_cross_entropy",
    "real_world_weight_cross_entropy",
]


def __getattr__(name: str) -> Any:
    # rwwce.sklearn imports scikit-learn: load it on first access, not with ``import rwwce``.
    if name == "sklearn":
        import importlib

        return importlib.import_module("rwwce.sklearn")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
