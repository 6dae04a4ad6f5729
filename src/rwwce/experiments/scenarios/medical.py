"""``medical``, the paper's experiment B: a rare, expensive positive class.

One class is positive at 1% prevalence (positives downsampled in train, validation and test), the
rest negative; a missed positive costs c_fn = 2000, a false alarm c_fp = 100. Every class in turn
(2 with ``--quick``); ``breast-cancer`` runs it on its own label (malignant positive) at its
natural prevalence.

Arms: ``bce@0.5``; ``bce@f1`` (threshold with the best F1 on the validation split); ``bce@bayes``
(threshold c_fp / (c_fp + c_fn)); ``wbce`` (pos_weight = c_fn / c_fp); ``rwwce`` (binary RWWCE
with fn, fp proportional to the costs, scaled to sum to 2: BCE's scale).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..datasets import Dataset, Split
from ..training import ArmResult, Decision
from .base import ArmDef, ArmRecipe, Group, ModelDef, PaperFigure, Scenario, spec_of, take

__all__ = ["Medical"]

C_FN, C_FP = 2000.0, 100.0
PREVALENCE = 0.01
BAYES_THRESHOLD = C_FP / (C_FP + C_FN)
COSTS = np.array([[0.0, C_FP], [C_FN, 0.0]])
#: Thresholds of the cost-versus-threshold curves: steps of 0.02 and the Bayes threshold itself, so
#: the ``bce@bayes`` curve passes through the cost its row reports.
THRESHOLD_GRID = np.union1d(np.linspace(0.0, 1.0, 51), [BAYES_THRESHOLD])


def _mean(rows: dict[str, dict], arm: str, metric: str) -> str | None:
    return f"{rows[arm][metric][0]:.2f}" if arm in rows else None


def _change(rows: dict[str, dict], metric: str) -> str | None:
    """RWWCE's relative change of ``metric`` against BCE at 0.5."""
    if "bce@0.5" not in rows or "rwwce" not in rows or not rows["bce@0.5"][metric][0]:
        return None
    return f"{100 * (rows['rwwce'][metric][0] / rows['bce@0.5'][metric][0] - 1):+.1f}%"


