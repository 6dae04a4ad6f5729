"""The ``rwwce`` command line: ``experiment``, ``weights`` and ``cost``.

Every user mistake (a missing or malformed file, an unknown class, an unavailable device) ends in
one line on stderr and exit status 2, never a traceback: the commands raise ValueError /
FileNotFoundError / OSError and :func:`main` is the one place that turns them into that line.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Sequence

from rwwce.experiments import spec
from rwwce.experiments.scenarios import SCENARIOS

__all__ = ["build_parser", "main"]

SCHEMES = ("balanced", "inverse", "inverse_sqrt", "effective_number", "median_frequency")
PROB_PREFIX = "p_"


class _UserError(ValueError):
    """A problem with the user's input, reported as one line."""


# ----------------------------------------------------------------------------------- helpers
def _read_csv(path: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Header and rows of a CSV file with a header row (cells stripped, blank lines skipped), and
    each row's line number in the file (1-based, blank lines counted: what an editor shows);
    every message about a row names that line."""
    if os.path.isdir(path):
        raise _UserError(f"{path!r} is a directory, expected a CSV file")
    rows, lines = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                if any(c.strip() for c in row):
                    rows.append([c.strip() for c in row])
                    lines.append(reader.line_num)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path!r}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise _UserError(f"{path!r} is not a readable CSV file ({e})") from None
    if not rows:
        raise _UserError(f"{path!r} is empty; expected a header row and data rows")
    header, body = rows[0], rows[1:]
    for n, row in zip(lines[1:], body, strict=True):
        if len(row) != len(header):
            raise _UserError(
                f"{path!r} line {n} has {len(row)} cells, the header has {len(header)}"
            )
    return header, body, lines[1:]


def _column(path: str, header: list[str], body: list[list[str]], name: str) -> list[str]:
    if name not in header:
        raise _UserError(f"{path!r} has no column {name!r} (columns: {', '.join(header)})")
    where = [i + 1 for i, h in enumerate(header) if h == name]
    if len(where) > 1:
        raise _UserError(
            f"{path!r} has {len(where)} columns named {name!r} (columns "
            f"{', '.join(map(str, where))}); expected one"
        )
    i = header.index(name)
    return [row[i] for row in body]


def _canonical_int(value: str) -> int | None:
    """The integer a label spells in its one canonical form ("7", "-3"; not "07", "+7", "7.0")."""
    try:
        i = int(value)
    except ValueError:
        return None
    return i if str(i) == value else None


def _json(data: dict) -> str:
    """Strict JSON: a value that is not a finite number (a cost beyond the float range) is null,
    never the invalid ``Infinity`` / ``NaN`` tokens."""

    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return {k: finite(x) for k, x in v.items()} if isinstance(v, dict) else v

    return json.dumps(finite(data), allow_nan=False)


# ---------------------------------------------------------------------------------- commands
def _cmd_weights(args: argparse.Namespace) -> int:
    import torch

    import rwwce

    header, body, line_no = _read_csv(args.labels)
    column = args.column if args.column is not None else header[0]
    values = _column(args.labels, header, body, column)
    if not values:
        raise _UserError(f"{args.labels!r} has no labels in column {column!r}")
    if any(v == "" for v in values):
        row = line_no[values.index("")]
        raise _UserError(f"{args.labels!r} line {row}: empty label in column {column!r}")
    # Canonical integers are classes in numeric order; anything else is text in string order
    # (code points, as rwwce.class_weights orders string labels): "01" and "1" stay apart.
    # Python's own ints and sort: NumPy would turn integers beyond int64 into floats.
    ints = [_canonical_int(v) for v in values]
    keys = ints if None not in ints else values
    uniq = sorted(set(keys))
    position = {k: i for i, k in enumerate(uniq)}
    names = [str(n) for n in uniq]
    labels = torch.tensor([position[k] for k in keys], dtype=torch.int64)
    weights = rwwce.class_weights(labels, args.scheme, num_classes=len(names)).tolist()
    counts = torch.bincount(labels, minlength=len(names)).tolist()
    if args.json:
        print(
            _json(
                {
                    "scheme": args.scheme,
                    "column": column,
                    "weights": dict(zip(names, weights, strict=True)),
                    "counts": dict(zip(names, counts, strict=True)),
                }
            )
        )
    else:
        width = max(len(n) for n in names + ["class"])
        print(f"{'class':<{width}}  {'count':>7}  weight ({args.scheme})")
        for n, c, w in zip(names, counts, weights, strict=True):
            print(f"{n:<{width}}  {c:>7}  {w:.6g}")
    return 0


def _class_index(value: str, classes: list[str], where: str) -> int:
    """A label is a class name, or an index 0..K-1 when no class is named by an integer: with
    classes named "1", "2", "3" the label "0" (or "01") could mean neither safely: refused."""
    if value in classes:
        return classes.index(value)
    if any(_canonical_int(c) is not None for c in classes):
        raise _UserError(
            f"{where}: unknown class {value!r}; the cost matrix's classes are "
            f"{', '.join(classes)}, named by integers, so labels are read as names, never as "
            "indices"
        )
    i = _canonical_int(value)
    if i is not None and 0 <= i < len(classes):
        return i
    raise _UserError(
        f"{where}: unknown class {value!r}; the cost matrix's classes are "
        f"{', '.join(classes)} (or indices 0..{len(classes) - 1})"
    )


#: How far a row of probabilities may sum from 1 (rounding in a CSV file), and still be taken.
PROB_SUM_TOLERANCE = 1e-2


def _read_probabilities(
    path: str, header: list[str], body: list[list[str]], line_no: list[int], cols: list[str]
):
    """(N, K) probabilities from the ``p_<class>`` columns. Every row must be finite, in [0, 1]
    and sum to 1 within :data:`PROB_SUM_TOLERANCE` (then it is rescaled to sum to exactly 1);
    percentages and unnormalised scores are refused, naming the line."""
    import numpy as np

    probs = np.empty((len(body), len(cols)))
    for k, c in enumerate(cols):
        for i, v in enumerate(_column(path, header, body, c)):
            try:
                probs[i, k] = float(v)
            except ValueError:
                raise _UserError(
                    f"{path!r} line {line_no[i]}, {c}: {v!r} is not a number"
                ) from None
    for i, row in enumerate(probs):
        where = f"{path!r} line {line_no[i]}"
        if not np.isfinite(row).all() or (row < 0).any():
            raise _UserError(
                f"{where}: probabilities must be finite and non-negative, got {row.tolist()}"
            )
        if (row > 1).any():
            hint = (
                " (percentages? divide by 100)"
                if abs(row.sum() - 100) <= 100 * PROB_SUM_TOLERANCE
                else ""
            )
            raise _UserError(f"{where}: probabilities must be at most 1, got {row.tolist()}{hint}")
        if abs(row.sum() - 1) > PROB_SUM_TOLERANCE:
            raise _UserError(
                f"{where}: probabilities sum to {row.sum():.6g}; expected 1 (within "
                f"{PROB_SUM_TOLERANCE:g})"
            )
    return probs / probs.sum(1, keepdims=True)


def _cmd_cost(args: argparse.Namespace) -> int:
    import numpy as np

    from rwwce import metrics
    from rwwce.costs import CostMatrix

    if os.path.isdir(args.costs):
        raise _UserError(f"{args.costs!r} is a directory, expected a CSV file (--costs)")
    if not os.path.isfile(args.costs):
        raise FileNotFoundError(f"no such file: {args.costs!r} (--costs)")
    cm = CostMatrix.from_csv(args.costs)
    classes = [str(c) for c in cm.classes]
    header, body, line_no = _read_csv(args.predictions)
    if not body:
        raise _UserError(f"{args.predictions!r} has a header but no rows")
    y_true = np.array(
        [
            _class_index(v, classes, f"{args.predictions!r} line {n}, y_true")
            for n, v in zip(line_no, _column(args.predictions, header, body, "y_true"), strict=True)
        ]
    )
    prob_cols = [PROB_PREFIX + c for c in classes]
    has_pred = "y_pred" in header
    has_probs = any(c in header for c in prob_cols)
    if not has_pred and not has_probs:
        raise _UserError(
            f"{args.predictions!r} needs a y_pred column or probability columns "
            f"{', '.join(prob_cols)}"
        )
    out: dict[str, float | int] = {"n": len(y_true)}
    y_pred = probs = None
    if has_pred:
        y_pred = np.array(
            [
                _class_index(v, classes, f"{args.predictions!r} line {n}, y_pred")
                for n, v in zip(
                    line_no, _column(args.predictions, header, body, "y_pred"), strict=True
                )
            ]
        )
        out["cost_y_pred"] = float(metrics.real_world_cost(y_true, y_pred, cm))
    if has_probs:
        missing = [c for c in prob_cols if c not in header]
        if missing:
            raise _UserError(f"{args.predictions!r} lacks probability columns {', '.join(missing)}")
        probs = _read_probabilities(args.predictions, header, body, line_no, prob_cols)
        out["cost_argmax"] = float(metrics.real_world_cost(y_true, probs.argmax(1), cm))
        bayes = np.asarray(metrics.bayes_decision(probs, cm))
        out["cost_bayes"] = float(metrics.real_world_cost(y_true, bayes, cm))
    if args.plot is not None:
        metrics.plot_prediction_costs(y_true, cm, args.plot, probs=probs, y_pred=y_pred)
    if args.json:
        print(_json(out if args.plot is None else {**out, "plot": args.plot}))
        return 0
    print(f"samples: {out['n']}")
    labels = {
        "cost_y_pred": "Real World Cost of y_pred",
        "cost_argmax": "Real World Cost of arg-max decisions",
        "cost_bayes": "Real World Cost of Bayes-optimal decisions",
    }
    for k, label in labels.items():
        if k in out:
            print(f"{label}: {out[k]:.6g}")
    if "cost_bayes" in out and out["cost_argmax"] > 0:
        print(f"Bayes vs arg-max: {100 * (out['cost_bayes'] / out['cost_argmax'] - 1):+.1f}%")
    if args.plot is not None:
        print(f"plot: {args.plot}")
    return 0


def _settings(args: argparse.Namespace) -> spec.Settings:
    """The experiment the options ask for: one option per field of :class:`spec.Settings`."""
    return spec.Settings(**{name: getattr(args, name) for name in spec.defaults()})


def _cmd_experiment(args: argparse.Namespace) -> int:
    from rwwce.experiments import report, runner, store

    settings = _settings(args)
    report.print_console(runner.run_experiment(settings))
    print(f"results: {store.results_path(settings.out)}, report: {store.report_path(settings.out)}")
    return 0


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rwwce",
        description="Real-World-Weight Cross-Entropy: the paper's experiments, class weights "
        "and the Real World Cost of predictions.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "experiment",
        help="run the paper's experiments (batched, resumable)",
        description="Train the paper's models (MLP in-50-20-K, in-10-1; Adam 1e-3, batch "
        f"{spec.BATCH_SIZE}) for each arm over several seeds; write results.jsonl, report.md and plots to "
        "--out. Rerunning with the same --out skips finished runs and continues an "
        "interrupted group from its last finished epoch.",
    )
    default = spec.defaults()
    p.add_argument(
        "--dataset",
        default=default["dataset"],
        help="digits | breast-cancer | a directory of MNIST-format IDX files: the original "
        "MNIST (the paper's data) or Fashion-MNIST, its harder offline stand-in (Debian: "
        "apt-get install dataset-fashion-mnist) (default: %(default)s)",
    )
    p.add_argument(
        "--scenario",
        default=default["scenario"],
        choices=[*SCENARIOS, spec.ALL],
        help=f"fp-pair (paper A), medical (paper B), imbalance, or {spec.ALL} (default: "
        "%(default)s)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        default=default["quick"],
        help=f"a few pairs / classes and {spec.QUICK_SEEDS} seeds: a smoke run in under a minute",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=default["seeds"],
        help=f"seeds per configuration (default {spec.SEEDS}, {spec.QUICK_SEEDS} with --quick)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=default["epochs"],
        help=f"training epochs for every model (default: the paper's {spec.PAPER_EPOCHS}, or as "
        f"many as give every model at least {spec.MIN_STEPS} Adam steps on small data)",
    )
    p.add_argument(
        "--split",
        default=default["split"],
        choices=spec.SPLITS,
        help="paper: all rows pooled, 25%% drawn for test with random_state 1 (the paper's; "
        "default for fp-pair and medical); official: an IDX directory's own train / t10k files "
        "(default for imbalance where the data has them)",
    )
    p.add_argument(
        "--epoch-selection",
        default=default["epoch_selection"],
        choices=spec.EPOCH_SELECTIONS,
        help="which epoch each arm reports: best-val (the lowest validation Real World Cost "
        "under the arm's own costs) or last (the final epoch, as the paper's notebook) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--device",
        default=default["device"],
        choices=spec.DEVICES,
        help="default %(default)s",
    )
    p.add_argument(
        "--out",
        default=default["out"],
        help="output directory (default runs/<dataset>-<scenario>, with -quick after --quick)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=default["threads"],
        help="CPU threads for training (default: 1 for small models, all cores for "
        "large batched groups)",
    )
    p.set_defaults(func=_cmd_experiment)

    p = sub.add_parser(
        "weights",
        help="class weights from a CSV file of labels",
        description="Print each class and its weight. The CSV has a header row. When every "
        "label is an integer written plainly (7, -3; not 07 or +7) the classes are sorted "
        "numerically; otherwise labels are text, sorted as strings (as rwwce.class_weights "
        "orders string labels: 10 before 9, and 01 and 1 are two classes).",
    )
    p.add_argument("labels", metavar="LABELS.csv")
    p.add_argument("--column", default=None, help="label column (default: the first column)")
    p.add_argument("--scheme", default="balanced", choices=SCHEMES, help="default balanced")
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON instead of a table (a value beyond the float range is null)",
    )
    p.set_defaults(func=_cmd_weights)

    p = sub.add_parser(
        "cost",
        help="Real World Cost of a predictions file",
        description="PREDICTIONS.csv has a y_true column and either y_pred or one probability "
        f"column per class named {PROB_PREFIX}<class> (classes as in the cost CSV's "
        "header; labels may also be indices 0..K-1, unless a class is named by an integer: "
        "then labels are names only). With probabilities it also "
        "reports the cost of the Bayes-optimal decisions next to arg-max.",
    )
    p.add_argument("predictions", metavar="PREDICTIONS.csv")
    p.add_argument(
        "--costs",
        required=True,
        metavar="COSTS.csv",
        help="cost matrix CSV: header row of predicted classes, first column true classes",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON (a cost beyond the float range is null; with --plot, the PNG's path "
        "under 'plot')",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="draw the cost-versus-threshold and cost curves (binary, with probabilities) or "
        "the cost by true class (multi-class) to FILE (needs matplotlib); the path is "
        "printed",
    )
    p.set_defaults(func=_cmd_cost)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # here, so that a reader gone away (`| head`) is caught below
        return status
    except KeyboardInterrupt:
        print("rwwce: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): not a mistake to report. What is still
        # buffered goes to /dev/null, so that Python's flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, TypeError, IndexError, OSError, ImportError) as e:  # missing extras too
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"rwwce {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
