"""Results on disk (append-only JSONL, atomic writes), summary statistics, tables and plots."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

__all__ = [
    "MAIN_METRIC",
    "append_records",
    "atomic_write",
    "load_records",
    "summarize",
    "write_plots",
    "write_report",
]

# The scenario-specific headline metric reported beside the Real World Cost.
MAIN_METRIC = {"fp-pair": "targeted", "medical": "recall", "imbalance": "rare_recall"}
REFERENCE_ARM = "rwwce"


# ------------------------------------------------------------------------------------- files
def atomic_write(path: str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_records(path: str) -> list[dict]:
    """Every complete record of a results file. A truncated or corrupt line (an interrupted
    write) is dropped, and the file is rewritten without it so later appends stay line-aligned."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        raw = f.read()
    records, good, bad = [], [], 0
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "key" not in rec:
                raise ValueError
        except ValueError:
            bad += 1
            continue
        records.append(rec)
        good.append(line)
    if bad or (raw and not raw.endswith(b"\n")):
        atomic_write(path, b"".join(line + b"\n" for line in good))
    return records


def append_records(path: str, records: Iterable[dict]) -> None:
    """Append whole lines and fsync, so a crash leaves at most one truncated last line."""
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------- stats
def _interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and the 95% Student-t interval of the mean."""
    from scipy import stats

    v = values[~np.isnan(values)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def _paired_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples (1.0 when all pairs are equal)."""
    from scipy import stats

    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if len(a) < 2:
        return math.nan
    if np.all(a == b):
        return 1.0
    try:
        return float(stats.wilcoxon(a, b).pvalue)
    except ValueError:
        return math.nan


def _unit(rec: dict) -> str:
    return json.dumps([rec["config"], rec["seed"]], sort_keys=True)


def summarize(records: list[dict], scenario: str) -> list[dict]:
    """One row per arm: n, mean and 95% interval of the Real World Cost and of the headline
    metric, and the Wilcoxon p-value of the cost against the ``rwwce`` arm (paired by config and
    seed)."""
    recs = [r for r in records if r["scenario"] == scenario]
    by_arm: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in recs:
        by_arm[r["arm"]][_unit(r)] = r["metrics"]
    main = MAIN_METRIC[scenario]
    ref = by_arm.get(REFERENCE_ARM, {})
    rows = []
    for arm, units in by_arm.items():
        keys = sorted(units)
        cost = np.array([units[k]["real_world_cost"] for k in keys], dtype=float)
        metric = np.array([units[k].get(main, math.nan) for k in keys], dtype=float)
        err = np.array([units[k]["error_rate"] for k in keys], dtype=float)
        shared = [k for k in keys if k in ref]
        p = math.nan
        if arm != REFERENCE_ARM and shared:
            p = _paired_p(
                np.array([units[k]["real_world_cost"] for k in shared], dtype=float),
                np.array([ref[k]["real_world_cost"] for k in shared], dtype=float),
            )
        row = {
            "arm": arm,
            "n": len(keys),
            "cost": _interval(cost),
            main: _interval(metric),
            "error_rate": _interval(err),
            "p_vs_rwwce": p,
        }
        if scenario == "medical":
            for extra in ("precision", "f1", "real_world_benefit"):
                row[extra] = _interval(np.array([units[k][extra] for k in keys], dtype=float))
        if scenario == "imbalance":
            row["macro_f1"] = _interval(np.array([units[k]["macro_f1"] for k in keys], dtype=float))
        rows.append(row)
    return rows


def fmt_interval(t: tuple[float, float, float], digits: int = 3) -> str:
    mean, lo, hi = t
    if math.isnan(mean):
        return "-"
    if math.isnan(lo):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt_pm(t: tuple[float, float, float], digits: int = 3) -> str:
    mean, lo, hi = t
    if math.isnan(mean):
        return "-"
    if math.isnan(lo):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def fmt_p(p: float) -> str:
    return "-" if math.isnan(p) else f"{p:.3g}"


def table_columns(scenario: str) -> list[str]:
    cols = ["cost", MAIN_METRIC[scenario], "error_rate"]
    if scenario == "medical":
        cols += ["precision", "f1", "real_world_benefit"]
    if scenario == "imbalance":
        cols += ["macro_f1"]
    return cols


