"""Train many small models at once, keeping each arm's epoch with the lowest validation Real World
Cost (``epoch_selection="best-val"``) or its last epoch (``"last"``, the paper's notebook).

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
threshold); each arm keeps its own epoch: the one with the lowest validation cost, or the last.

The losses are the library's own (:func:`rwwce.real_world_weight_cross_entropy`), and so is the
arithmetic of the validation decisions, confusion counts, costs and recall (the sync-free helpers
behind :mod:`rwwce.metrics`, on data the runner made itself, so without the public functions'
checks on every arm and epoch). A group's full state
(parameters, Adam's state, the shuffling generators, each arm's best epoch so far) can be saved after
every epoch and training resumed from it with identical results (:class:`GroupState`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from rwwce._costmath import confusion_costs, decide, streaming_confusion
from rwwce.functional import binary_real_world_weight_cross_entropy, real_world_weight_cross_entropy

from .models import BatchedMLP
from .spec import EPOCH_SELECTIONS, EpochSelection

__all__ = [
    "ArmResult",
    "ArmSpec",
    "Decision",
    "GroupState",
    "ModelSpec",
    "binary_loss",
    "f1_best_threshold",
    "group_loss",
    "multiclass_loss",
    "train_group",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Bound on one prediction chunk's largest block (gathered inputs or one layer's activations of
#: every model): 2**25 float32 values, 128 MB.
PREDICT_BLOCK = 2**25


# ----------------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class Decision:
    """How a model's probabilities become a class.

    ``kind``: ``argmax``; ``bayes`` (argmin_j sum_i p_i C[i, j], ties to the lower class, the
    rule of :func:`rwwce.metrics.bayes_decision`; binary probabilities p as (1 - p, p));
    ``threshold`` (binary: positive when p > ``threshold``); ``f1`` (binary: the threshold that
    maximises F1 on the validation split, re-chosen at every epoch). A new rule that needs fitting
    on validation (a calibration, say) is a new ``kind`` handled in :meth:`fit` and :meth:`predict`.
    """

    kind: Literal["argmax", "bayes", "threshold", "f1"] = "argmax"
    threshold: float = 0.5
    costs: np.ndarray | None = None

    def fit(self, probs: np.ndarray, y: np.ndarray) -> Decision:
        """The rule fitted on validation probabilities ``probs`` and labels ``y``."""
        if self.kind != "f1":
            return self
        return replace(self, threshold=f1_best_threshold(probs, y))

    def predict(self, probs: np.ndarray) -> np.ndarray:
        """(N,) int64 classes from (N, K) probabilities (binary: (N,) of the positive class)."""
        if self.kind == "argmax":
            return probs.argmax(-1)
        if self.kind == "bayes":
            p = torch.as_tensor(probs)
            scores = torch.stack([1 - p, p], 1) if p.ndim == 1 else p
            return decide(scores, "bayes", torch.as_tensor(self.costs)).numpy()
        return (probs > self.threshold).astype(np.int64)

    @property
    def fitted(self) -> dict[str, float]:
        """What :meth:`fit` chose (kept with a checkpoint and in the results)."""
        return {"threshold": self.threshold} if self.kind in ("threshold", "f1") else {}


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


# --------------------------------------------------------------------------------------- losses
def multiclass_loss(fn: torch.Tensor, fp: torch.Tensor | None) -> LossFn:
    """Per-model RWWCE means for G models with their own weights: fn (G, K), fp (G, K, K) or None.

    Each model's loss is ``rwwce.real_world_weight_cross_entropy`` with its own weights and
    ``reduction='mean'``, assembled from few library calls over the stacked (G*B, K) batch. The
    loss of row (g, b) with target t is ``fn[g, t] (-log p_t) + sum_j FP[g, t, j] (-log(1 - p_j))``:

    * the FN term for every row at once: no FP weight, ``sample_weight = fn[g, t]``;
    * the FP term with ``fn_weight = 0``: one call per distinct FP matrix with more than one
      non-zero row, over its models' rows (e.g. FP = 1 - I); for the models whose FP has a single
      non-zero row w (the paper's fp-pair: FP[i, j] = 19), one call per distinct w over the rows
      that use it, with the (K,) weight w (FP[t, j] = w[j] for j != t; w[t] = 0 as the diagonal
      is zero). So the K (K - 1) fp-pair models need K calls, not K (K - 1).

    The data are the runner's own, so the library's data checks are off (``validate=False``);
    the weights are moved to the logits' device once.
    """
    rw = real_world_weight_cross_entropy
    g_models, k = fn.shape
    dense: list[tuple[torch.Tensor, torch.Tensor]] = []  # (FP matrix, its models)
    rows: torch.Tensor | None = None  # distinct single non-zero FP rows
    group_of: torch.Tensor | None = None  # (G, K): index into rows for (model, target), or -1
    if fp is not None:
        used = (fp != 0).any(2)  # (G, K): rows of FP that are not zero
        is_dense = used.sum(1) > 1
        if bool(is_dense.any()):
            ids = is_dense.nonzero().squeeze(1)
            mats, inverse = torch.unique(fp[ids], dim=0, return_inverse=True)
            dense = [(mats[u], ids[inverse == u]) for u in range(len(mats))]
        sparse = used & ~is_dense[:, None]
        if bool(sparse.any()):
            flat = fp.reshape(g_models * k, k)
            mask = sparse.reshape(-1)
            rows, inverse = torch.unique(flat[mask], dim=0, return_inverse=True)
            group_of = torch.full((g_models * k,), -1, dtype=torch.long)
            group_of[mask] = inverse
            group_of = group_of.view(g_models, k)
    cache: dict[torch.device, tuple] = {}

    def on(dev: torch.device) -> tuple:
        if dev not in cache:
            cache[dev] = (
                fn.to(dev),
                [(m.to(dev), ids.to(dev)) for m, ids in dense],
                None if rows is None else rows.to(dev),
                None if group_of is None else group_of.to(dev),
                torch.zeros(k, device=dev),
            )
        return cache[dev]

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g, b, kk = logits.shape
        fn_d, dense_d, rows_d, group_d, zeros = on(logits.device)
        z = logits.reshape(g * b, kk)
        t = y.reshape(-1)
        out = rw(
            z, t, sample_weight=fn_d.gather(1, y).reshape(-1), reduction="none", validate=False
        )
        out = out.view(g, b)
        for mat, ids in dense_d:
            term = rw(
                logits[ids].reshape(-1, kk),
                y[ids].reshape(-1),
                zeros,
                mat,
                reduction="none",
                validate=False,
            )
            out = out.index_add(0, ids, term.view(len(ids), b))
        if rows_d is not None:
            gid = group_d.gather(1, y).reshape(-1)
            terms = torch.zeros(g * b, dtype=out.dtype, device=out.device)
            for u in torch.unique(gid[gid >= 0]).tolist():
                idx = (gid == u).nonzero().squeeze(1)
                term = rw(z[idx], t[idx], zeros, rows_d[u], reduction="none", validate=False)
                terms = terms.index_add(0, idx, term)
            out = out + terms.view(g, b)
        return out.mean(1)

    return loss


def binary_loss(fn: torch.Tensor, fp: torch.Tensor) -> LossFn:
    """Per-model binary RWWCE means: fn (G,), fp (G,) broadcast over each model's batch
    (one call of ``rwwce.binary_real_world_weight_cross_entropy``)."""
    cache: dict[torch.device, tuple] = {}

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dev = logits.device
        if dev not in cache:
            cache[dev] = (fn.to(dev)[:, None], fp.to(dev)[:, None])
        fn_d, fp_d = cache[dev]
        out = binary_real_world_weight_cross_entropy(
            logits, y.to(logits.dtype), fn_d, fp_d, reduction="none"
        )
        return out.mean(1)

    return loss


def group_loss(weights: Sequence[tuple[Any, Any]], binary: bool) -> LossFn:
    """The per-model loss of G models from each one's own weights ``weights[g] = (fn, fp)``.

    Binary models: fn and fp are numbers (:func:`binary_loss`). Multi-class models: fn (K,) and
    fp (K, K) or None, no FP term (:func:`multiclass_loss`; beside models with an FP term, None
    is a zero matrix, which adds nothing to the loss).
    """
    if binary:
        return binary_loss(
            torch.tensor([float(fn) for fn, _ in weights]),
            torch.tensor([float(fp) for _, fp in weights]),
        )
    fn = torch.tensor(np.stack([fn for fn, _ in weights]), dtype=torch.float32)
    if all(fp is None for _, fp in weights):
        return multiclass_loss(fn, None)
    k = fn.shape[1]
    fp = torch.tensor(
        np.stack([np.zeros((k, k)) if fp is None else fp for _, fp in weights]),
        dtype=torch.float32,
    )
    return multiclass_loss(fn, fp)


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
    best_epoch: int  # 1-based: the epoch kept (lowest validation cost, or the last)
    val_costs: list[float]
    val_recall: list[float]  # per class, at the best epoch
    decision: Decision  # as fitted at the best epoch
    test_probs: np.ndarray  # (n_test, K) or (n_test,) for binary
    test_y: np.ndarray
    test_pred: np.ndarray
    extra: dict = field(default_factory=dict)


@dataclass
class GroupState:
    """Everything a group's training needs to go on from the end of epoch ``epoch`` (1-based)
    exactly as if it had not stopped; plain tensors, lists and numbers (``torch.load`` with
    ``weights_only=True`` reads it)."""

    epoch: int
    net: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generators: list[torch.Tensor]
    best_cost: list[float]
    best_epoch: list[int]
    best_fitted: list[dict[str, float]]
    best_recall: list[list[float]]
    history: list[list[float]]
    best_state: list[torch.Tensor]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupState:
        return cls(**d)


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
    (consecutive, m at a time) get the rows gathered once.

    Rows go through in chunks small enough that neither the gathered (S, chunk, d) inputs nor one
    layer's (G, chunk, width) activations exceed :data:`PREDICT_BLOCK` values: with hundreds of
    models (fp-pair's arms) the activations, not the inputs, are what fills memory."""
    g = model.num_models
    m = _stream_size([(i,) for i in idx])
    streams = idx[::m]
    if chunk is None:
        widest = max(len(streams) * pool.shape[1], g * max(model.sizes[1:]))
        chunk = max(64, PREDICT_BLOCK // widest)
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
    state: GroupState | None = None,
    on_epoch: Callable[[GroupState], None] | None = None,
    epoch_selection: EpochSelection = "best-val",
) -> list[ArmResult]:
    """Train ``models`` together; return one :class:`ArmResult` per arm, at the epoch
    ``epoch_selection`` keeps: ``"best-val"`` the one with the lowest validation Real World Cost
    under the arm's own cost matrix and decision (the first such epoch on ties), ``"last"`` the
    final one (the paper's protocol). Either way every epoch's validation cost is recorded.

    Every model must have the same number of training samples (same number of Adam steps). Model g
    draws its initial weights from ``init_seed`` and, each epoch, a permutation of its training set
    from a generator seeded with ``shuffle_seed`` (advanced epoch by epoch). Models with the same
    index set and shuffle seed therefore see the same batches; when that holds for all of them the
    batch is gathered once and fed to all of them: models are grouped into *streams* of m
    consecutive models with the same index set and shuffle seed (m = G: one shared stream).

    ``on_epoch(state)`` is called after every epoch with the group's :class:`GroupState`;
    ``state=`` (such a state) resumes training after its epoch, giving results identical to an
    uninterrupted run.
    """
    if epoch_selection not in EPOCH_SELECTIONS:
        raise ValueError(
            f"epoch_selection must be one of {', '.join(EPOCH_SELECTIONS)}, got {epoch_selection!r}"
        )
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
    streams = _TrainingStreams.of(models, device)
    arm_model = torch.tensor([a.model for a in arms], dtype=torch.long, device=device)
    if state is None:
        state = _initial_state(arms, net.state_of(arm_model))
    else:
        if len(state.best_cost) != len(arms) or state.epoch > epochs:
            raise ValueError("the saved training state does not belong to this group")
        net.load_state_dict(state.net)
        opt.load_state_dict(state.optimizer)
        for gen, s in zip(streams.generators, state.generators, strict=True):
            gen.set_state(s)
        state.best_state = [t.to(device) for t in state.best_state]

    for epoch in range(state.epoch, epochs):
        net.train()
        for xb, yb in streams.batches(pool, batch_size):
            loss = loss_fn(net(xb), yb).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step()
        net.eval()
        improved = _record_validation(
            net, pool, models, arms, binary, epoch, state, epoch_selection
        )
        if improved:
            sel = torch.tensor(improved, device=device)
            for dst, src in zip(state.best_state, net.state_of(arm_model[sel]), strict=True):
                dst[sel] = src
        state.epoch = epoch + 1
        if on_epoch is not None:
            state.net = net.state_dict()
            state.optimizer = opt.state_dict()
            state.generators = [gen.get_state() for gen in streams.generators]
            on_epoch(state)
    return _test_results(pool, sizes, models, arms, state, binary)


@dataclass
class _TrainingStreams:
    """The group's training data as S streams of m = G / S consecutive models that share an index
    set and a shuffling seed (m = G: one shared stream): each batch is gathered once per stream."""

    index: torch.Tensor  # (S, n) rows of the pool
    labels: torch.Tensor  # (G, n) int64
    generators: list[torch.Generator]  # one per stream, advanced one permutation per epoch
    per_stream: int  # m

    @classmethod
    def of(cls, models: Sequence[ModelSpec], device: torch.device) -> _TrainingStreams:
        per_stream = _stream_size([(m.shuffle_seed, m.train_idx) for m in models])
        index = torch.as_tensor(np.stack([m.train_idx for m in models]), device=device)
        labels = torch.as_tensor(
            np.stack([m.train_y for m in models]), device=device, dtype=torch.long
        )
        generators = [
            torch.Generator().manual_seed(int(m.shuffle_seed)) for m in models[::per_stream]
        ]
        return cls(index[::per_stream], labels, generators, per_stream)

    def batches(self, pool: torch.Tensor, batch_size: int):
        """One epoch's batches: inputs (S, B, d) and labels (G, B), each stream in the order of
        its generator's next permutation."""
        n = self.index.shape[1]
        perms = torch.stack([torch.randperm(n, generator=g) for g in self.generators])
        perms = perms.to(self.index.device)
        for s in range(0, n, batch_size):
            p = perms[:, s : s + batch_size]  # (S, B)
            yield (
                pool[self.index.gather(1, p)],
                self.labels.gather(1, p.repeat_interleave(self.per_stream, 0)),
            )


def _initial_state(arms: Sequence[ArmSpec], best_state: list[torch.Tensor]) -> GroupState:
    """A group's state before its first epoch."""
    return GroupState(
        epoch=0,
        net={},
        optimizer={},
        generators=[],
        best_cost=[float("inf")] * len(arms),
        best_epoch=[0] * len(arms),
        best_fitted=[a.decision.fitted for a in arms],
        best_recall=[[] for _ in arms],
        history=[[] for _ in arms],
        best_state=best_state,
    )


def _record_validation(
    net: BatchedMLP,
    pool: torch.Tensor,
    models: Sequence[ModelSpec],
    arms: Sequence[ArmSpec],
    binary: bool,
    epoch: int,
    state: GroupState,
    epoch_selection: EpochSelection,
) -> list[int]:
    """Price every arm's validation decisions of this epoch, append the costs to ``state.history``
    and keep the epoch (cost, decision, recall) where the arm's ``epoch_selection`` wants it;
    return the arms that kept it, whose parameters the caller saves."""
    val_p = _predict(net, pool, [m.val_idx for m in models], binary)
    val_y = [torch.from_numpy(np.asarray(m.val_y, dtype=np.int64)) for m in models]
    # Arms that share a model and a decision rule (e.g. one CE model judged by many cost
    # matrices) share its predictions and confusion counts (the labels are the runner's own:
    # counted unchecked); every arm's counts are then priced by its own costs at once.
    fitted = [arm.decision.fit(val_p[arm.model], models[arm.model].val_y) for arm in arms]
    keys = [
        (arm.model, d.kind, d.threshold, id(d.costs)) for arm, d in zip(arms, fitted, strict=True)
    ]
    slot: dict[tuple, int] = {}
    counts: list[torch.Tensor] = []
    num_classes = 2 if binary else val_p[0].shape[1]
    for arm, dec, key in zip(arms, fitted, keys, strict=True):
        if key not in slot:
            slot[key] = len(counts)
            pred = torch.from_numpy(dec.predict(val_p[arm.model]))
            counts.append(
                streaming_confusion(val_y[arm.model], pred, num_classes, None, check=False)[0]
            )
    arm_costs = torch.as_tensor(np.stack([a.costs for a in arms]), dtype=torch.float64)
    priced = confusion_costs(torch.stack(counts)[[slot[k] for k in keys]], arm_costs)
    improved = []
    for a, c in enumerate(priced.mean.tolist()):
        state.history[a].append(c)
        if epoch_selection == "last" or c < state.best_cost[a]:
            state.best_cost[a], state.best_epoch[a] = c, epoch
            state.best_fitted[a] = fitted[a].fitted
            state.best_recall[a] = priced.recall[a].tolist()
            improved.append(a)
    return improved


def _test_results(
    pool: torch.Tensor,
    sizes: Sequence[int],
    models: Sequence[ModelSpec],
    arms: Sequence[ArmSpec],
    state: GroupState,
    binary: bool,
) -> list[ArmResult]:
    """Each arm's result: its kept epoch's parameters and decision on its model's test set."""
    # Arms of one model that kept the same epoch hold the same parameters (fp-pair: 90 CE arms,
    # at most 10 distinct epochs): predict the test set once per distinct (model, epoch).
    slot: dict[tuple[int, int], int] = {}  # (model, kept epoch) -> row of the distinct models
    rep: list[int] = []  # one arm per distinct (model, kept epoch)
    for a, arm in enumerate(arms):
        if (arm.model, state.best_epoch[a]) not in slot:
            slot[(arm.model, state.best_epoch[a])] = len(rep)
            rep.append(a)
    device = pool.device
    sel = torch.tensor(rep, device=device)
    best_net = BatchedMLP.from_state(sizes, [t[sel] for t in state.best_state]).to(device)
    distinct = _predict(best_net, pool, [models[arms[a].model].test_idx for a in rep], binary)
    results = []
    for a, arm in enumerate(arms):
        m = models[arm.model]
        test_p = distinct[slot[(arm.model, state.best_epoch[a])]]
        dec = replace(arm.decision, **state.best_fitted[a])
        results.append(
            ArmResult(
                best_epoch=state.best_epoch[a] + 1,
                val_costs=state.history[a],
                val_recall=state.best_recall[a],
                decision=dec,
                test_probs=test_p,
                test_y=m.test_y,
                test_pred=dec.predict(test_p),
            )
        )
    return results
