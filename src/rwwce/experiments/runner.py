"""Run scenarios group by group, append results as they finish, resume what is missing."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from . import report
from .datasets import load_dataset
from .scenarios import PAPER, SCENARIOS, Group, arm_metrics, build_groups
from .training import binary_loss, multiclass_loss, train_group

__all__ = ["run_experiment", "run_key"]


def versions() -> dict:
    import rwwce

    out = {
        "rwwce": rwwce.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        import sklearn

        out["scikit-learn"] = sklearn.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def run_key(dataset: str, scenario: str, config: dict, seed: int, arm: str, epochs: int) -> str:
    return json.dumps([dataset, scenario, config, seed, arm, epochs], sort_keys=True)


def _loss_for(group: Group, model_ids: list[int]):
    defs = [group.models[i] for i in model_ids]
    if group.binary:
        return binary_loss(
            torch.tensor([float(d.fn) for d in defs]), torch.tensor([float(d.fp) for d in defs])
        )
    k = group.sizes[-1]
    fn = torch.tensor(np.stack([d.fn for d in defs]), dtype=torch.float32)
    if all(d.fp is None for d in defs):
        return multiclass_loss(fn, None)
    fp = torch.tensor(
        np.stack([np.zeros((k, k)) if d.fp is None else d.fp for d in defs]), dtype=torch.float32
    )
    return multiclass_loss(fn, fp)


# Below this many multiply-adds per step a group's tensors are too small for several threads to pay
# off (and on a busy machine OpenMP's thread hand-offs cost more than the work): use one thread.
SMALL_STEP = 1e8


def _threads_for(group: Group, n_models: int, threads: int | None) -> int:
    if threads:
        return threads
    sizes = group.sizes
    per_model = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    return 1 if n_models * 100 * per_model < SMALL_STEP else (os.cpu_count() or 1)


@contextlib.contextmanager
def _cpu_math_settings(device: str):
    """Flush denormals (they slow Adam's state on small CPU models 5x) and let the runner set
    thread counts, restoring both afterwards: they are process-wide and must not leak."""
    threads = torch.get_num_threads()
    flush = device == "cpu" and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if flush:
            torch.set_flush_denormal(False)


def run_experiment(
    dataset: str,
    scenario: str,
    *,
    seeds: int,
    quick: bool,
    epochs: int,
    device: str,
    out: str,
    console=None,
    threads: int | None = None,
) -> list[dict]:
    """Run (or resume) one experiment; return every record of this dataset in ``out``."""
    with _cpu_math_settings(device):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        console = console or Console(stderr=True)
        data = load_dataset(dataset)
        ds_key = dataset if dataset in ("digits", "breast-cancer") else os.path.abspath(dataset)
        if scenario == "all":
            scenarios = [s for s in SCENARIOS if not (s == "fp-pair" and data.num_classes < 3)]
        else:
            scenarios = [scenario]
        if "fp-pair" in scenarios and data.num_classes < 3:
            raise ValueError(
                f"scenario 'fp-pair' needs a multi-class dataset; {data.name!r} has 2 classes"
            )
        os.makedirs(out, exist_ok=True)
        results_path = os.path.join(out, "results.jsonl")
        records = report.load_records(results_path)
        done = {r["key"] for r in records}
        vers = versions()
        skipped = ran = 0
        t0 = time.time()
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        with progress:
            for sc in scenarios:
                outer = progress.add_task(f"{sc}: seeds", total=seeds)
                for group in build_groups(data, sc, list(range(seeds)), quick):
                    todo = [
                        a
                        for a in group.arms
                        if run_key(ds_key, sc, a.config, a.seed, a.arm, epochs) not in done
                    ]
                    skipped += len(group.arms) - len(todo)
                    if todo:
                        model_ids = sorted({a.spec.model for a in todo})
                        remap = {m: i for i, m in enumerate(model_ids)}
                        specs = [group.models[m].spec for m in model_ids]
                        arms = [
                            type(a.spec)(remap[a.spec.model], a.spec.decision, a.spec.costs)
                            for a in todo
                        ]
                        n = len(specs[0].train_idx)
                        seeds_in = sorted({a.seed for a in group.arms})
                        label = (
                            f"seed {seeds_in[0]}"
                            if len(seeds_in) == 1
                            else f"seeds {seeds_in[0]}-{seeds_in[-1]}"
                        )
                        inner = progress.add_task(
                            f"  {label}: {len(specs)} models, {len(todo)} arms",
                            total=epochs * -(-n // 100),
                        )
                        t_group = time.time()
                        if device == "cpu":
                            torch.set_num_threads(_threads_for(group, len(specs), threads))
                        pool = torch.as_tensor(group.pool, device=device)
                        results = train_group(
                            pool,
                            specs,
                            arms,
                            _loss_for(group, model_ids),
                            group.sizes,
                            epochs=epochs,
                            on_step=lambda task=inner: progress.advance(task),
                        )
                        new = []
                        for a, res in zip(todo, results, strict=True):
                            new.append(
                                {
                                    "key": run_key(ds_key, sc, a.config, a.seed, a.arm, epochs),
                                    "dataset": ds_key,
                                    "scenario": sc,
                                    "config": a.config,
                                    "seed": a.seed,
                                    "arm": a.arm,
                                    "epochs": epochs,
                                    "metrics": arm_metrics(sc, a, res, data.classes),
                                    "versions": vers,
                                    "device": device,
                                }
                            )
                        report.append_records(results_path, new)
                        records += new
                        done.update(r["key"] for r in new)
                        ran += len(new)
                        progress.remove_task(inner)
                        if not console.is_terminal:
                            console.print(
                                f"{sc} {label}: {len(specs)} models, {len(new)} runs "
                                f"in {time.time() - t_group:.1f} s",
                                highlight=False,
                            )
                    progress.advance(outer, len({a.seed for a in group.arms}))
        records = [r for r in records if r["dataset"] == ds_key and r["epochs"] == epochs]
        header = {
            "dataset": data.name,
            "seeds": seeds,
            "epochs": epochs,
            "quick": quick,
            "device": device,
            "runs": len(records),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
            f"{threads or 'auto'}",
            "versions": ", ".join(f"{k} {v}" for k, v in vers.items()),
        }
        report.write_plots(out, records, scenarios)
        report.write_report(os.path.join(out, "report.md"), records, scenarios, header, PAPER)
        console.print(
            f"{ran} runs done, {skipped} already in {results_path} (skipped), {time.time() - t0:.1f} s",
            highlight=False,
        )
        return records


def print_summary(records: list[dict], scenario: str, out=None) -> None:
    from rich.console import Console
    from rich.table import Table

    stream = out or sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 140)
    scenarios = SCENARIOS if scenario == "all" else (scenario,)
    for sc in scenarios:
        rows = report.summarize(records, sc)
        if not rows:
            continue
        cols = report.table_columns(sc)[:3] + {"medical": ["f1"], "imbalance": ["macro_f1"]}.get(
            sc, []
        )
        table = Table(title=f"{sc}: mean ± 95% half-width", caption=PAPER[sc], title_justify="left")
        for c in ["arm", "n", *cols, "p vs rwwce"]:
            table.add_column(c, justify="left" if c == "arm" else "right")
        for r in rows:
            table.add_row(
                r["arm"],
                str(r["n"]),
                *[report.fmt_pm(r[c]) for c in cols],
                report.fmt_p(r["p_vs_rwwce"]),
            )
        console.print(table)
