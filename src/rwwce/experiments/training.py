"""Train many small models at once, with early stopping on the validation Real World Cost.

A *group* is a set of independent models that share one data pool (a standardised feature matrix)
and the same number of training samples. Each model has its own training/validation index sets
and labels, its own loss weights, its own initialisation seed and its own shuffling seed. They are
stacked into one :class:`~rwwce.experiments.models.BatchedMLP` and trained together with one Adam
over the stacked parameters; because each model's loss is its own per-sample mean and Adam is
element-wise, model g follows exactly the trajectory it would follow alone (see
``tests/test_experiments.py::test_batched_training_equals_one_at_a_time``).

An *arm* is a trained model plus a decision rule (arg-max, Bayes-optimal for a cost matrix, a
fixed threshold, or the F1-best threshold on the validation split) and the cost matrix it is judged
by. Several arms may share a model (e.g. BCE @ 0.5, BCE @ the F1 threshold and BCE @ the Bayes
threshold); each arm keeps its own best epoch: the one with the lowest validation cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .models import BatchedMLP

__all__ = [
    "ArmSpec",
    "ArmResult",
    "Decision",
    "ModelSpec",
    "binary_loss",
    "confusion",
    "cost_of",
    "multiclass_loss",
    "plain_cross_entropy_loss",
    "stacked_rwwce",
    "train_group",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class Decision:
    """How probabilities become a class: ``argmax``, ``bayes`` (argmin_j sum_i p_i C[i, j]),
    ``threshold`` (binary: positive when p > threshold) or ``f1`` (binary: the threshold that
    maximises F1 on the validation split, re-chosen at every epoch)."""

    kind: Literal["argmax", "bayes", "threshold", "f1"] = "argmax"
    threshold: float = 0.5
    costs: np.ndarray | None = None

    def fit(self, probs: np.ndarray, y: np.ndarray) -> Decision:
        if self.kind != "f1":
            return self
        return replace(self, threshold=f1_best_threshold(probs, y))

    def predict(self, probs: np.ndarray) -> np.ndarray:
        if self.kind == "argmax":
            return probs.argmax(-1)
        if self.kind == "bayes":
            from rwwce import metrics

            return np.asarray(metrics.bayes_decision(probs, self.costs)).astype(np.int64)
        return (probs > self.threshold).astype(np.int64)


def f1_best_threshold(probs: np.ndarray, y: np.ndarray) -> float:
    """The threshold t (rule: positive when p > t) with the highest F1 on (probs, y).

    Ties go to the highest threshold. With no positives in ``y``, 0.5.
    """
    n_pos = int(y.sum())
    if n_pos == 0:
        return 0.5
    order = np.argsort(-probs, kind="stable")
    p_sorted = probs[order]
    tp = np.cumsum(y[order])
    k = np.arange(1, len(y) + 1)
    # Only cut between distinct probabilities: the last index of each run of equal values.
    last = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    f1 = np.where(last, 2 * tp / (k + n_pos), -1.0)
    i = int(np.argmax(f1))
    lower = p_sorted[i + 1] if i + 1 < len(p_sorted) else 0.0
    return (
        float((p_sorted[i] + lower) / 2)
        if lower < p_sorted[i]
        else float(np.nextafter(p_sorted[i], -1))
    )


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = truth (a fast numpy twin of ``rwwce.metrics.confusion_matrix``)."""
    idx = y_true.astype(np.int64) * num_classes + y_pred.astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def cost_of(conf: np.ndarray, costs: np.ndarray) -> float:
    """Real World Cost per sample from a confusion matrix: sum C * counts / n."""
    n = conf.sum()
    return float((conf * costs).sum() / max(n, 1))


# --------------------------------------------------------------------------------------- losses
def plain_cross_entropy_loss(fn: torch.Tensor | None = None) -> LossFn:
    """Per-model mean of ``fn[g, t] * (-log p_t)`` with plain PyTorch (for tests and baselines)."""

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g, b, k = logits.shape
        nll = F.cross_entropy(logits.reshape(g * b, k), y.reshape(-1), reduction="none").view(g, b)
        if fn is not None:
            nll = nll * fn.to(logits.device).gather(1, y)
        return nll.mean(1)

    return loss


