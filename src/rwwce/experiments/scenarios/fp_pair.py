"""``fp-pair``, the paper's experiment A: one costly ordered confusion i -> j.

The paper's notebook: RWWCE with FN = I (weight 1 for every class) and FP zero except
FP[i, j] = 19, scored by a Real World Cost of 1 per mistake and 20 for the targeted confusion
i -> j, i.e. C = ``CostMatrix.from_fn_fp(1, FP)``. Its control is the same network trained with
categorical cross-entropy (RWWCE with FP = 0).

Arms, per ordered pair (all K (K - 1) pairs; 3 with ``--quick``):

* ``ce``: categorical cross-entropy, arg-max (the paper's control);
* ``ce+bayes``: the same CE model, Bayes-optimal decision for C;
* ``bce-softmax``: a variant: RWWCE with FP = 1 - I (BCE on the softmax output), arg-max;
* ``rwwce``: the paper's RWWCE (FP[i, j] = 19, every other FP entry 0), arg-max.

The CE and BCE-softmax models do not depend on the pair: they are trained once per seed and each
of their arms keeps the epoch with the lowest validation cost under its own pair's C.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..datasets import Dataset, Split
from ..training import ArmResult
from .base import ArmDef, ArmRecipe, Group, ModelDef, PaperFigure, Scenario, argmax, bayes, spec_of

__all__ = ["FpPair"]

FP_TARGET = 19.0


def _ratio(rows: dict[str, dict], metric: str, a: str, b: str) -> str | None:
    if a not in rows or b not in rows or not rows[a][metric][0]:
        return None
    return f"{100 * (rows[b][metric][0] / rows[a][metric][0] - 1):+.1f}%"


def _mean(rows: dict[str, dict], arm: str, metric: str) -> str | None:
    return f"{rows[arm][metric][0]:.2f}" if arm in rows else None


def _accuracy(rows: dict[str, dict]) -> str | None:
    return f"{1 - rows['ce']['error_rate'][0]:.3f}" if "ce" in rows else None


def _errors_per_pair(rows: dict[str, dict]) -> str | None:
    """CE's test errors per ordered pair of classes: what a targeted count is, before any
    weighting, when errors spread evenly (K = 10: 90 ordered pairs)."""
    if "ce" not in rows:
        return None
    r = rows["ce"]
    return f"{r['error_rate'][0] * r['n_test'] / 90:.2f}"


class FpPair(Scenario):
    name = "fp-pair"
    title = "One costly confusion (paper, experiment A)"
    paper_reference = (
        "paper (A): targeted confusions 6.67 (control) -> 2.57 (RWWCE); Real World Cost -8.7%"
    )
    headline = "targeted"
    labels = {"targeted": "targeted confusions i -> j (test count)"}
    min_classes = 3
    merge_seeds = False  # one seed's 2 + K(K-1) models already share every batch
    arms = (
        ArmRecipe("ce", "ce", argmax, "categorical cross-entropy (the paper's control)"),
        ArmRecipe("ce+bayes", "ce", bayes, "the CE model, Bayes-optimal decision for C"),
        ArmRecipe("bce-softmax", "bce", argmax, "variant: RWWCE with FP = 1 - I"),
        ArmRecipe("rwwce", "rwwce", argmax, "the paper's RWWCE: FN = 1, FP[i, j] = 19"),
    )
    paper_figures = (
        PaperFigure("test accuracy of the control (ce)", "about 0.96", _accuracy),
        PaperFigure(
            "test errors of ce per ordered pair of classes (errors / 90)",
            "about 7.8 (4% of 17,500 / 90)",
            _errors_per_pair,
        ),
        PaperFigure(
            "targeted confusions, control (ce)", "6.67", lambda r: _mean(r, "ce", "targeted")
        ),
        PaperFigure("targeted confusions, RWWCE", "2.57", lambda r: _mean(r, "rwwce", "targeted")),
        PaperFigure(
            "targeted confusions, RWWCE vs control",
            "-61.5%",
            lambda r: _ratio(r, "targeted", "ce", "rwwce"),
        ),
        PaperFigure(
            "Real World Cost, RWWCE vs control", "-8.7%", lambda r: _ratio(r, "cost", "ce", "rwwce")
        ),
    )

    @staticmethod
    def pairs(k: int, quick: bool) -> list[tuple[int, int]]:
        if not quick:
            return [(i, j) for i in range(k) for j in range(k) if i != j]
        if k == 10:
            return [(3, 5), (4, 9), (7, 1)]
        return [(i, (i + 1) % k) for i in range(min(3, k))]

    @staticmethod
    def weights(k: int, i: int, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fn, FP, C) of pair (i, j): fn = 1, FP zero except FP[i, j] = 19, C = from_fn_fp."""
        from rwwce import CostMatrix

        fn = np.ones(k)
        fp = np.zeros((k, k))
        fp[i, j] = FP_TARGET
        return fn, fp, CostMatrix.from_fn_fp(fn, fp).matrix.numpy()

    def build(self, data: Dataset, s: Split, seed: int, quick: bool) -> Group:
        k = data.num_classes
        base = spec_of(s, seed)
        g = self.new_group(seed, [s.x.shape[1], 50, 20, k], False, s)
        ones = np.ones(k)
        g.models += [ModelDef(base, ones, None), ModelDef(base, ones, 1.0 - np.eye(k))]
        for i, j in self.pairs(k, quick):
            fn, fp, costs = self.weights(k, i, j)
            g.add(
                {"pair": [i, j]},
                seed,
                costs,
                {"ce": 0, "bce": 1, "rwwce": ModelDef(base, fn, fp)},
                self.arms,
            )
        return g

    def extra_metrics(
        self, arm: ArmDef, conf: np.ndarray, res: ArmResult, classes: list[str]
    ) -> dict[str, Any]:
        i, j = arm.config["pair"]
        return {"targeted": int(conf[i, j])}

    def describe_config(self, config: dict, classes: list[str]) -> str:
        i, j = config["pair"]
        return f"{classes[i]} -> {classes[j]}"

    def extra_plots(
        self, out_dir: str, records: list[dict], rows: list[dict], classes: list[str]
    ) -> list[str]:
        from .. import plots

        recs = plots.most_different_records(records, self.headline)
        if not recs:
            return []
        i, j = recs[0]["config"]["pair"]
        name = f"{self.name}-confusion.png"
        plots.confusion_panels(
            os.path.join(out_dir, name),
            recs,
            classes,
            highlight=(i, j),
            title=f"Test confusion matrices where the arms differ most: targeted confusion "
            f"{classes[i]} -> {classes[j]} (boxed), seed {recs[0]['seed']}",
        )
        return [name]
