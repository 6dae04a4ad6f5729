"""The report: built once from the records (:func:`build`), then rendered from that one build as
markdown (:func:`markdown`, ``report.md``), as the console summary (:func:`print_console`) and, by
the scenarios, as plots of the same rows (:func:`draw_plots`). Reading and writing the files is
:mod:`rwwce.experiments.store`'s.

**Statistics.** The unit of replication is the training run, i.e. the seed: arms of one seed share
their initial weights and batches, and in ``fp-pair`` one CE model serves every cost matrix, so the
configurations of one seed are not independent. Every interval and test is therefore over seeds:
each seed contributes the mean over its configurations (one number per arm and seed), the table
gives the mean and 95% Student-t interval of those per-seed means, and an arm is compared with the
reference arm (RWWCE) by the per-seed mean paired difference of Real World Cost: its mean, its
95% t interval and the two-sided paired t-test (p < :data:`ALPHA` exactly when the interval
excludes 0). With fewer than :data:`MIN_SEEDS` seeds no interval, test or p-value is given.

**The verdict** for each arm: a *win* or a *loss* when the interval excludes 0; a *tie* only when
the interval lies inside +-:data:`TIE_MARGIN` of the other arm's mean cost (a difference smaller
than that is not meaningful here); otherwise *inconclusive: too few runs to decide*.

What is scenario-specific (headline metric, columns, plots, the paper's figures) comes from the
scenario objects (:mod:`rwwce.experiments.scenarios`); this module only iterates over them.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .scenarios.base import Scenario

__all__ = [
    "ALPHA",
    "MIN_SEEDS",
    "TIE_MARGIN",
    "Comparison",
    "Report",
    "ScenarioReport",
    "build",
    "compare",
    "draw_plots",
    "markdown",
    "print_console",
    "summarize",
    "verdict",
]

ALPHA = 0.05  # two-sided level of the paired t-test; the intervals are 1 - ALPHA = 95%
#: A difference in mean Real World Cost within this fraction of the other arm's mean cost is not
#: meaningful: two arms tie when the whole 95% interval of their difference lies within it.
TIE_MARGIN = 0.05
#: Fewest seeds (independent training runs per arm) for an interval and a test.
MIN_SEEDS = 2


# ------------------------------------------------------------------------------------- stats
def _interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and the 95% Student-t interval of the mean of ``values`` (NaNs dropped); the bounds
    are NaN with fewer than :data:`MIN_SEEDS` values, and equal the mean when all values are."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < MIN_SEEDS:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(1 - ALPHA / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def _config(rec: dict) -> str:
    return json.dumps(rec["config"], sort_keys=True)


def _metric_key(column: str) -> str:
    return "real_world_cost" if column == "cost" else column


def _cells(records: Iterable[dict], metric: str) -> dict[int, dict[str, float]]:
    """{seed: {configuration: value of ``metric``}} of one arm's records."""
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for r in records:
        v = r["metrics"].get(metric, math.nan)
        out[r["seed"]][_config(r)] = math.nan if v is None else float(v)
    return out


def _seed_means(cells: dict[int, dict[str, float]]) -> np.ndarray:
    """One value per seed (sorted): the mean over the seed's configurations (NaNs ignored)."""
    out = []
    for seed in sorted(cells):
        v = np.array(list(cells[seed].values()), dtype=float)
        out.append(float(np.nanmean(v)) if np.isfinite(v).any() else math.nan)
    return np.array(out, dtype=float)


Outcome = Literal["win", "loss", "tie", "inconclusive", "untestable"]


@dataclass(frozen=True)
class Comparison:
    """The reference arm (RWWCE) against one other arm, on Real World Cost, over seeds.

    ``diff`` is the mean over seeds of the per-seed mean paired difference ``rwwce - arm`` (negative:
    RWWCE is cheaper) with its 95% t interval; ``other`` and ``ref`` the two arms' mean costs over
    the same cells; ``p`` the two-sided paired t-test (NaN below :data:`MIN_SEEDS` seeds)."""

    n: int  # seeds with both arms
    diff: tuple[float, float, float]
    ref: float
    other: float
    p: float
    outcome: Outcome

    @property
    def relative(self) -> tuple[float, float, float]:
        """``diff`` as a fraction of the other arm's mean cost (NaN when that is 0)."""
        if not self.other:
            return math.nan, math.nan, math.nan
        return tuple(v / self.other for v in self.diff)  # type: ignore[return-value]