def stacked_rwwce(
    logits: torch.Tensor, y: torch.Tensor, fn: torch.Tensor, fp: torch.Tensor | None
) -> torch.Tensor:
    """Per-sample RWWCE of G models with their own weights, in one pass over (G, B, K).

    ``loss[g, b] = -fn[g, t] log p_t - sum_j fp[g, t, j] log(1 - p_j)`` with t = y[g, b]: the
    library's formula (DESIGN.md) with a weight set per model, which its functional API (one weight
    set per call) cannot take. log(1 - p_j) is computed in log space as the library does: for the
    row's arg-max, logsumexp of the other logits minus logsumexp of all; for the rest,
    log1p(-p_j) with p_j <= 1/2. ``tests/test_experiments.py`` checks value and gradient against
    ``rwwce.real_world_weight_cross_entropy`` model by model.
    """
    lse = torch.logsumexp(logits, -1, keepdim=True)
    logp = logits - lse
    out = -fn.gather(1, y) * logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    if fp is None:
        return out
    is_max = F.one_hot(logits.argmax(-1), logits.shape[-1]).bool()
    lse_others = torch.logsumexp(logits.masked_fill(is_max, float("-inf")), -1, keepdim=True)
    # The non-max branch sees a clamped argument so the unused entries of torch.where stay finite
    # in the backward pass (p_j <= 1/2 there anyway).
    safe = torch.where(is_max, torch.full_like(logp, -math.log(2.0)), logp)
    log1mp = torch.where(is_max, lse_others - lse, torch.log1p(-torch.exp(safe)))
    w = fp[torch.arange(fp.shape[0], device=y.device)[:, None], y]  # (G, B, K): FP[g, t, :]
    return out - (w * log1mp).sum(-1)


def multiclass_loss(
    fn: torch.Tensor, fp: torch.Tensor | None, *, impl: Literal["stacked", "library"] = "stacked"
) -> LossFn:
    """Per-model RWWCE means for G models with their own weights: fn (G, K), fp (G, K, K) or None.

    ``impl="stacked"`` (default): :func:`stacked_rwwce`, one pass for all models.
    ``impl="library"``: ``rwwce.real_world_weight_cross_entropy(..., reduction='none')`` over the
    stacked (G*B, K) batch. When all models share the weights that is one call; otherwise the loss
    is linear in the weights, so with A = -log p_t (fn = 1, no FP) and
    B_j = -[t != j] log(1 - p_j) (FP = e_j, minus A) it is fn[g, t] A + sum_j FP[g, t, j] B_j:
    K + 1 calls whatever G is. Both give the same values and gradients (tested).
    """
    import rwwce

    rw = rwwce.real_world_weight_cross_entropy
    k = fn.shape[1]
    shared = bool((fn == fn[:1]).all()) and (fp is None or bool((fp == fp[:1]).all()))
    cols = [] if fp is None else [j for j in range(k) if bool((fp[:, :, j] != 0).any())]
    cache: dict[torch.device, tuple] = {}

    def weights(dev: torch.device):
        if dev not in cache:
            cache[dev] = (fn.to(dev), None if fp is None else fp.to(dev))
        return cache[dev]

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g, b, kk = logits.shape
        fn_d, fp_d = weights(logits.device)
        if impl == "stacked":
            return stacked_rwwce(logits, y, fn_d, fp_d).mean(1)
        z = logits.reshape(g * b, kk)
        t = y.reshape(-1)
        dev = logits.device
        if shared:
            out = rw(z, t, fn_d[0], None if fp_d is None else fp_d[0], reduction="none")
            return out.view(g, b).mean(1)
        a = rw(z, t, reduction="none")
        total = fn_d.gather(1, y) * a.view(g, b)
        for j in cols:
            e = torch.zeros(kk, device=dev)
            e[j] = 1.0
            bj = (rw(z, t, None, e, reduction="none") - a).view(g, b)
            total = total + fp_d[:, :, j].gather(1, y) * bj
        return total.mean(1)

    return loss


