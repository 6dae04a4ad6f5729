"""The paper's experiments (Ho & Wookey 2020) as batched, resumable sweeps.

A scenario turns (dataset, seed) into one *group*: the models to train together, their loss
weights, and the *arms* (model + decision rule + cost matrix) to report. Arms of the same seed
share their initial weights (drawn from the seed) and their shuffling seed, so arms differ only in
the loss and the decision rule: a paired design, which the paired tests in the report rely on.

* ``fp-pair`` (paper, experiment A): FN weight 1 for every class; the FP matrix of the paper's
  control (1 - I, i.e. BCE on the softmax output) with FP[i, j] = 19 for one ordered pair.
  Cost matrix C = CostMatrix.from_fn_fp(1, FP): 2 off the diagonal, 20 for i -> j.
  Arms: ``ce`` (arg-max), ``ce+bayes`` (the CE model, Bayes-optimal decision for C),
  ``bce-control`` (RWWCE with FP = 1 - I), ``rwwce`` (FP with the 19 entry).
  The CE and control models do not depend on the pair, so they are trained once per seed;
  each of their arms keeps the epoch with the lowest validation cost under its pair's C.
* ``medical`` (paper, experiment B): class c positive at 1% prevalence (positives downsampled in
  train, validation and test), the rest negative; c_fn = 2000, c_fp = 100.
  Arms: ``bce@0.5``, ``bce@f1`` (threshold with the best validation F1), ``bce@bayes``
  (threshold c_fp / (c_fp + c_fn)), ``wbce`` (pos_weight = c_fn / c_fp = 20), ``rwwce``
  (binary RWWCE with fn, fp proportional to the costs, scaled to sum to 2: 1.905, 0.095).
  ``breast-cancer`` runs it on its own label (malignant positive, natural prevalence).
* ``imbalance``: class r keeps 5% of its training and validation rows (test untouched).
  C = from_fn_fp(fn, 1 - I) with fn = 1 except fn[r] = 20 (missing the rare class is expensive).
  Arms: ``ce``, ``ce-balanced``, ``ce-effective`` (effective-number weights, beta 0.999),
  ``rwwce`` (fn, FP = 1 - I: the loss is C's own weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .datasets import Dataset, Split, split
from .training import ArmResult, ArmSpec, Decision, ModelSpec

__all__ = ["SCENARIOS", "PAPER", "Group", "build_groups", "arm_metrics"]

SCENARIOS = ("fp-pair", "medical", "imbalance")
FP_TARGET = 19.0
C_FN, C_FP = 2000.0, 100.0
PREVALENCE = 0.01
RARE_KEEP = 0.05
RARE_FN = 20.0

# The paper's own numbers, printed beside ours for orientation (Fashion-MNIST, Ho & Wookey 2020).
PAPER = {
    "fp-pair": "paper (A): targeted FPs 6.67 (control) -> 2.57 (RWWCE); Real World Cost -8.7%",
    "medical": "paper (B): Real World Cost 5.78 (BCE) -> 2.82 (RWWCE); recall 0.72 -> 0.90",
    "imbalance": "not in the paper",
}


@dataclass
class ModelDef:
    spec: ModelSpec
    fn: Any  # (K,) array, or a float for binary
    fp: Any  # (K, K) array or None, or a float for binary


@dataclass
class ArmDef:
    config: dict
    arm: str
    spec: ArmSpec
    seed: int = -1  # filled in by build_groups


@dataclass
class Group:
    scenario: str
    seed: int
    sizes: list[int]
    binary: bool
    pool: np.ndarray
    models: list[ModelDef] = field(default_factory=list)
    arms: list[ArmDef] = field(default_factory=list)


def _quick_pairs(k: int) -> list[tuple[int, int]]:
    if k == 10:
        return [(3, 5), (4, 9), (7, 1)]
    return [(i, (i + 1) % k) for i in range(min(3, k))]


def _quick_classes(k: int) -> list[int]:
    return [3, 8] if k == 10 else list(range(min(2, k)))


def _take(rng: np.random.Generator, rows: np.ndarray, n: int) -> np.ndarray:
    return np.sort(rng.choice(rows, size=n, replace=False)) if n < len(rows) else rows


# ------------------------------------------------------------------------------------ fp-pair
def _fp_pair(data: Dataset, s: Split, seed: int, quick: bool) -> Group:
    from rwwce import CostMatrix

    k = data.num_classes
    if k < 3:
        raise ValueError(
            f"scenario 'fp-pair' needs a multi-class dataset; {data.name!r} has {k} classes"
        )
    pairs = _quick_pairs(k) if quick else [(i, j) for i in range(k) for j in range(k) if i != j]
    base = ModelSpec(s.train, s.y[s.train], s.val, s.y[s.val], s.test, s.y[s.test], seed, seed)
    g = Group("fp-pair", seed, [s.x.shape[1], 50, 20, k], False, s.x)
    ones = np.ones(k)
    control = 1.0 - np.eye(k)
    g.models += [ModelDef(base, ones, None), ModelDef(base, ones, control)]
    for i, j in pairs:
        fp = control.copy()
        fp[i, j] = FP_TARGET
        costs = CostMatrix.from_fn_fp(ones, fp).matrix.numpy()
        g.models.append(ModelDef(base, ones, fp))
        cfg = {"pair": [i, j]}
        g.arms += [
            ArmDef(cfg, "ce", ArmSpec(0, Decision("argmax"), costs)),
            ArmDef(cfg, "ce+bayes", ArmSpec(0, Decision("bayes", costs=costs), costs)),
            ArmDef(cfg, "bce-control", ArmSpec(1, Decision("argmax"), costs)),
            ArmDef(cfg, "rwwce", ArmSpec(len(g.models) - 1, Decision("argmax"), costs)),
        ]
    return g


# ------------------------------------------------------------------------------------ medical
def _medical(data: Dataset, s: Split, seed: int, quick: bool) -> Group:
    costs = np.array([[0.0, C_FP], [C_FN, 0.0]])
    g = Group("medical", seed, [s.x.shape[1], 10, 1], True, s.x)
    if data.num_classes == 2:
        # The data's own binary label at its natural prevalence (breast-cancer: malignant = 1).
        cfg = {"positive": data.classes[1], "prevalence": "natural"}
        specs = [
            (
                cfg,
                ModelSpec(
                    s.train, s.y[s.train], s.val, s.y[s.val], s.test, s.y[s.test], seed, seed
                ),
            )
        ]
    else:
        positives = _quick_classes(data.num_classes) if quick else list(range(data.num_classes))
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
                neg = _take(rng, neg, n_neg_part) if n_neg_part else neg
                k_pos = (
                    n_pos if n_neg_part else max(1, round(len(neg) * PREVALENCE / (1 - PREVALENCE)))
                )
                pos = _take(rng, rows[y == c], k_pos)
                idx = np.concatenate([neg, pos])
                parts += [idx, (s.y[idx] == c).astype(np.int64)]
            specs.append(
                (
                    {"positive": data.classes[c], "prevalence": PREVALENCE},
                    ModelSpec(*parts, seed, seed),
                )
            )
    total = C_FN + C_FP
    for cfg, spec in specs:
        m = len(g.models)
        g.models += [
            ModelDef(spec, 1.0, 1.0),  # BCE
            ModelDef(spec, C_FN / C_FP, 1.0),  # pos_weight = c_fn / c_fp
            ModelDef(spec, 2 * C_FN / total, 2 * C_FP / total),  # RWWCE, weights prop. to costs
        ]
        g.arms += [
            ArmDef(cfg, "bce@0.5", ArmSpec(m, Decision("threshold", 0.5), costs)),
            ArmDef(cfg, "bce@f1", ArmSpec(m, Decision("f1"), costs)),
            ArmDef(cfg, "bce@bayes", ArmSpec(m, Decision("threshold", C_FP / total), costs)),
            ArmDef(cfg, "wbce", ArmSpec(m + 1, Decision("threshold", 0.5), costs)),
            ArmDef(cfg, "rwwce", ArmSpec(m + 2, Decision("threshold", 0.5), costs)),
        ]
    return g


# ---------------------------------------------------------------------------------- imbalance
def _imbalance(data: Dataset, s: Split, seed: int, quick: bool) -> Group:
    import rwwce
    from rwwce import CostMatrix

    k = data.num_classes
    rares = _quick_classes(k)[:1] if quick else list(range(k))
    g = Group(
        "imbalance",
        seed,
        [s.x.shape[1], 50, 20, k] if k > 2 else [s.x.shape[1], 50, 20, 2],
        False,
        s.x,
    )
    ytr = s.y[s.train]
    kept = {r: max(2, round(RARE_KEEP * int((ytr == r).sum()))) for r in rares}
    n = min(int((ytr != r).sum()) + kept[r] for r in rares)
    control = 1.0 - np.eye(k)
    for r in rares:
        rng = np.random.default_rng([seed, r, 2])
        tr_rare = _take(rng, s.train[ytr == r], kept[r])
        tr = np.sort(np.concatenate([_take(rng, s.train[ytr != r], n - kept[r]), tr_rare]))
        yva = s.y[s.val]
        va = np.sort(
            np.concatenate(
                [
                    s.val[yva != r],
                    _take(rng, s.val[yva == r], max(1, round(RARE_KEEP * (yva == r).sum()))),
                ]
            )
        )
        spec = ModelSpec(tr, s.y[tr], va, s.y[va], s.test, s.y[s.test], seed, seed)
        counts = np.bincount(s.y[tr], minlength=k)
        fn_rw = np.ones(k)
        fn_rw[r] = RARE_FN
        costs = CostMatrix.from_fn_fp(fn_rw, control).matrix.numpy()
        m = len(g.models)
        g.models += [
            ModelDef(spec, np.ones(k), None),
            ModelDef(
                spec, rwwce.class_weights(counts.astype(np.float64), "balanced").numpy(), None
            ),
            ModelDef(
                spec,
                rwwce.class_weights(counts.astype(np.float64), "effective_number").numpy(),
                None,
            ),
            ModelDef(spec, fn_rw, control),
        ]
        cfg = {"rare": data.classes[r], "keep": RARE_KEEP}
        for off, name in enumerate(["ce", "ce-balanced", "ce-effective", "rwwce"]):
            g.arms.append(ArmDef(cfg, name, ArmSpec(m + off, Decision("argmax"), costs)))
    return g


_BUILDERS = {"fp-pair": _fp_pair, "medical": _medical, "imbalance": _imbalance}


def _merge(groups: list[Group]) -> Group:
    out = Group(
        groups[0].scenario, groups[0].seed, groups[0].sizes, groups[0].binary, groups[0].pool
    )
    for g in groups:
        offset = len(out.models)
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


def build_groups(data: Dataset, scenario: str, seeds: list[int], quick: bool):
    """Yield the groups to train: one per seed (lazily: a split of a large data set is big).

    Data with its own test split (IDX) standardise on the same rows whatever the seed, so the
    pool is shared; there the scenarios whose models do not share batches anyway (``medical``,
    ``imbalance``) train all seeds as one group: fewer, larger steps.
    """
    merge = data.x_test is not None and scenario != "fp-pair" and len(seeds) > 1
    pending: list[Group] = []
    for seed in seeds:
        g = _BUILDERS[scenario](data, split(data, seed), seed, quick)
        for a in g.arms:
            a.seed = seed
        if not merge:
            yield g
            continue
        if pending and len(g.models[0].spec.train_idx) != len(pending[0].models[0].spec.train_idx):
            yield _merge(pending)
            pending = []
        if pending:
            g.pool = pending[0].pool  # identical rows; keep one copy
        pending.append(g)
    if pending:
        yield _merge(pending)


# ------------------------------------------------------------------------------------ metrics
def arm_metrics(scenario: str, arm: ArmDef, res: ArmResult, classes: list[str]) -> dict:
    """Test-set metrics of one finished arm (Real World Cost from ``rwwce.metrics``)."""
    from rwwce import metrics

    y, pred, costs = res.test_y, res.test_pred, arm.spec.costs
    k = costs.shape[0]
    conf = metrics.confusion_matrix(y, pred, k).numpy()
    out: dict[str, Any] = {
        "real_world_cost": float(metrics.real_world_cost(y, pred, costs)),
        "error_rate": float((y != pred).mean()),
        "n_test": int(len(y)),
        "best_epoch": res.best_epoch,
        "val_cost": float(min(res.val_costs)),
        "val_cost_history": [round(v, 6) for v in res.val_costs],
        "val_recall": res.val_recall,
        "confusion": conf.tolist(),
    }
    if scenario == "fp-pair":
        i, j = arm.config["pair"]
        out["targeted"] = int(conf[i, j])
    elif scenario == "medical":
        tn, fp, fn, tp = (int(v) for v in conf.ravel())
        rec = tp / (tp + fn) if tp + fn else float("nan")
        prec = tp / (tp + fp) if tp + fp else 0.0
        out.update(
            tp=tp,
            fn=fn,
            tn=tn,
            fp=fp,
            recall=rec,
            precision=prec,
            f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            real_world_benefit=float(metrics.real_world_benefit(y, pred, costs)),
            threshold=res.decision.threshold,
        )
        grid = np.linspace(0.0, 1.0, 51)
        p = res.test_probs
        out["cost_vs_threshold"] = [
            float(((p > t) & (y == 0)).sum() * C_FP + ((p <= t) & (y == 1)).sum() * C_FN) / len(y)
            for t in grid
        ]
    elif scenario == "imbalance":
        rows = conf.sum(1)
        recall = [float(conf[c, c] / rows[c]) if rows[c] else float("nan") for c in range(k)]
        cols = conf.sum(0)
        f1s = [2 * conf[c, c] / (rows[c] + cols[c]) if rows[c] + cols[c] else 0.0 for c in range(k)]
        rare = classes.index(arm.config["rare"])
        out.update(recall=recall, rare_recall=recall[rare], macro_f1=float(np.mean(f1s)))
    return out