def compare(ref: dict[int, dict[str, float]], other: dict[int, dict[str, float]]) -> Comparison:
    """Compare two arms' costs ``{seed: {configuration: cost}}`` on the cells both have."""
    from scipy import stats

    diffs, ref_means, other_means = [], [], []
    for seed in sorted(set(ref) & set(other)):
        shared = sorted(set(ref[seed]) & set(other[seed]))
        if not shared:
            continue
        a = np.array([ref[seed][c] for c in shared], dtype=float)
        b = np.array([other[seed][c] for c in shared], dtype=float)
        diffs.append(float(np.mean(a - b)))
        ref_means.append(float(np.mean(a)))
        other_means.append(float(np.mean(b)))
    n = len(diffs)
    if n == 0:
        return Comparison(0, (math.nan,) * 3, math.nan, math.nan, math.nan, "untestable")
    d = np.array(diffs)
    ref_cost, other_cost = float(np.mean(ref_means)), float(np.mean(other_means))
    mean, lo, hi = _interval(d)
    if n < MIN_SEEDS:
        return Comparison(n, (mean, lo, hi), ref_cost, other_cost, math.nan, "untestable")
    sd = float(d.std(ddof=1))
    if sd == 0:  # no spread: the t statistic is 0/0 or infinite
        p = 1.0 if mean == 0 else 0.0
    else:  # the paired t-test: scipy's ttest_rel on the per-seed means
        p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    margin = TIE_MARGIN * abs(other_cost)
    outcome: Outcome
    if p < ALPHA:
        outcome = "win" if mean < 0 else "loss"
    elif -margin <= lo and hi <= margin:
        outcome = "tie"
    else:
        outcome = "inconclusive"
    return Comparison(n, (mean, lo, hi), ref_cost, other_cost, p, outcome)


def summarize(records: list[dict], scenario: Scenario) -> list[dict]:
    """One row per arm (in the scenario's arm order): ``n`` (seeds), ``runs``, ``configs``, the mean
    and 95% interval over seeds of every table column (each seed: the mean over its
    configurations), ``n_test`` and, for every arm but the reference, ``vs_rwwce`` (a
    :class:`Comparison`) and its ``p_vs_rwwce``."""
    by_arm: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["scenario"] == scenario.name:
            by_arm[r["arm"]].append(r)
    order = [a.name for a in scenario.arms]
    arms = sorted(by_arm, key=lambda a: (order.index(a) if a in order else len(order), a))
    ref = _cells(by_arm.get(scenario.reference_arm, []), "real_world_cost")
    rows = []
    for arm in arms:
        recs = by_arm[arm]
        cost = _cells(recs, "real_world_cost")
        row: dict = {
            "arm": arm,
            "n": len(cost),
            "runs": len(recs),
            "configs": max(len(c) for c in cost.values()),
            "n_test": float(np.mean([r["metrics"].get("n_test", math.nan) for r in recs])),
        }
        for col in scenario.table_columns():
            row[col] = _interval(_seed_means(_cells(recs, _metric_key(col))))
        row["vs_rwwce"] = None if arm == scenario.reference_arm or not ref else compare(ref, cost)
        row["p_vs_rwwce"] = math.nan if row["vs_rwwce"] is None else row["vs_rwwce"].p
        rows.append(row)
    return rows


_WORDS = {
    "win": "RWWCE wins against {arm}",
    "loss": "RWWCE loses to {arm}",
    "tie": "RWWCE ties with {arm}",
    "inconclusive": "RWWCE vs {arm}: inconclusive, too few runs to decide",
    "untestable": "RWWCE vs {arm}: no test",
}


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:+.1f}%"