class Medical(Scenario):
    name = "medical"
    title = "Rare, expensive positives (paper, experiment B)"
    paper_reference = "paper (B): Real World Cost 5.78 (BCE) -> 2.82 (RWWCE); recall 0.72 -> 0.90"
    headline = "recall"
    headline_higher_is_better = True
    columns = ("precision", "f1", "real_world_benefit")
    console_columns = ("f1",)
    labels = {
        "recall": "recall of the positive class",
        "real_world_benefit": "Real World Benefit",
    }
    arms = (
        ArmRecipe("bce@0.5", "bce", lambda c: Decision("threshold", 0.5), "BCE, threshold 0.5"),
        ArmRecipe("bce@f1", "bce", lambda c: Decision("f1"), "BCE, validation-F1 threshold"),
        ArmRecipe(
            "bce@bayes",
            "bce",
            lambda c: Decision("threshold", BAYES_THRESHOLD),
            "BCE, Bayes threshold c_fp / (c_fp + c_fn)",
        ),
        ArmRecipe("wbce", "wbce", lambda c: Decision("threshold", 0.5), "pos_weight c_fn / c_fp"),
        ArmRecipe("rwwce", "rwwce", lambda c: Decision("threshold", 0.5), "binary RWWCE"),
    )
    paper_figures = (
        PaperFigure(
            "Real World Cost, BCE (bce@0.5)", "5.78", lambda r: _mean(r, "bce@0.5", "cost")
        ),
        PaperFigure("Real World Cost, RWWCE", "2.82", lambda r: _mean(r, "rwwce", "cost")),
        PaperFigure(
            "Real World Cost, RWWCE vs BCE (bce@0.5)", "-51.2%", lambda r: _change(r, "cost")
        ),
        PaperFigure("recall, BCE (bce@0.5)", "0.72", lambda r: _mean(r, "bce@0.5", "recall")),
        PaperFigure("recall, RWWCE", "0.90", lambda r: _mean(r, "rwwce", "recall")),
        PaperFigure("recall, RWWCE vs BCE (bce@0.5)", "+25.0%", lambda r: _change(r, "recall")),
    )

    def applies_to(self, data: Dataset) -> bool:
        return True

    @staticmethod
    def positives(k: int, quick: bool) -> list[int]:
        if not quick:
            return list(range(k))
        return [3, 8] if k == 10 else list(range(min(2, k)))

    def _specs(self, data: Dataset, s: Split, seed: int, quick: bool):
        if data.num_classes == 2:
            # The data's own binary label at its natural prevalence (breast-cancer: malignant = 1).
            return [({"positive": data.classes[1], "prevalence": "natural"}, spec_of(s, seed))]
        positives = self.positives(data.num_classes, quick)
        ytr = s.y[s.train]
        # Same number of training rows for every positive class (one Adam step count per group):
        # the negatives are subsampled to the smallest class's count of negatives.
        n_neg = min(int((ytr != c).sum()) for c in positives)
        n_pos = max(1, round(n_neg * PREVALENCE / (1 - PREVALENCE)))
        specs = []
        for c in positives:
            rng = np.random.default_rng([seed, c, 1])
            parts = []
            for rows, n_neg_part in ((s.train, n_neg), (s.val, None), (s.test, None)):
                y = s.y[rows]
                neg = rows[y != c]
                neg = take(rng, neg, n_neg_part) if n_neg_part else neg
                k_pos = (
                    n_pos if n_neg_part else max(1, round(len(neg) * PREVALENCE / (1 - PREVALENCE)))
                )
                idx = np.concatenate([neg, take(rng, rows[y == c], k_pos)])
                parts += [idx, (s.y[idx] == c).astype(np.int64)]
            from ..training import ModelSpec

            specs.append(
                (
                    {"positive": data.classes[c], "prevalence": PREVALENCE},
                    ModelSpec(*parts, seed, seed),
                )
            )
        return specs

    def build(self, data: Dataset, s: Split, seed: int, quick: bool) -> Group:
        g = self.new_group(seed, [s.x.shape[1], 10, 1], True, s)
        total = C_FN + C_FP
        for cfg, spec in self._specs(data, s, seed, quick):
            models = {
                "bce": ModelDef(spec, 1.0, 1.0),
                "wbce": ModelDef(spec, C_FN / C_FP, 1.0),
                "rwwce": ModelDef(spec, 2 * C_FN / total, 2 * C_FP / total),
            }
            g.add(cfg, seed, COSTS, models, self.arms)
        return g

    def extra_metrics(
        self, arm: ArmDef, conf: np.ndarray, res: ArmResult, classes: list[str]
    ) -> dict[str, Any]:
        from rwwce import metrics

        tn, fp, fn, tp = (int(v) for v in conf.ravel())
        y, p = res.test_y, res.test_probs
        return {
            "tp": tp,
            "fn": fn,
            "tn": tn,
            "fp": fp,
            "recall": tp / (tp + fn) if tp + fn else float("nan"),
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "real_world_benefit": float(metrics.real_world_benefit(y, res.test_pred, COSTS)),
            "cost_vs_threshold": [
                float(metrics.real_world_cost(y, (p > t).astype(np.int64), COSTS))
                for t in THRESHOLD_GRID
            ],
        }

    def describe_config(self, config: dict, classes: list[str]) -> str:
        return f"positive class {config['positive']}, prevalence {config['prevalence']}"

    def extra_plots(
        self, out_dir: str, records: list[dict], rows: list[dict], classes: list[str]
    ) -> list[str]:
        """The test cost of every arm at every threshold, each curve from that arm's own kept
        epochs (the arms of one model keep different epochs), with the arm's operating point:
        its threshold (mean over runs for ``bce@f1``) and the cost its row reports."""
        from .. import plots

        curves, points = {}, {}
        by_arm = {r["arm"]: r for r in rows}
        for arm in (a.name for a in self.arms):
            mine = [r["metrics"] for r in records if r["arm"] == arm]
            if not mine or arm not in by_arm:
                continue
            curves[arm] = np.mean([m["cost_vs_threshold"] for m in mine], 0)
            points[arm] = (float(np.mean([m["threshold"] for m in mine])), by_arm[arm]["cost"][0])
        if not curves:
            return []
        name = f"{self.name}-cost-vs-threshold.png"
        plots.threshold_curves(
            os.path.join(out_dir, name),
            THRESHOLD_GRID,
            curves,
            marks={"0.5": 0.5, f"Bayes threshold {BAYES_THRESHOLD:.3f}": BAYES_THRESHOLD},
            points=points,
            ylabel="test Real World Cost per sample",
            title=f"{self.title}: test cost of each arm's models at every threshold, dots at the "
            f"arm's own threshold (mean over {len(records) // max(len(rows), 1)} runs)",
        )
        return [name]