# ------------------------------------------------------------------------------------ report
def write_report(
    path: str, records: list[dict], scenarios: list[str], header: dict, paper: dict[str, str]
) -> None:
    lines = [f"# rwwce experiments: {header['dataset']}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += [
        "- intervals: mean and 95% Student-t interval over runs (config x seed)",
        "- p vs rwwce: two-sided Wilcoxon signed-rank test of the Real World Cost, "
        "paired by config and seed",
        "",
    ]
    for sc in scenarios:
        rows = summarize(records, sc)
        if not rows:
            continue
        cols = table_columns(sc)
        lines += [f"## {sc}", "", f"{paper.get(sc, '')}", ""]
        lines.append("| arm | n | " + " | ".join(cols) + " | p vs rwwce |")
        lines.append("|" + "---|" * (len(cols) + 3))
        for r in rows:
            lines.append(
                f"| {r['arm']} | {r['n']} | "
                + " | ".join(fmt_interval(r[c]) for c in cols)
                + f" | {fmt_p(r['p_vs_rwwce'])} |"
            )
        lines.append("")
        for png in _PLOTS.get(sc, []):
            lines.append(f"![{png}]({sc}-{png}.png)")
        lines.append("")
    atomic_write(path, "\n".join(lines) + "\n")


_PLOTS = {
    "fp-pair": ["cost", "targeted", "confusion"],
    "medical": ["cost", "recall", "cost-vs-threshold"],
    "imbalance": ["cost", "rare_recall", "confusion"],
}


def _save(fig, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_plots(out_dir: str, records: list[dict], scenarios: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for sc in scenarios:
        rows = summarize(records, sc)
        if not rows:
            continue
        arms = [r["arm"] for r in rows]
        for metric in ("cost", MAIN_METRIC[sc]):
            fig, ax = plt.subplots(figsize=(1.2 * len(arms) + 2, 3.2))
            means = [r[metric][0] for r in rows]
            err = np.array(
                [[r[metric][0] - r[metric][1], r[metric][2] - r[metric][0]] for r in rows]
            ).T
            ax.bar(arms, means, yerr=np.nan_to_num(err), capsize=4, color="tab:blue")
            ax.set_ylabel("Real World Cost per sample" if metric == "cost" else metric)
            ax.set_title(f"{sc}: {metric} (mean, 95% interval)")
            ax.tick_params(axis="x", rotation=20)
            name = "cost" if metric == "cost" else metric
            _save(fig, os.path.join(out_dir, f"{sc}-{name}.png"))
            plt.close(fig)
            written.append(f"{sc}-{name}.png")
        recs = [r for r in records if r["scenario"] == sc]
        if sc in ("fp-pair", "imbalance"):
            first = json.dumps([recs[0]["config"], recs[0]["seed"]], sort_keys=True)
            same = [
                r for r in recs if json.dumps([r["config"], r["seed"]], sort_keys=True) == first
            ]
            fig, axes = plt.subplots(1, len(same), figsize=(3.2 * len(same), 3.2))
            for ax, r in zip(np.atleast_1d(axes), same, strict=True):
                conf = np.array(r["metrics"]["confusion"])
                ax.imshow(np.log1p(conf), cmap="Blues")
                ax.set_title(f"{r['arm']}\n{r['config']} seed {r['seed']}", fontsize=8)
                ax.set_xlabel("predicted")
                ax.set_ylabel("true")
            _save(fig, os.path.join(out_dir, f"{sc}-confusion.png"))
            plt.close(fig)
            written.append(f"{sc}-confusion.png")
        if sc == "medical":
            fig, ax = plt.subplots(figsize=(5, 3.2))
            grid = np.linspace(0, 1, 51)
            for arm in ("bce@0.5", "wbce", "rwwce"):
                curves = [r["metrics"]["cost_vs_threshold"] for r in recs if r["arm"] == arm]
                if curves:
                    label = "bce" if arm == "bce@0.5" else arm
                    ax.plot(grid, np.mean(curves, 0), label=label)
            ax.axvline(0.5, ls=":", c="grey")
            ax.axvline(100 / 2100, ls="--", c="grey", label="Bayes threshold")
            ax.set_xlabel("decision threshold")
            ax.set_ylabel("test Real World Cost per sample")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
            _save(fig, os.path.join(out_dir, f"{sc}-cost-vs-threshold.png"))
            plt.close(fig)
            written.append(f"{sc}-cost-vs-threshold.png")
    return written
