"""What every scenario shares: groups of models and arms, the metrics common to all arms, the
summary columns, the generic plots, and the comparison with the paper's own figures.

A scenario is one :class:`Scenario` subclass in its own module. It builds, for a data set and a
seed, one :class:`Group`: the models to train together (each with its loss weights) and the *arms*
to report (model + decision rule + the cost matrix it is judged by). Its arms are a table: each
entry names the arm, the model it uses and its decision rule, so a new arm (a calibrated decision,
say) is one entry. Arms of the same seed share their initial weights and shuffling seed, so they
differ only in the loss and the decision rule: a paired design, which the paired tests rely on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..datasets import Dataset, Pool, Split, pool, split
from ..training import ArmResult, ArmSpec, Decision, ModelSpec

__all__ = [
    "ArmDef",
    "ArmRecipe",
    "Group",
    "ModelDef",
    "PaperFigure",
    "Scenario",
    "take",
]


@dataclass
class ModelDef:
    """One model to train: its data and its loss weights (fn (K,) and fp (K, K) or None;
    floats for a binary model)."""

    spec: ModelSpec
    fn: Any
    fp: Any


@dataclass
class ArmDef:
    """One arm of one configuration and seed: what a line of ``results.jsonl`` reports."""

    config: dict
    arm: str
    spec: ArmSpec
    seed: int


@dataclass(frozen=True)
class ArmRecipe:
    """An entry of a scenario's arm table: arm ``name`` reports model ``model`` (a key of the
    configuration's models) with the decision ``decision(costs)``."""

    name: str
    model: str
    decision: Callable[[np.ndarray], Decision]
    description: str = ""


def argmax(costs: np.ndarray) -> Decision:
    return Decision("argmax")


def bayes(costs: np.ndarray) -> Decision:
    return Decision("bayes", costs=costs)


@dataclass
class Group:
    """Models trained together (one batched model) and the arms reported from them."""

    scenario: str
    seeds: list[int]
    sizes: list[int]
    binary: bool
    pool: np.ndarray
    split: str
    models: list[ModelDef] = field(default_factory=list)
    arms: list[ArmDef] = field(default_factory=list)

    def add(
        self,
        config: dict,
        seed: int,
        costs: np.ndarray,
        models: dict[str, ModelDef | int],
        recipes: Sequence[ArmRecipe],
    ) -> None:
        """Add one configuration: ``models`` maps the recipes' model keys to a new
        :class:`ModelDef` or to the index of a model already in the group (shared models)."""
        index = {}
        for key, m in models.items():
            if isinstance(m, ModelDef):
                self.models.append(m)
                index[key] = len(self.models) - 1
            else:
                index[key] = m
        for r in recipes:
            self.arms.append(
                ArmDef(config, r.name, ArmSpec(index[r.model], r.decision(costs), costs), seed)
            )


def _merge(groups: list[Group]) -> Group:
    first = groups[0]
    out = Group(first.scenario, [], first.sizes, first.binary, first.pool, first.split)
    for g in groups:
        offset = len(out.models)
        out.seeds += g.seeds
        out.models += g.models
        out.arms += [
            ArmDef(
                a.config,
                a.arm,
                ArmSpec(a.spec.model + offset, a.spec.decision, a.spec.costs),
                a.seed,
            )
            for a in g.arms
        ]
    return out


def take(rng: np.random.Generator, rows: np.ndarray, n: int) -> np.ndarray:
    """``n`` of ``rows`` at random (sorted), or all of them when there are no more than ``n``."""
    return np.sort(rng.choice(rows, size=n, replace=False)) if n < len(rows) else rows


def spec_of(s: Split, seed: int) -> ModelSpec:
    """The split's own train / validation / test rows and labels, init and shuffle seed ``seed``."""
    return ModelSpec(s.train, s.y[s.train], s.val, s.y[s.val], s.test, s.y[s.test], seed, seed)


@dataclass(frozen=True)
class PaperFigure:
    """One number from the paper and how to compute ours from the summary rows.

    ``ours(rows)`` gets the summary rows by arm name and returns our figure (or None)."""

    what: str
    paper: str
    ours: Callable[[dict[str, dict]], str | None]


