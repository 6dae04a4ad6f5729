"""rwwce: the Real-World-Weight Cross-Entropy loss and cost-sensitive training tools for PyTorch."""

__version__ = "0.1.0"

__all__ = ["__version__"]
