"""Run scenarios group by group: plan, train, persist; resume what is missing, even mid-group.

* :func:`plan` turns the settings (:class:`~rwwce.experiments.spec.Settings`) into :class:`Job` s,
  one per group of models, each with the runs it still has to do (the others are in the results
  file already) and its training budget.
* :func:`train` trains a job's models, saving a checkpoint in ``--out`` after every epoch and
  continuing from one left by an interrupted run (identical results).
* :func:`persist` appends the job's runs to the results file and removes its checkpoint.

:func:`run_experiment` checks every input before it creates anything (``--out`` could be created,
the data set loads, the scenarios and the split apply to it), then creates ``--out``, checks that
its results file is ours, runs the jobs, and builds the report once (:func:`report.build`), from
which ``report.md``, the plots and the console summary are drawn. What is on disk, and how it is
written, is :mod:`~rwwce.experiments.store`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from . import report, store
from .datasets import Dataset, check_split, load_dataset, paper_note
from .scenarios import SCENARIOS, Scenario, get
from .scenarios.base import ArmDef, Group
from .spec import ALL, BATCH_SIZE, MIN_STEPS, PAPER_EPOCHS, EpochSelection, Settings, SplitMode
from .training import ArmResult, group_loss, train_group

__all__ = [
    "Job",
    "Ticker",
    "plan",
    "persist",
    "run_experiment",
    "run_key",
    "train",
]

#: Seconds between progress lines when the console is not a terminal (a log file, CI): a long
#: group would otherwise print nothing for minutes.
PROGRESS_EVERY = 30.0


@dataclass
class Job:
    """One group of models to train together, and the runs of it still to do."""

    scenario: Scenario
    group: Group
    todo: list[ArmDef]
    keys: list[str]  # run keys of todo, in order
    epochs: int
    steps_per_epoch: int
    rule: str
    all_keys: list[str] = field(default_factory=list)  # every run of the group, done or not

    @property
    def label(self) -> str:
        s = self.group.seeds
        return f"seed {s[0]}" if len(s) == 1 else f"seeds {s[0]}-{s[-1]}"

    @property
    def identity(self) -> str:
        """A short hash of the job's runs: the name of its checkpoint."""
        return hashlib.sha1("\n".join(self.keys).encode()).hexdigest()[:16]

    def checkpoint(self, out: str) -> str:
        """The path of the job's checkpoint in the output folder ``out``."""
        return store.checkpoint_path(out, self.scenario.name, self.identity)


def run_key(
    dataset: str,
    split: str,
    scenario: str,
    config: dict,
    seed: int,
    arm: str,
    epochs: int,
    epoch_selection: EpochSelection = "best-val",
) -> str:
    """The identity of one run in ``results.jsonl``. The default epoch selection adds nothing to
    the key, so results files written before the choice existed stay valid."""
    parts: list = [dataset, split, scenario, config, seed, arm, epochs]
    if epoch_selection != "best-val":
        parts.append(epoch_selection)
    return json.dumps(parts, sort_keys=True)