# ------------------------------------------------------------------------------- the scenario
class Scenario:
    """One experiment. Subclasses set the class attributes and implement :meth:`build`."""

    name: ClassVar[str]
    title: ClassVar[str]  # in words, for headings
    paper_reference: ClassVar[str] = "not in the paper"
    headline: ClassVar[str]  # the metric reported beside the cost
    headline_higher_is_better: ClassVar[bool] = False
    columns: ClassVar[tuple[str, ...]] = ()  # more metrics for the report's table
    console_columns: ClassVar[tuple[str, ...]] = ()  # ... and for the summary printed on stdout
    labels: ClassVar[dict[str, str]] = {}  # metric -> words
    arms: ClassVar[tuple[ArmRecipe, ...]]
    reference_arm: ClassVar[str] = "rwwce"
    #: Whether seeds may be trained as one group when their pools are the same rows.
    merge_seeds: ClassVar[bool] = True
    #: The paper's own results (MNIST digits, Ho & Wookey 2020) set beside ours, for MNIST and
    #: its stand-in Fashion-MNIST only (:func:`rwwce.experiments.datasets.paper_note`).
    paper_figures: ClassVar[tuple[PaperFigure, ...]] = ()
    min_classes: ClassVar[int] = 2
    #: Split used unless --split says otherwise ("paper" for the paper's scenarios).
    default_split: ClassVar[str] = "paper"

    # -- building
    def check(self, data: Dataset) -> None:
        """Raise ValueError if the scenario cannot run on ``data``."""
        if data.num_classes < self.min_classes:
            raise ValueError(
                f"scenario {self.name!r} needs a multi-class dataset (at least "
                f"{self.min_classes} classes); {data.name!r} has {data.num_classes} classes"
            )

    def applies_to(self, data: Dataset) -> bool:
        """Whether ``--scenario all`` includes this scenario for ``data``."""
        return data.num_classes >= self.min_classes

    def split_for(self, data: Dataset, requested: str | None) -> str:
        if requested is not None:
            return requested
        return self.default_split

    def build(self, data: Dataset, s: Split, seed: int, quick: bool) -> Group:
        raise NotImplementedError

    def groups(
        self, data: Dataset, seeds: list[int], quick: bool, split_mode: str
    ) -> Iterator[Group]:
        """Yield the groups to train, lazily (a large data set's pool is big).

        All seeds of a split share the pool (the same standardised rows), so scenarios whose
        models do not share batches anyway (``merge_seeds``) train all their seeds as one group:
        fewer, larger steps. Seeds whose groups differ in training size go to separate groups.
        """
        p: Pool = pool(data, split_mode)
        pending: list[Group] = []
        for seed in seeds:
            g = self.build(data, split(p, seed), seed, quick)
            if not (self.merge_seeds and len(seeds) > 1):
                yield g
                continue
            if pending and len(g.models[0].spec.train_idx) != len(
                pending[0].models[0].spec.train_idx
            ):
                yield _merge(pending)
                pending = []
            pending.append(g)
        if pending:
            yield _merge(pending)

    def new_group(self, seed: int, sizes: list[int], binary: bool, s: Split) -> Group:
        return Group(self.name, [seed], sizes, binary, s.x, s.mode)

    # -- metrics
    def metrics(self, arm: ArmDef, res: ArmResult, classes: list[str]) -> dict[str, Any]:
        """Test-set metrics of one finished arm: the common ones and :meth:`extra_metrics`, from
        one confusion matrix (:func:`rwwce.metrics.confusion_matrix`) and the library's Real
        World Cost."""
        from rwwce import metrics

        y, pred, costs = res.test_y, res.test_pred, arm.spec.costs
        conf = metrics.confusion_matrix(y, pred, costs.shape[0]).numpy()
        out: dict[str, Any] = {
            "real_world_cost": float(metrics.real_world_cost(y, pred, costs)),
            "error_rate": float(1.0 - np.trace(conf) / max(conf.sum(), 1)),
            "n_test": int(conf.sum()),
            "best_epoch": res.best_epoch,
            "val_cost": float(res.val_costs[res.best_epoch - 1]),
            "val_cost_history": [round(v, 6) for v in res.val_costs],
            "val_recall": res.val_recall,
            "confusion": conf.tolist(),
        }
        out.update(res.decision.fitted)
        out.update(self.extra_metrics(arm, conf, res, classes))
        return out

    def extra_metrics(
        self, arm: ArmDef, conf: np.ndarray, res: ArmResult, classes: list[str]
    ) -> dict[str, Any]:
        return {}

    # -- presentation
    def label(self, metric: str) -> str:
        common = {
            "cost": "Real World Cost per test sample",
            "error_rate": "error rate",
        }
        return self.labels.get(metric, common.get(metric, metric.replace("_", " ")))

    def table_columns(self) -> list[str]:
        return ["cost", self.headline, "error_rate", *self.columns]

    def summary_columns(self) -> list[str]:
        return ["cost", self.headline, "error_rate", *self.console_columns]

    def describe_config(self, config: dict, classes: list[str]) -> str:
        """A configuration in words (titles of plots)."""
        return ", ".join(f"{k} {v}" for k, v in config.items())

    def plots(
        self, out_dir: str, records: list[dict], rows: list[dict], classes: list[str]
    ) -> list[str]:
        """Write this scenario's PNG plots to ``out_dir``; return their file names."""
        from .. import plots

        written = []
        for metric in ("cost", self.headline):
            name = f"{self.name}-{'cost' if metric == 'cost' else metric.replace('_', '-')}.png"
            plots.bar_chart(
                os.path.join(out_dir, name),
                rows,
                metric,
                ylabel=self.label(metric),
                title=f"{self.title}: {self.label(metric)} by arm (mean and 95% interval)",
            )
            written.append(name)
        return written + self.extra_plots(out_dir, records, rows, classes)

    def extra_plots(
        self, out_dir: str, records: list[dict], rows: list[dict], classes: list[str]
    ) -> list[str]:
        return []
