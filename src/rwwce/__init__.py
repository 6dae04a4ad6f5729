"""rwwce: the Real-World-Weight Cross-Entropy loss and cost-sensitive training tools for PyTorch."""

from rwwce import integrations, metrics
from rwwce.costs import CostMatrix
from rwwce.functional import (
    binary_real_world_weight_cross_entropy,
    real_world_weight_cross_entropy,
)
from rwwce.modules import BinaryRWWCELoss, RWWCELoss
from rwwce.monitor import CostMonitor, LossBreakdown, loss_breakdown
from rwwce.weights import adjust_class_weights, class_weights, count_classes

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "BinaryRWWCELoss",
    "RWWCELoss",
    "CostMatrix",
    "CostMonitor",
    "LossBreakdown",
    "loss_breakdown",
    "adjust_class_weights",
    "class_weights",
    "count_classes",
    "integrations",
    "metrics",
    "binary_real_world_weight_cross_entropy",
    "real_world_weight_cross_entropy",
]
