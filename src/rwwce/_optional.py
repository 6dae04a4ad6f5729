"""Optional dependencies: import them on first use, or say which extra brings them."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["require"]


def require(module: str, feature: str, package: str | None = None) -> Any:
    """Import an optional dependency, or say which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModuleNotFoundError(
            f"{feature} needs {package or module}, which is not installed; install rwwce's "
            "experiments extra: pip install 'rwwce[experiments]'"
        ) from None
