"""What the user asks of an experiment (:class:`Settings`) and the one set of its defaults.

``rwwce experiment`` (:mod:`rwwce.cli`) reads its options' defaults and choices from here, and a
:class:`Settings` made in Python gets the same ones: a field left out means what the option left
out means. The constants of the paper's set-up (batch size, epochs, the smallest training budget)
live here too, so that the runner, the docs and the command line quote one value.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rwwce._validate import check_choice

__all__ = [
    "ALL",
    "BATCH_SIZE",
    "DEVICES",
    "EPOCH_SELECTIONS",
    "MIN_STEPS",
    "PAPER_EPOCHS",
    "QUICK_SEEDS",
    "SEEDS",
    "SPLITS",
    "EpochSelection",
    "Settings",
    "SplitMode",
    "default_out",
    "defaults",
]

#: The paper's batch size (Adam, learning rate 1e-3).
BATCH_SIZE = 100
#: The paper's number of epochs.
PAPER_EPOCHS = 10
#: Fewest Adam steps a model gets by default: the paper's 10 epochs are ~4,700 steps on
#: Fashion-MNIST but ~130 on scikit-learn's digits, too few for the models to converge.
MIN_STEPS = 1000
#: Seeds (independent training runs per arm) by default, and with ``--quick``.
SEEDS = 5
QUICK_SEEDS = 3
#: ``--scenario all``: every scenario that applies to the data.
ALL = "all"

SplitMode = Literal["paper", "official"]
#: ``paper``: every row pooled, 25% drawn for test (the paper's notebook); ``official``: an IDX
#: directory's own train / t10k files.
SPLITS: tuple[SplitMode, ...] = ("paper", "official")

EpochSelection = Literal["best-val", "last"]
#: Which epoch of its training an arm reports: ``best-val`` (the lowest validation Real World Cost
#: under the arm's own cost matrix and decision) or ``last`` (the final epoch, as the paper did).
EPOCH_SELECTIONS: tuple[EpochSelection, ...] = ("best-val", "last")

DEVICES = ("cpu", "cuda")


def default_out(dataset: str, scenario: str, quick: bool) -> str:
    """``runs/<dataset folder's name>-<scenario>[-quick]``: the output folder by default."""
    base = os.path.basename(os.path.normpath(dataset)) or "data"
    return os.path.join("runs", f"{base}-{scenario}" + ("-quick" if quick else ""))


@dataclass
class Settings:
    """What the user asked for: the ``rwwce experiment`` options, one field each.

    ``None`` in ``seeds`` and ``out`` is resolved on construction (:data:`SEEDS`, or
    :data:`QUICK_SEEDS` with ``quick``; :func:`default_out`); ``None`` in ``epochs`` is the
    default budget (:func:`rwwce.experiments.runner.budget`), in ``split`` each scenario's default
    and in ``threads`` the runner's choice. Numbers below 1, a device, split or epoch selection
    that is not one of the choices, and ``device="cuda"`` without CUDA raise ValueError naming the
    option.
    """

    dataset: str = "digits"
    scenario: str = ALL
    seeds: int | None = None
    quick: bool = False
    epochs: int | None = None
    split: SplitMode | None = None
    device: str = "cpu"
    out: str | None = None
    threads: int | None = None
    epoch_selection: EpochSelection = "best-val"

    def __post_init__(self) -> None:
        for name in ("seeds", "epochs", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be at least 1, got {value}")
        check_choice("--device", self.device, DEVICES)
        if self.split is not None:
            check_choice("--split", self.split, SPLITS)
        check_choice("--epoch-selection", self.epoch_selection, EPOCH_SELECTIONS)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                "--device cuda was requested but CUDA is not available on this machine"
            )
        if self.seeds is None:
            self.seeds = QUICK_SEEDS if self.quick else SEEDS
        if self.out is None:
            self.out = default_out(self.dataset, self.scenario, self.quick)


def defaults() -> dict[str, Any]:
    """Each field of :class:`Settings` and its default (before resolution: ``None`` stays)."""
    return {f.name: f.default for f in dataclasses.fields(Settings)}