def verdict(rows: list[dict], scenario: Scenario) -> list[str]:
    """Where the reference arm (RWWCE) wins, ties, loses or cannot tell, one line per other arm
    with the effect on Real World Cost, its 95% interval over seeds and the test's p and n."""
    ref = next((r for r in rows if r["arm"] == scenario.reference_arm), None)
    if ref is None:
        return []
    margin = f"{100 * TIE_MARGIN:g}%"
    out = []
    for r in rows:
        c: Comparison | None = r["vs_rwwce"]
        if c is None:
            continue
        head = _WORDS[c.outcome].format(arm=r["arm"])
        mean, lo, hi = c.diff
        rel, rlo, rhi = c.relative
        if c.outcome == "untestable":
            why = (
                f" ({c.n} training run per arm; the unit of replication is the seed: rerun with "
                f"--seeds {MIN_SEEDS} or more, 5 or more to detect modest effects)"
            )
            effect = f"difference {mean:+.4g} ({_pct(rel)}), no interval, no p-value"
        else:
            inside = abs(rlo) <= TIE_MARGIN and abs(rhi) <= TIE_MARGIN
            why = {
                "tie": f" (the interval lies within the ±{margin} margin)",
                "inconclusive": f" (the interval holds 0 and differences beyond ±{margin})",
            }.get(c.outcome, f" (by less than the ±{margin} margin)" if inside else "")
            effect = (
                f"difference {mean:+.4g} [95% CI {lo:+.4g}, {hi:+.4g}] = {_pct(rel)} "
                f"[{_pct(rlo)}, {_pct(rhi)}] of its cost, p = {fmt_p(c.p)} (paired t-test over "
                f"n = {c.n} seeds)"
            )
        out.append(
            f"{head}{why}: cost {c.ref:.4g} vs {c.other:.4g}, {effect}; "
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
@dataclass
class ScenarioReport:
    """One scenario's part of the report: its records, rows, verdict, set-up, paper figures and
    (once drawn) the file names of its plots."""

    scenario: Scenario
    records: list[dict]
    rows: list[dict]
    verdict: list[str]
    setup: list[str]
    paper: list[tuple[str, str, str]]  # (what, the paper's figure, ours); empty when not comparable
    plots: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Everything the markdown file, the console summary and the plots show, computed once."""

    header: dict
    paper_note: str | None  # how our data relate to the paper's; None: no paper figures
    scenarios: list[ScenarioReport]

    @property
    def records(self) -> list[dict]:
        return [r for s in self.scenarios for r in s.records]


def _setup_lines(records: list[dict]) -> list[str]:
    """The split, the training budget and the epoch kept by the runs of one scenario."""
    seen = []
    for r in records:
        b = r.get("budget", {})
        item = (
            r.get("split", "?"),
            r["epochs"],
            b.get("steps_per_epoch"),
            b.get("rule", ""),
            r.get("epoch_selection", "best-val"),
        )
        if item not in seen:
            seen.append(item)
    kept = {
        "best-val": "each arm's epoch with the lowest validation Real World Cost",
        "last": "the last epoch (the paper's protocol)",
    }
    lines = []
    for split, epochs, per, rule, selection in seen:
        steps = f", {per} steps per epoch, {epochs * per} Adam steps" if per else ""
        lines.append(
            f"- split: {split}; training: {epochs} epochs{steps} ({rule}); epoch kept: "
            f"{selection} ({kept.get(selection, selection)})"
        )
    return lines


def build(
    records: list[dict],
    scenarios: Sequence[Scenario],
    header: dict,
    paper_note: str | None = None,
) -> Report:
    """The report of ``records``: per scenario (those with records), the summary rows, the
    verdict, the set-up lines and, when ``paper_note`` says our data can be set beside the
    paper's, the paper's figures with ours."""
    parts = []
    for sc in scenarios:
        recs = [r for r in records if r["scenario"] == sc.name]
        rows = summarize(recs, sc)
        if not rows:
            continue
        paper = []
        if paper_note is not None:
            by_arm = {r["arm"]: r for r in rows}
            paper = [(f.what, f.paper, f.ours(by_arm) or "-") for f in sc.paper_figures]
        parts.append(ScenarioReport(sc, recs, rows, verdict(rows, sc), _setup_lines(recs), paper))
    return Report(header, paper_note, parts)


def markdown(rep: Report) -> str:
    """``report.md``: the set-up and the statistics used, then per scenario the table, the
    verdict, the paper's figures beside ours (where comparable) and the plots."""
    lines = [f"# rwwce experiments: {rep.header['dataset']}", ""]
    lines += [f"- {k}: {v}" for k, v in rep.header.items()]
    lines += [
        "- n: seeds, i.e. independent training runs per arm (the unit of replication); each "
        "seed's value is the mean over its configurations",
        "- intervals: mean and 95% Student-t interval over the per-seed means (none with one seed)",
        "- p vs rwwce: two-sided paired t-test over seeds of the per-seed mean Real World Cost "
        f"against the rwwce arm (none with fewer than {MIN_SEEDS} seeds); the verdict calls an "
        "interval of the difference that excludes 0 a win or a loss, one inside "
        f"±{100 * TIE_MARGIN:g}% of the other arm's cost a tie, anything else inconclusive",
    ]
    if rep.paper_note:
        lines.append(f"- the paper's figures: {rep.paper_note}")
    lines.append("")
    for part in rep.scenarios:
        sc, rows = part.scenario, part.rows
        cols = sc.table_columns()
        lines += [f"## {sc.name}: {sc.title}", ""]
        lines += part.setup
        lines += [
            "",
            "| arm | n (seeds) | runs | "
            + " | ".join(sc.label(c) for c in cols)
            + " | p vs rwwce |",
        ]
        lines.append("|" + "---|" * (len(cols) + 4))
        for r in rows:
            lines.append(
                f"| {r['arm']} | {r['n']} | {r['runs']} | "
                + " | ".join(fmt_interval(r[c]) for c in cols)
                + f" | {fmt_p(r['p_vs_rwwce'])} |"
            )
        lines += ["", "Arms: " + "; ".join(f"`{a.name}`: {a.description}" for a in sc.arms), ""]
        if part.verdict:
            lines += ["**Where RWWCE wins, ties and loses** (Real World Cost):", ""]
            lines += [f"- {x}" for x in part.verdict] + [""]
        if part.paper:
            lines += [
                f"**The paper's figures beside ours** ({sc.paper_reference}; {rep.paper_note}):",
                "",
                f"| | paper | ours ({rep.header['dataset']}, mean) |",
                "|---|---|---|",
            ]
            lines += [f"| {what} | {paper} | {ours} |" for what, paper, ours in part.paper]
            lines.append("")
        for png in part.plots:
            lines.append(f"![{png}]({png})")
        lines.append("")
    return "\n".join(lines) + "\n"


def draw_plots(rep: Report, out_dir: str, classes: list[str]) -> None:
    """Have each scenario draw its plots of ``rep`` into ``out_dir`` (PNG files); their file names
    go into the report, where :func:`markdown` shows them."""
    for part in rep.scenarios:
        part.plots = part.scenario.plots(out_dir, part.records, part.rows, classes)


def print_console(rep: Report, out=None) -> None:
    """The summary tables (mean ± 95% half-width over seeds), the verdicts and, where comparable,
    the paper's figures of ``rep`` on ``out`` (stdout)."""
    from rich.console import Console
    from rich.table import Table

    stream = out or sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 160)
    for part in rep.scenarios:
        sc, rows = part.scenario, part.rows
        cols = sc.summary_columns()
        n = max(r["n"] for r in rows)
        table = Table(
            title=f"{sc.name}: mean ± 95% half-width over {n} seed{'s' if n != 1 else ''} "
            f"(each seed: the mean of its {max(r['configs'] for r in rows)} configurations)",
            title_justify="left",
        )
        for c in ["arm", "n", *cols, "p vs rwwce"]:
            table.add_column(c, justify="left" if c == "arm" else "right")
        for r in rows:
            table.add_row(
                r["arm"], str(r["n"]), *[fmt_pm(r[c]) for c in cols], fmt_p(r["p_vs_rwwce"])
            )
        console.print(table)
        for line in part.verdict:
            console.print(f"  {line}", highlight=False)
        if part.paper:
            console.print(f"  {sc.paper_reference}; {rep.paper_note}", highlight=False)
            for what, paper, ours in part.paper:
                console.print(f"  paper vs ours: {what}: {paper} vs {ours}", highlight=False)
