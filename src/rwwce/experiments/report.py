"""Results on disk (append-only JSONL), summary statistics, the verdict, and ``report.md``.

What is scenario-specific (headline metric, columns, plots, the paper's figures) comes from the
scenario objects (:mod:`rwwce.experiments.scenarios`); this module only iterates over them.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from rwwce._io import atomic_write

from .scenarios.base import Scenario

__all__ = [
    "ALPHA",
    "ResultsFileError",
    "append_records",
    "load_records",
    "summarize",
    "verdict",
    "write_report",
]

ALPHA = 0.05  # significance level of the verdict's paired tests


class ResultsFileError(ValueError):
    """A results file holds something that is not ours: rwwce refuses to rewrite it."""


# ------------------------------------------------------------------------------------- files
def load_records(path: str) -> tuple[list[dict], str | None]:
    """Every record of a results file, and a note when a truncated last line was dropped.

    A last line without its newline that does not parse (a write cut short by a crash) is cut off
    the file, and the note says so; every other byte stays as it was. Any other line that is not
    an rwwce record raises :class:`ResultsFileError` naming the file and the line: the file is
    never rewritten behind the user's back.
    """
    if not os.path.exists(path):
        return [], None
    if os.path.isdir(path):
        raise ResultsFileError(f"{path!r} is a directory, expected rwwce's results file")
    with open(path, "rb") as f:
        raw = f.read()
    records = []
    lines = raw.split(b"\n")
    offset = 0
    for n, line in enumerate(lines, start=1):
        last = n == len(lines)
        if line.strip():
            try:
                rec = json.loads(line)
                ok = isinstance(rec, dict) and "key" in rec and "metrics" in rec
            except ValueError:
                rec, ok = None, False
            if not ok:
                if last and rec is None:  # no newline after it: an interrupted append
                    atomic_write(path, raw[:offset])
                    return records, (
                        f"{path!r} line {n} was cut short (an interrupted write): dropped it"
                    )
                raise ResultsFileError(
                    f"{path!r} line {n} is not an rwwce result record; rwwce does not rewrite "
                    "files it did not write: move it aside or choose another --out"
                )
            records.append(rec)
        offset += len(line) + 1
    return records, None


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


def _metric_key(column: str) -> str:
    return "real_world_cost" if column == "cost" else column


def summarize(records: list[dict], scenario: Scenario) -> list[dict]:
    """One row per arm (in the scenario's arm order): n, mean and 95% interval of every table
    column, the mean paired difference of the cost to the reference arm (``rwwce``) and the
    Wilcoxon p-value of that difference (paired by configuration and seed)."""
    by_arm: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in records:
        if r["scenario"] == scenario.name:
            by_arm[r["arm"]][_unit(r)] = r["metrics"]
    order = [a.name for a in scenario.arms]
    arms = sorted(by_arm, key=lambda a: (order.index(a) if a in order else len(order), a))
    ref = by_arm.get(scenario.reference_arm, {})
    rows = []
    for arm in arms:
        units = by_arm[arm]
        keys = sorted(units)
        row: dict = {"arm": arm, "n": len(keys)}
        for col in scenario.table_columns():
            k = _metric_key(col)
            row[col] = _interval(np.array([units[u].get(k, math.nan) for u in keys], dtype=float))
        shared = [u for u in keys if u in ref]
        row["p_vs_rwwce"], row["diff_vs_rwwce"] = math.nan, math.nan
        if arm != scenario.reference_arm and shared:
            mine = np.array([units[u]["real_world_cost"] for u in shared], dtype=float)
            theirs = np.array([ref[u]["real_world_cost"] for u in shared], dtype=float)
            row["p_vs_rwwce"] = _paired_p(mine, theirs)
            row["diff_vs_rwwce"] = float(np.mean(theirs - mine))
        rows.append(row)
    return rows


def verdict(rows: list[dict], scenario: Scenario) -> list[str]:
    """Where the reference arm (RWWCE) wins, ties and loses on Real World Cost, one line per
    other arm: a win or a loss needs the paired Wilcoxon test's p < :data:`ALPHA`."""
    ref = next((r for r in rows if r["arm"] == scenario.reference_arm), None)
    if ref is None:
        return []
    out = []
    for r in rows:
        if r is ref:
            continue
        p, diff = r["p_vs_rwwce"], r["diff_vs_rwwce"]
        if math.isnan(p) or p >= ALPHA or diff == 0:
            word = "ties with"
        elif diff < 0:
            word = "wins against"
        else:
            word = "loses to"
        out.append(
            f"RWWCE {word} {r['arm']}: cost {ref['cost'][0]:.4g} vs {r['cost'][0]:.4g} "
            f"(paired difference {diff:+.4g}, p = {fmt_p(p)}, n = {r['n']}); "
            f"{scenario.label(scenario.headline)} {fmt_num(ref[scenario.headline][0])} vs "
            f"{fmt_num(r[scenario.headline][0])}"
        )
    return out


def fmt_num(x: float, digits: int = 3) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


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


# ------------------------------------------------------------------------------------ report
def _setup_lines(records: list[dict]) -> list[str]:
    """The split and the training budget the runs of one scenario used."""
    seen = []
    for r in records:
        b = r.get("budget", {})
        item = (
            r.get("split", "?"),
            r["epochs"],
            b.get("steps_per_epoch"),
            b.get("rule", ""),
        )
        if item not in seen:
            seen.append(item)
    lines = []
    for split, epochs, per, rule in seen:
        steps = f", {per} steps per epoch, {epochs * per} Adam steps" if per else ""
        lines.append(f"- split: {split}; training: {epochs} epochs{steps} ({rule})")
    return lines


def write_report(
    path: str,
    records: list[dict],
    scenarios: Sequence[Scenario],
    header: dict,
    plots: dict[str, list[str]],
) -> None:
    """Write ``report.md``: the set-up, then per scenario the table, the verdict, the paper's
    figures beside ours and the plots (file names in ``plots``)."""
    lines = [f"# rwwce experiments: {header['dataset']}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += [
        "- intervals: mean and 95% Student-t interval over runs (configuration x seed)",
        "- p vs rwwce: two-sided Wilcoxon signed-rank test of the Real World Cost against the "
        "rwwce arm, paired by configuration and seed; the verdict calls p < "
        f"{ALPHA:g} a win or a loss, anything else a tie",
        "",
    ]
    for sc in scenarios:
        recs = [r for r in records if r["scenario"] == sc.name]
        rows = summarize(recs, sc)
        if not rows:
            continue
        cols = sc.table_columns()
        lines += [f"## {sc.name}: {sc.title}", ""]
        lines += _setup_lines(recs)
        lines += ["", "| arm | n | " + " | ".join(sc.label(c) for c in cols) + " | p vs rwwce |"]
        lines.append("|" + "---|" * (len(cols) + 3))
        for r in rows:
            lines.append(
                f"| {r['arm']} | {r['n']} | "
                + " | ".join(fmt_interval(r[c]) for c in cols)
                + f" | {fmt_p(r['p_vs_rwwce'])} |"
            )
        lines += ["", "Arms: " + "; ".join(f"`{a.name}`: {a.description}" for a in sc.arms), ""]
        v = verdict(rows, sc)
        if v:
            lines += ["**Where RWWCE wins, ties and loses** (Real World Cost):", ""]
            lines += [f"- {x}" for x in v] + [""]
        if sc.paper_figures:
            by_arm = {r["arm"]: r for r in rows}
            lines += [
                f"**The paper's figures beside ours** ({sc.paper_reference}; the paper's numbers "
                "are for Fashion-MNIST, its split and one run per configuration):",
                "",
                f"| | paper | ours ({header['dataset']}, mean) |",
                "|---|---|---|",
            ]
            for f in sc.paper_figures:
                lines.append(f"| {f.what} | {f.paper} | {f.ours(by_arm) or '-'} |")
            lines.append("")
        for png in plots.get(sc.name, []):
            lines.append(f"![{png}]({png})")
        lines.append("")
    atomic_write(path, "\n".join(lines) + "\n")