def binary_loss(fn: torch.Tensor, fp: torch.Tensor) -> LossFn:
    """Per-model binary RWWCE means: fn (G,), fp (G,) broadcast over each model's batch."""
    import rwwce

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dev = logits.device
        out = rwwce.binary_real_world_weight_cross_entropy(
            logits, y.to(logits.dtype), fn.to(dev)[:, None], fp.to(dev)[:, None], reduction="none"
        )
        return out.mean(1)

    return loss


# ----------------------------------------------------------------------------------- the group
@dataclass
class ModelSpec:
    train_idx: np.ndarray  # (n,) rows of the pool
    train_y: np.ndarray  # (n,) labels (class indices; 0/1 for binary)
    val_idx: np.ndarray
    val_y: np.ndarray
    test_idx: np.ndarray
    test_y: np.ndarray
    init_seed: int
    shuffle_seed: int


@dataclass
class ArmSpec:
    model: int  # index into the group's models
    decision: Decision
    costs: np.ndarray  # (K, K) cost matrix the arm is judged (and early-stopped) by


@dataclass
class ArmResult:
    best_epoch: int
    val_costs: list[float]
    val_recall: list[float]  # per class, at the best epoch
    decision: Decision  # with the threshold chosen at the best epoch
    test_probs: np.ndarray  # (n_test, K) or (n_test,) for binary
    test_y: np.ndarray
    test_pred: np.ndarray
    extra: dict = field(default_factory=dict)


def _probs(out: torch.Tensor, binary: bool) -> torch.Tensor:
    return torch.sigmoid(out) if binary else torch.softmax(out, -1)


def _stream_size(keys: list) -> int:
    """m when ``keys`` is runs of m equal consecutive entries (models sharing a data stream), else 1.

    Keys are compared with ``==`` (numpy arrays via ``np.array_equal``)."""

    def eq(a, b):
        return all(
            np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
            for x, y in zip(a, b, strict=True)
        )

    g = len(keys)
    run = 1
    while run < g and eq(keys[run], keys[0]):
        run += 1
    if g % run:
        return 1
    for s in range(0, g, run):
        if not all(eq(keys[s + i], keys[s]) for i in range(run)):
            return 1
        if s + run < g and eq(keys[s + run], keys[s]):
            return 1
    return run