def budget(n_train: int, epochs: int | None) -> tuple[int, int, str]:
    """(epochs, steps per epoch, the rule in words) for a group with ``n_train`` rows per model.

    ``--epochs N`` is taken as given. By default every model of the group gets the paper's 10
    epochs, or more epochs where 10 would be fewer than :data:`MIN_STEPS` Adam steps (small data);
    all models of a group, hence all arms compared in a table, get the same budget.
    """
    per = -(-n_train // BATCH_SIZE)
    if epochs is not None:
        return epochs, per, "--epochs"
    if PAPER_EPOCHS * per >= MIN_STEPS:
        return PAPER_EPOCHS, per, "the paper's 10 epochs"
    return (
        math.ceil(MIN_STEPS / per),
        per,
        f"the paper's 10 epochs would be {PAPER_EPOCHS * per} steps: at least {MIN_STEPS} steps",
    )


def dataset_key(name: str) -> str:
    return name if name in ("digits", "breast-cancer") else os.path.abspath(name)


def scenarios_for(data: Dataset, settings: Settings) -> list[tuple[Scenario, SplitMode]]:
    """The scenarios asked for (those that apply to ``data`` for ``all``), each with its split
    mode; a scenario or a split that cannot run on ``data`` is a ValueError naming the option."""
    if settings.scenario == ALL:
        chosen = [s for s in SCENARIOS.values() if s.applies_to(data)]
    else:
        chosen = [get(settings.scenario)]
        chosen[0].check(data)
    out = []
    for sc in chosen:
        mode = sc.split_for(data, settings.split)
        check_split(data, mode)
        out.append((sc, mode))
    return out


def plan(
    data: Dataset,
    scenarios: list[tuple[Scenario, SplitMode]],
    settings: Settings,
    done: set[str],
) -> Iterator[Job]:
    """Every group of the ``scenarios`` (:func:`scenarios_for`), with the runs not in ``done``
    (lazily)."""
    ds = dataset_key(settings.dataset)
    for sc, split_mode in scenarios:
        for group in sc.groups(data, list(range(settings.seeds)), settings.quick, split_mode):
            epochs, per, rule = budget(len(group.models[0].spec.train_idx), settings.epochs)

            def key(a: ArmDef, sc=sc, group=group, epochs=epochs) -> str:
                return run_key(
                    ds,
                    group.split,
                    sc.name,
                    a.config,
                    a.seed,
                    a.arm,
                    epochs,
                    settings.epoch_selection,
                )

            todo = [a for a in group.arms if key(a) not in done]
            yield Job(
                sc,
                group,
                todo,
                [key(a) for a in todo],
                epochs,
                per,
                rule,
                [key(a) for a in group.arms],
            )


# ------------------------------------------------------------------------------------ training
# Below this many multiply-adds per step a group's tensors are too small for several threads to pay
# off (and on a busy machine OpenMP's thread hand-offs cost more than the work): use one thread.
SMALL_STEP = 1e8


def _threads_for(group: Group, n_models: int, threads: int | None) -> int:
    if threads:
        return threads
    sizes = group.sizes
    per_model = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    return 1 if n_models * BATCH_SIZE * per_model < SMALL_STEP else (os.cpu_count() or 1)


def train(
    job: Job, settings: Settings, advance: Callable[[int], None] | None = None
) -> tuple[list[ArmResult], int]:
    """Train the job's models (only those its remaining runs need); return one result per
    remaining run and the epoch it resumed after (0 for a fresh start). ``advance(n)`` is told
    of every n Adam steps done (those of a resumed checkpoint first)."""
    group = job.group
    model_ids = sorted({a.spec.model for a in job.todo})
    remap = {m: i for i, m in enumerate(model_ids)}
    models = [group.models[m] for m in model_ids]
    arms = [type(a.spec)(remap[a.spec.model], a.spec.decision, a.spec.costs) for a in job.todo]
    if settings.device == "cpu":
        torch.set_num_threads(_threads_for(group, len(models), settings.threads))
    ckpt = job.checkpoint(settings.out)
    state = store.load_checkpoint(ckpt, job.keys)
    resumed = state.epoch if state is not None else 0
    if advance is not None and resumed:
        advance(resumed * job.steps_per_epoch)
    results = train_group(
        torch.as_tensor(group.pool, device=settings.device),
        [m.spec for m in models],
        arms,
        group_loss([(m.fn, m.fp) for m in models], group.binary),
        group.sizes,
        epochs=job.epochs,
        batch_size=BATCH_SIZE,
        on_step=None if advance is None else lambda: advance(1),
        state=state,
        on_epoch=lambda s: store.save_checkpoint(ckpt, job.keys, s),
        epoch_selection=settings.epoch_selection,
    )
    return results, resumed


def persist(
    job: Job,
    results: list[ArmResult],
    settings: Settings,
    classes: list[str],
    versions: dict[str, str],
) -> list[dict]:
    """Append the job's runs to the results file, then remove its checkpoint."""
    ds = dataset_key(settings.dataset)
    rule = {"epochs": job.epochs, "steps_per_epoch": job.steps_per_epoch, "rule": job.rule}
    new = [
        {
            "key": key,
            "dataset": ds,
            "split": job.group.split,
            "scenario": job.scenario.name,
            "config": a.config,
            "seed": a.seed,
            "arm": a.arm,
            "epochs": job.epochs,
            "epoch_selection": settings.epoch_selection,
            "budget": rule,
            "metrics": job.scenario.metrics(a, res, classes),
            "versions": versions,
            "device": settings.device,
        }
        for a, key, res in zip(job.todo, job.keys, results, strict=True)
    ]
    store.append_records(store.results_path(settings.out), new)
    store.remove_checkpoint(job.checkpoint(settings.out))
    return new


# ---------------------------------------------------------------------------------- the run
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


class Ticker:
    """Progress lines at a steady interval, for a console that is not a terminal: after
    :meth:`start`, :meth:`advance` prints at most one line every ``every`` seconds of ``clock``
    (monotonic, in seconds)."""

    def __init__(self, console, every: float, clock: Callable[[], float] = time.monotonic):
        self.console, self.every, self.clock = console, every, clock
        self.what, self.total, self.done = "", 0, 0
        self.started = self.last = clock()

    def start(self, what: str, total: int) -> None:
        self.what, self.total, self.done = what, total, 0
        self.started = self.last = self.clock()

    def advance(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        self.console.print(
            f"{self.what}: {self.done}/{self.total} steps "
            f"({100 * self.done / max(self.total, 1):.0f}%), {now - self.started:.0f} s",
            highlight=False,
        )


class JobProgress:
    """The console while jobs train: a bar per job on a terminal, :class:`Ticker` lines at a
    steady interval elsewhere, and there a closing line per job with its time."""

    def __init__(self, console):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.ticker = None if console.is_terminal else Ticker(console, PROGRESS_EVERY)
        self.task = None
        self.what, self.started = "", 0.0

    def __enter__(self) -> JobProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    def start(self, job: Job) -> None:
        n_models = len({a.spec.model for a in job.todo})
        self.what = (
            f"{job.scenario.name} {job.label}: {n_models} models, {len(job.todo)} runs, "
            f"{job.epochs} epochs"
        )
        total = job.epochs * job.steps_per_epoch
        self.task = self.bars.add_task(self.what, total=total)
        self.started = time.time()
        if self.ticker is not None:
            self.ticker.start(self.what, total)

    def advance(self, n: int) -> None:
        """``n`` more Adam steps of the current job are done."""
        self.bars.advance(self.task, n)
        if self.ticker is not None:
            self.ticker.advance(n)

    def finish(self, resumed: int) -> None:
        self.bars.remove_task(self.task)
        if self.ticker is not None:
            again = f" (resumed after epoch {resumed})" if resumed else ""
            self.console.print(
                f"{self.what} in {time.time() - self.started:.1f} s{again}", highlight=False
            )


def run_experiment(settings: Settings, console=None) -> report.Report:
    """Run (or resume) the experiment ``settings`` describes; return its report (built once),
    which covers every run of the settings, those done before included."""
    from rich.console import Console

    # Log lines are never hard-wrapped: a log file or a pipe keeps one line per message.
    console = console or Console(stderr=True, soft_wrap=True)
    # Every input is checked before anything is created.
    store.check_output_path(settings.out)
    data = load_dataset(settings.dataset)
    compared_to_paper = paper_note(data)
    scenarios = scenarios_for(data, settings)
    records, note = store.open_output(settings.out)
    if note:
        console.print(f"note: {note}", highlight=False)
    by_key = {r["key"]: r for r in records}
    vers = versions()
    covered: list[str] = []
    skipped = ran = 0
    t0 = time.time()
    with _cpu_math_settings(settings.device), JobProgress(console) as progress:
        for job in plan(data, scenarios, settings, set(by_key)):
            covered += job.all_keys
            skipped += len(job.all_keys) - len(job.todo)
            if not job.todo:
                continue
            progress.start(job)
            results, resumed = train(job, settings, progress.advance)
            new = persist(job, results, settings, data.classes, vers)
            by_key.update((r["key"], r) for r in new)
            ran += len(new)
            progress.finish(resumed)
    mine = [by_key[k] for k in covered]
    header = {
        "dataset": data.name,
        "seeds": settings.seeds,
        "quick": settings.quick,
        "device": settings.device,
        "runs": len(mine),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
        f"{settings.threads or 'auto'}",
        "versions": ", ".join(f"{k} {v}" for k, v in vers.items()),
    }
    rep = report.build(mine, [sc for sc, _ in scenarios], header, compared_to_paper)
    report.draw_plots(rep, settings.out, data.classes)
    text = report.markdown(rep)
    store.write_report(settings.out, text)
    console.print(
        f"{ran} runs done, {skipped} already in {store.results_path(settings.out)} (skipped), "
        f"{time.time() - t0:.1f} s",
        highlight=False,
    )
    return rep
