"""Plotting set-up shared by every figure rwwce draws (metrics, calibration, the cost monitor, the
experiments' reports).

One backend policy: figures are ``matplotlib.figure.Figure`` objects made without pyplot, so
rwwce never chooses or changes the user's matplotlib backend and works headless. Figures are
written through :func:`rwwce._io.save_figure` (atomic).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rwwce._optional import require

__all__ = ["check_figure_path", "new_figure", "thinned"]


def check_figure_path(path: str | os.PathLike[str]) -> None:
    """Fail before any work on a figure path that cannot be written."""
    from matplotlib.figure import Figure

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; expected a file name such as plot.png")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: no such directory {directory!r}")
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    formats = Figure().canvas.get_supported_filetypes()
    if suffix not in formats:
        raise ValueError(
            f"cannot write {path!r}: unknown figure format {suffix!r}; expected a suffix such "
            f"as {', '.join('.' + f for f in sorted(formats))}"
        )


def new_figure(
    nrows: int, ncols: int, figsize: tuple[float, float], *, squeeze: bool = True
) -> tuple[Any, Any]:
    """A matplotlib Figure without pyplot: no backend is chosen or changed (works headless).

    Returns the figure and its axes as ``Figure.subplots`` gives them: one Axes, a 1-D array, or
    (``squeeze=False``) always an (nrows, ncols) array."""
    require("matplotlib", "plotting")
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def thinned(*arrays: np.ndarray, limit: int = 4000) -> tuple[np.ndarray, ...]:
    n = arrays[0].shape[0]
    if n <= limit:
        return arrays
    keep = np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))
    return tuple(a[keep] for a in arrays)