@torch.no_grad()
def _predict(
    model: BatchedMLP,
    pool: torch.Tensor,
    idx: list[np.ndarray],
    binary: bool,
    chunk: int | None = None,
) -> list[np.ndarray]:
    """Probabilities of every model on its own index set; models with the same index set
    (consecutive, m at a time) get the rows gathered once."""
    g = model.num_models
    m = _stream_size([(i,) for i in idx])
    streams = idx[::m]
    if chunk is None:  # bound the gathered (S, chunk, d) block to ~128 MB of float32
        chunk = max(64, 2**25 // (len(streams) * pool.shape[1]))
    n = max(len(i) for i in streams)
    rows = torch.as_tensor(
        np.stack([np.pad(i, (0, n - len(i))) for i in streams]), device=pool.device
    )
    outs = []
    for s in range(0, n, chunk):
        outs.append(_probs(model(pool[rows[:, s : s + chunk]]), binary).float().cpu())
    p = torch.cat(outs, 1).numpy()
    return [p[i, : len(idx[i])] for i in range(g)]


def train_group(
    pool: torch.Tensor,
    models: Sequence[ModelSpec],
    arms: Sequence[ArmSpec],
    loss_fn: LossFn,
    sizes: Sequence[int],
    *,
    epochs: int = 10,
    batch_size: int = 100,
    lr: float = 1e-3,
    on_step: Callable[[], None] | None = None,
) -> list[ArmResult]:
    """Train ``models`` together; return one :class:`ArmResult` per arm (best validation epoch).

    Every model must have the same number of training samples (same number of Adam steps). Model g
    draws its initial weights from ``init_seed`` and, each epoch, a permutation of its training set
    from a generator seeded with ``shuffle_seed`` (advanced epoch by epoch). Models with the same
    index set and shuffle seed therefore see the same batches; when that holds for all of them the
    batch is gathered once and fed to all of them: models are grouped into *streams* of m
    consecutive models with the same index set and shuffle seed (m = G: one shared stream).
    """
    device = pool.device
    binary = sizes[-1] == 1
    n = len(models[0].train_idx)
    if any(len(m.train_idx) != n for m in models):
        raise ValueError("all models of a group need the same number of training samples")
    net = BatchedMLP(sizes, [m.init_seed for m in models]).to(device)
    try:  # the fused kernel is the same update as the default Adam, in one pass per tensor
        opt = torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.Adam(net.parameters(), lr=lr)
    tr_idx = torch.as_tensor(np.stack([m.train_idx for m in models]), device=device)
    tr_y = torch.as_tensor(np.stack([m.train_y for m in models]), device=device, dtype=torch.long)
    per_stream = _stream_size([(m.shuffle_seed, m.train_idx) for m in models])
    gens = [torch.Generator().manual_seed(int(m.shuffle_seed)) for m in models[::per_stream]]
    tr_idx = tr_idx[::per_stream]

    n_classes = 2 if binary else sizes[-1]
    best_cost = [np.inf] * len(arms)
    best_epoch = [0] * len(arms)
    best_dec = [a.decision for a in arms]
    best_recall: list[list[float]] = [[] for _ in arms]
    history: list[list[float]] = [[] for _ in arms]
    arm_model = torch.tensor([a.model for a in arms], dtype=torch.long, device=device)
    best_state = net.state_of(arm_model)

    for epoch in range(epochs):
        net.train()
        perms = torch.stack([torch.randperm(n, generator=gen) for gen in gens]).to(device)
        for s in range(0, n, batch_size):
            p = perms[:, s : s + batch_size]  # (S, B)
            xb = pool[tr_idx.gather(1, p)]  # (S, B, d): one gather per stream
            yb = tr_y.gather(1, p.repeat_interleave(per_stream, 0))  # (G, B)
            loss = loss_fn(net(xb), yb).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step()
        net.eval()
        val_p = _predict(net, pool, [m.val_idx for m in models], binary)
        improved = []
        for a, arm in enumerate(arms):
            y = models[arm.model].val_y
            dec = arm.decision.fit(val_p[arm.model], y)
            conf = confusion(y, dec.predict(val_p[arm.model]), n_classes)
            c = cost_of(conf, arm.costs)
            history[a].append(c)
            if c < best_cost[a]:
                best_cost[a], best_epoch[a], best_dec[a] = c, epoch, dec
                rows = conf.sum(1)
                best_recall[a] = [
                    float(conf[i, i] / rows[i]) if rows[i] else float("nan")
                    for i in range(n_classes)
                ]
                improved.append(a)
        if improved:
            sel = torch.tensor(improved, device=device)
            for dst, src in zip(best_state, net.state_of(arm_model[sel]), strict=True):
                dst[sel] = src

    best_net = BatchedMLP.from_state(sizes, best_state).to(device)
    test_p = _predict(best_net, pool, [models[a.model].test_idx for a in arms], binary)
    results = []
    for a, arm in enumerate(arms):
        m = models[arm.model]
        results.append(
            ArmResult(
                best_epoch=best_epoch[a] + 1,
                val_costs=history[a],
                val_recall=best_recall[a],
                decision=best_dec[a],
                test_probs=test_p[a],
                test_y=m.test_y,
                test_pred=best_dec[a].predict(test_p[a]),
            )
        )
    return results
