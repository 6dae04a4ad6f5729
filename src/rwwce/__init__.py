"""rwwce: the Real-World-Weight Cross-Entropy loss and cost-sensitive training tools for PyTorch."""

from rwwce.functional import (
    binary_real_world_weight_cross_entropy,
    real_world_weight_cross_entropy,
)
from rwwce.modules import BinaryRWWCELoss, RWWCELoss

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "BinaryRWWCELoss",
    "RWWCELoss",
    "binary_real_world_weight_cross_entropy",
    "real_world_weight_cross_entropy",
]
