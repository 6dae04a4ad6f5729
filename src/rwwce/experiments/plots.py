"""The plots of the experiments' reports: bar charts with intervals, confusion matrices with the
costly cell boxed and a colour bar, cost-versus-threshold curves.

Scenarios decide what to plot (:meth:`Scenario.plots`); these functions draw it on figures made
without pyplot (:func:`rwwce._plotting.new_figure`: the user's matplotlib backend is never chosen
or changed, and drawing works headless) and write the PNG through
:func:`rwwce._io.save_figure` (atomic, honours the umask).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from rwwce._io import save_figure
from rwwce._plotting import new_figure

__all__ = ["bar_chart", "confusion_panels", "most_different_records", "threshold_curves", "unit_of"]

REFERENCE_COLOUR = "tab:red"
OTHER_COLOUR = "tab:blue"


def unit_of(record: dict) -> str:
    """The pairing unit of a run: its configuration and seed."""
    return json.dumps([record["config"], record["seed"]], sort_keys=True)


def most_different_records(records: list[dict], metric: str) -> list[dict]:
    """The records of the (configuration, seed) whose arms differ most in ``metric`` (then in Real
    World Cost); ties go to the first in sorted order. Empty without records."""
    by_unit: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_unit[unit_of(r)].append(r["metrics"])
    best, best_key = None, None
    for unit in sorted(by_unit):
        ms = by_unit[unit]
        vals = np.array([m.get(metric, np.nan) for m in ms], dtype=float)
        costs = np.array([m["real_world_cost"] for m in ms], dtype=float)
        spread = float(np.nanmax(vals) - np.nanmin(vals)) if np.isfinite(vals).any() else 0.0
        key = (spread, float(costs.max() - costs.min()))
        if best_key is None or key > best_key:
            best, best_key = unit, key
    return [r for r in records if unit_of(r) == best]


def bar_chart(path: str, rows: list[dict], metric: str, *, ylabel: str, title: str) -> None:
    """One bar per arm: the mean of ``metric`` with its 95% interval; the RWWCE arm in red."""
    arms = [r["arm"] for r in rows]
    means = np.array([r[metric][0] for r in rows], dtype=float)
    lo = np.array([r[metric][1] for r in rows], dtype=float)
    hi = np.array([r[metric][2] for r in rows], dtype=float)
    err = np.nan_to_num(np.stack([means - lo, hi - means]))
    fig, ax = new_figure(1, 1, (1.3 * len(arms) + 2.5, 3.6))
    colours = [REFERENCE_COLOUR if a == "rwwce" else OTHER_COLOUR for a in arms]
    ax.bar(arms, np.nan_to_num(means), yerr=err, capsize=4, color=colours)
    for x, (m, top) in enumerate(zip(means, hi, strict=True)):
        if np.isfinite(m):  # the mean, written above the interval's top
            y = top if np.isfinite(top) else m
            ax.annotate(
                f"{m:.3g}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", rotation=20)
    save_figure(fig, path)


def confusion_panels(
    path: str,
    records: Sequence[dict],
    classes: list[str],
    *,
    title: str,
    highlight: tuple[int, int] | None = None,
    highlight_row: int | None = None,
) -> None:
    """One test confusion matrix per arm (rows: truth, columns: prediction; log colour scale,
    one shared colour bar), class names on the axes, the costly cell (or row) boxed in red with
    its count written in it."""
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    k = len(classes)
    confs = [np.array(r["metrics"]["confusion"], dtype=float) for r in records]
    vmax = max(float(c.max()) for c in confs)
    side = 2.2 + 0.28 * k
    fig, axes = new_figure(1, len(records), (side * len(records) + 1.2, side + 0.9), squeeze=False)
    norm = LogNorm(vmin=1, vmax=max(vmax, 2))
    im = None
    for ax, rec, conf in zip(axes[0], records, confs, strict=True):
        shown = np.ma.masked_less(conf, 1)  # empty cells are white
        im = ax.imshow(shown, cmap="Blues", norm=norm)
        ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(k), classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        m = rec["metrics"]
        ax.set_title(
            f"{rec['arm']}\ncost {m['real_world_cost']:.3g}, error {m['error_rate']:.3f}",
            fontsize=8,
        )
        if highlight is not None:
            i, j = highlight
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
            ax.text(
                j,
                i,
                f"{int(conf[i, j])}",
                ha="center",
                va="center",
                fontsize=7,
                color="red",
                fontweight="bold",
            )
        if highlight_row is not None:
            ax.add_patch(Rectangle((-0.5, highlight_row - 0.5), k, 1, fill=False, ec="red", lw=2))
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="test count (log scale)")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


_STYLES = [
    {"lw": 4.0, "alpha": 0.35, "ls": "-"},
    {"lw": 2.0, "alpha": 0.9, "ls": "--"},
    {"lw": 1.2, "alpha": 1.0, "ls": ":"},
    {"lw": 1.5, "alpha": 1.0, "ls": "-."},
]


def threshold_curves(
    path: str,
    grid: np.ndarray,
    curves: dict[str, np.ndarray],
    *,
    marks: dict[str, float],
    ylabel: str,
    title: str,
    points: dict[str, tuple[float, float]] | None = None,
) -> None:
    """Cost against the decision threshold, one line per curve. Lines differ in width and dash,
    so one that lies on another stays visible, and the legend says which coincide. ``points``
    marks a curve's operating point (threshold, cost) with a dot in the curve's colour."""
    fig, ax = new_figure(1, 1, (6.4, 3.8))
    names = list(curves)
    for n, name in enumerate(names):
        same = [o for o in names[:n] if np.allclose(curves[o], curves[name], rtol=1e-6, atol=1e-9)]
        near = [
            o
            for o in names[:n]
            if o not in same and np.allclose(curves[o], curves[name], rtol=0.02)
        ]
        label = name
        if same:
            label += f" (same curve as {', '.join(same)})"
        elif near:
            label += f" (within 2% of {', '.join(near)} everywhere)"
        style = _STYLES[n % len(_STYLES)]
        (line,) = ax.plot(grid, curves[name], label=label, zorder=2 + n, **style)
        if points and name in points:
            ax.plot(*points[name], "o", color=line.get_color(), ms=5, zorder=20)
    for (label, x), ls in zip(marks.items(), (":", "--", "-."), strict=False):
        ax.axvline(
            x, ls=ls, c="grey", label=f"threshold {label}" if not label[0].isalpha() else label
        )
    ax.set_xlabel("decision threshold (predict positive when p > threshold)")
    ax.set_ylabel(ylabel)
    if all(np.all(np.asarray(c) > 0) for c in curves.values()):
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, path)
