"""``imbalance`` (not in the paper): one class made rare, and missing it is expensive.

Class r keeps 5% of its training and validation rows (the test set is untouched).
C = ``CostMatrix.from_fn_fp(fn, 1 - I)`` with fn = 1 except fn[r] = 20. Every class in turn (1 with
``--quick``). Arms: ``ce``, ``ce-balanced`` (``class_weights(..., "balanced")``), ``ce-effective``
(``"effective_number"``, beta 0.999), ``rwwce`` (fn, FP = 1 - I: C's own weights).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..datasets import Dataset, Split
from ..training import ArmResult, ModelSpec
from .base import ArmDef, ArmRecipe, Group, ModelDef, Scenario, argmax, take

__all__ = ["Imbalance"]

RARE_KEEP = 0.05
RARE_FN = 20.0


class Imbalance(Scenario):
    name = "imbalance"
    title = "One rare class, expensive to miss"
    headline = "rare_recall"
    headline_higher_is_better = True
    columns = ("macro_f1",)
    console_columns = ("macro_f1",)
    labels = {"rare_recall": "recall of the rare class", "macro_f1": "macro-F1"}
    arms = (
        ArmRecipe("ce", "ce", argmax, "categorical cross-entropy"),
        ArmRecipe("ce-balanced", "balanced", argmax, "CE, balanced class weights"),
        ArmRecipe("ce-effective", "effective", argmax, "CE, effective-number weights"),
        ArmRecipe("rwwce", "rwwce", argmax, "RWWCE with C's own weights"),
    )

    def applies_to(self, data: Dataset) -> bool:
        return True

    def split_for(self, data: Dataset, requested: str | None) -> str:
        # Not the paper's experiment: the data's own split where it has one.
        if requested is not None:
            return requested
        return "official" if data.x_test is not None else "paper"

    @staticmethod
    def rare_classes(k: int, quick: bool) -> list[int]:
        if not quick:
            return list(range(k))
        return [3] if k == 10 else [0]

    def build(self, data: Dataset, s: Split, seed: int, quick: bool) -> Group:
        import rwwce
        from rwwce import CostMatrix

        k = data.num_classes
        rares = self.rare_classes(k, quick)
        g = self.new_group(seed, [s.x.shape[1], 50, 20, k], False, s)
        ytr = s.y[s.train]
        kept = {r: max(2, round(RARE_KEEP * int((ytr == r).sum()))) for r in rares}
        n = min(int((ytr != r).sum()) + kept[r] for r in rares)
        control = 1.0 - np.eye(k)
        for r in rares:
            rng = np.random.default_rng([seed, r, 2])
            tr_rare = take(rng, s.train[ytr == r], kept[r])
            tr = np.sort(np.concatenate([take(rng, s.train[ytr != r], n - kept[r]), tr_rare]))
            yva = s.y[s.val]
            va_rare = take(rng, s.val[yva == r], max(1, round(RARE_KEEP * (yva == r).sum())))
            va = np.sort(np.concatenate([s.val[yva != r], va_rare]))
            spec = ModelSpec(tr, s.y[tr], va, s.y[va], s.test, s.y[s.test], seed, seed)
            counts = np.bincount(s.y[tr], minlength=k).astype(np.float64)
            fn_rw = np.ones(k)
            fn_rw[r] = RARE_FN
            costs = CostMatrix.from_fn_fp(fn_rw, control).matrix.numpy()
            models = {
                "ce": ModelDef(spec, np.ones(k), None),
                "balanced": ModelDef(spec, rwwce.class_weights(counts, "balanced").numpy(), None),
                "effective": ModelDef(
                    spec, rwwce.class_weights(counts, "effective_number").numpy(), None
                ),
                "rwwce": ModelDef(spec, fn_rw, control),
            }
            g.add({"rare": data.classes[r], "keep": RARE_KEEP}, seed, costs, models, self.arms)
        return g

    def extra_metrics(
        self, arm: ArmDef, conf: np.ndarray, res: ArmResult, classes: list[str]
    ) -> dict[str, Any]:
        rows, cols = conf.sum(1), conf.sum(0)
        k = len(rows)
        recall = [float(conf[c, c] / rows[c]) if rows[c] else float("nan") for c in range(k)]
        f1s = [2 * conf[c, c] / (rows[c] + cols[c]) if rows[c] + cols[c] else 0.0 for c in range(k)]
        rare = classes.index(arm.config["rare"])
        return {"recall": recall, "rare_recall": recall[rare], "macro_f1": float(np.mean(f1s))}

    def describe_config(self, config: dict, classes: list[str]) -> str:
        return f"rare class {config['rare']} ({100 * config['keep']:g}% kept)"

    def extra_plots(
        self, out_dir: str, records: list[dict], rows: list[dict], classes: list[str]
    ) -> list[str]:
        from .. import plots

        recs = plots.most_different_records(records, self.headline)
        if not recs:
            return []
        r = classes.index(recs[0]["config"]["rare"])
        name = f"{self.name}-confusion.png"
        plots.confusion_panels(
            os.path.join(out_dir, name),
            recs,
            classes,
            highlight_row=r,
            title=f"Test confusion matrices where the arms differ most: rare class "
            f"{classes[r]} (row boxed), seed {recs[0]['seed']}",
        )
        return [name]
