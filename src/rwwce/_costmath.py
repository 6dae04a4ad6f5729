"""Cost arithmetic shared by the metrics, ``RealWorldCost``, ``CostMonitor``, the Hugging Face
metrics, the class-weight tools and the experiments' training: label and probability coercion,
confusion counts, expected costs.

Private: the public faces are :mod:`rwwce.metrics`, :class:`rwwce.metrics.RealWorldCost`,
:class:`rwwce.CostMonitor`, :func:`rwwce.integrations.huggingface.make_compute_metrics` and
:func:`rwwce.adjust_class_weights`. Functions without ``check`` in their docstring read no tensor
values, so they run on an accelerator without a host synchronisation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from rwwce._validate import check_finite_nonnegative, to_tensor
from rwwce.costs import CostMatrix, as_cost_matrix


# ---------------------------------------------------------------------- coercion and checks
def class_indices(
    x: Any, name: str, num_classes: int, device: torch.device | None = None
) -> torch.Tensor:
    """int64 class indices in [0, K), any shape, on ``device`` (default: where they are)."""
    t = to_tensor(x, name)
    if t.dtype == torch.bool or t.numel() == 0:  # [] reads as float64: no values, no doubt
        t = t.to(torch.int64)
    if t.is_floating_point() or t.is_complex():
        raise TypeError(
            f"{name} has dtype {t.dtype}; expected integer class indices (for probabilities or "
            "scores use bayes_decision(...) or .argmax(dim=1) first)"
        )
    t = t.to(device=device if device is not None else t.device, dtype=torch.int64)
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name} contains the label {lo if lo < 0 else hi}; expected class indices in "
                f"[0, {num_classes})"
            )
    return t


def float_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for the metric arithmetic, float32 where the device lacks float64 (MPS)."""
    return torch.float32 if t.device.type == "mps" else torch.float64


def probabilities(x: Any, name: str, k: int) -> torch.Tensor:
    """Validated (N, K) probabilities (float32 at least); (N,) = P(positive) when K == 2."""
    p = to_tensor(x, name)
    if p.is_complex():
        raise TypeError(f"{name} is complex; expected real probabilities")
    # rows of 16-bit softmax output sum to 1 only within a few units of their epsilon
    tol = 1e-2 if p.dtype in (torch.float16, torch.bfloat16) else 1e-4
    p = p.to(torch.promote_types(p.dtype, torch.float32))
    if p.ndim == 1:
        if k != 2:
            raise ValueError(
                f"{name} has shape {tuple(p.shape)} (binary probabilities of the positive class) "
                f"but costs has {k} classes; expected ({p.shape[0]}, {k}) probabilities, or a "
                "2 x 2 cost matrix"
            )
        if not bool(((p >= 0) & (p <= 1)).all()):
            bad = p[~((p >= 0) & (p <= 1))][0]
            raise ValueError(
                f"{name} contains {float(bad)}; expected probabilities in [0, 1] (apply "
                "torch.sigmoid to logits first)"
            )
        return torch.stack([1.0 - p, p], dim=1)
    if p.ndim != 2 or p.shape[1] != k:
        raise ValueError(
            f"{name} has shape {tuple(p.shape)}; expected (N, {k}) class probabilities to match "
            f"the {k} x {k} cost matrix"
            + (" or (N,) probabilities of the positive class" if k == 2 else "")
        )
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise ValueError(
            f"{name} contains negative, NaN or infinite values; expected probabilities "
            "(apply softmax to logits first)"
        )
    err = (p.sum(dim=1) - 1).abs()
    if p.shape[0] and float(err.max()) > tol:
        i = int(err.argmax())
        raise ValueError(
            f"{name}[{i}] sums to {float(p[i].sum()):.6g}; expected each row to sum to 1 "
            f"(within {tol:g}); apply softmax to logits first"
        )
    return p


def as_costs(costs: Any) -> torch.Tensor:
    """Validated costs: a (K, K) float64 CPU tensor, or (N, K, K) float64 per-sample costs.

    Per-sample costs stay on their device (float32 on MPS). ``CostMatrix`` and 2-D input go
    through :func:`rwwce.costs.as_cost_matrix`.
    """
    if isinstance(costs, CostMatrix):
        return costs.matrix
    t = to_tensor(costs, "costs")
    if t.ndim != 3:
        if t.ndim != 2:
            raise ValueError(
                f"costs has shape {tuple(t.shape)}; expected a (K, K) cost matrix or (N, K, K) "
                "per-sample cost matrices"
            )
        return as_cost_matrix(t).matrix
    if t.shape[1] != t.shape[2] or t.shape[1] < 2:
        raise ValueError(
            f"costs has shape {tuple(t.shape)}; expected (N, K, K) per-sample cost matrices "
            "with K >= 2"
        )
    t = t.to(float_dtype(t))
    check_finite_nonnegative(t, "costs")
    return t


def check_rows(c: torch.Tensor, n: int, what: str) -> None:
    if c.ndim == 3 and c.shape[0] != n:
        raise ValueError(
            f"costs has shape {tuple(c.shape)} ({c.shape[0]} per-sample matrices) but {what} "
            f"has {n} samples; expected one (K, K) matrix per sample"
        )


def element_costs(t: torch.Tensor, p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``C[t, p]`` per element (``C[n, t, p]`` for per-sample costs, broadcast over (N, ...))."""
    c = c.to(t.device)
    if c.ndim == 2:
        return c[t, p]
    check_rows(c, t.shape[0] if t.ndim else 1, "y_true")
    n = torch.arange(c.shape[0], device=t.device).reshape((-1,) + (1,) * (t.ndim - 1))
    return c[n, t, p]


# ---------------------------------------------------------------------- counts and expected costs
def masked_confusion(
    target: torch.Tensor, pred: torch.Tensor, num_classes: int, valid: torch.Tensor
) -> torch.Tensor:
    """(K, K) int64 counts of the (target, pred) pairs where ``valid``, on the inputs' device and
    without a host synchronisation: invalid labels are masked, never indexed with, and the counts
    use ``index_add_``, not ``bincount`` (whose output size reads the largest label on CUDA).

    ``target``, ``pred`` and ``valid`` share one shape; labels are int64.
    """
    k = num_classes
    index = torch.where(valid, target * k + pred, 0).reshape(-1)
    counts = torch.zeros(k * k, dtype=torch.int64, device=target.device)
    return counts.index_add_(0, index, valid.reshape(-1).long()).view(k, k)


def streaming_confusion(
    target: torch.Tensor,
    pred: torch.Tensor,
    num_classes: int,
    ignore_index: int | None,
    check: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The label rule of the metrics that accumulate over batches (``RealWorldCost``,
    ``CostMonitor``): ``(counts, kept, invalid)``.

    Targets equal to ``ignore_index`` are skipped. Any other label outside ``[0, K)`` (in
    ``target``, or in ``pred`` where the target is kept) is a ``ValueError`` when ``check`` (CPU
    data, where reading it costs nothing); otherwise (an accelerator, no host synchronisation)
    it is left out of the counts and counted in ``invalid``, which the caller turns into a NaN
    cost. ``counts``: (K, K) int64; ``kept``: bool of the target's shape, the pairs counted;
    ``invalid``: 0-dim int64. ``target`` and ``pred`` are integer tensors of one shape.
    """
    k = num_classes
    t, p = target.to(torch.int64), pred.to(torch.int64)
    kept = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    in_range = kept & (t >= 0) & (t < k) & (p >= 0) & (p < k)
    if check:
        suffix = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        for name, labels in (("target", t), ("preds", p)):
            bad = kept & ((labels < 0) | (labels >= k))
            if bool(bad.any()):
                raise ValueError(
                    f"{name} contains the label {int(labels[bad][0])}; expected class indices "
                    f"in [0, {k}){suffix}"
                )
    invalid = (kept & ~in_range).sum()
    return masked_confusion(t, p, k, in_range), in_range, invalid


def expected(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``E[n, j] = sum_i p[n, i] C[i, j]`` (``C[n, i, j]`` per sample); no checks, no syncs.

    ``p`` is (N, K) or (N, M, K) (M elements per sample); ``c`` is (K, K) or (N, K, K).
    """
    if c.ndim == 2 or p.ndim == 3:
        return p @ c
    return (p.unsqueeze(1) @ c).squeeze(1)


class ConfusionCosts(NamedTuple):
    """What a confusion matrix costs (:func:`confusion_costs`): float tensors on its device.

    ``counts[..., i, j]`` (rows: truth) and ``weighted[..., i, j] = C[..., i, j] * counts[..., i, j]``,
    with any leading batch dimensions (one matrix per model or arm, say); the rest is read from
    them, per matrix. Ratios over a class without samples are NaN (0 / 0), never an error.
    """

    counts: torch.Tensor
    weighted: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """(...): ``sum_ij C[i, j] count[i, j]``, the Real World Cost with ``reduction="sum"``."""
        return self.weighted.sum(dim=(-2, -1))

    @property
    def samples(self) -> torch.Tensor:
        """(...): ``n = sum_ij count[i, j]``."""
        return self.counts.sum(dim=(-2, -1))

    @property
    def mean(self) -> torch.Tensor:
        """(...): the Real World Cost ``total / n`` (NaN without samples)."""
        return self.total / self.samples

    @property
    def support(self) -> torch.Tensor:
        """(..., K): ``n_i = sum_j count[i, j]``, the samples of each true class."""
        return self.counts.sum(dim=-1)

    @property
    def class_cost(self) -> torch.Tensor:
        """(..., K): ``sum_j C[i, j] count[i, j]``, what the samples of true class i cost."""
        return self.weighted.sum(dim=-1)

    @property
    def class_mean(self) -> torch.Tensor:
        """(..., K): ``class_cost / n_i``, the mean cost of a sample of true class i."""
        return self.class_cost / self.support

    @property
    def recall(self) -> torch.Tensor:
        """(..., K): ``count[i, i] / n_i``."""
        return self.counts.diagonal(dim1=-2, dim2=-1) / self.support

    @property
    def accuracy(self) -> torch.Tensor:
        """(...): ``sum_i count[i, i] / n``."""
        return self.counts.diagonal(dim1=-2, dim2=-1).sum(dim=-1) / self.samples


def confusion_costs(counts: torch.Tensor, costs: torch.Tensor) -> ConfusionCosts:
    """The cost, per-class cost and recall of (..., K, K) confusion ``counts`` under (..., K, K)
    ``costs`` (broadcast against each other: one cost matrix for many confusions, or one each).

    Counts may be integers or (weighted) floats; both go to :func:`float_dtype` on the counts'
    device. No checks, no syncs.
    """
    dtype = float_dtype(counts)
    n = counts.to(dtype)
    return ConfusionCosts(n, n * costs.to(counts.device, dtype, non_blocking=True))


# ---------------------------------------------------------------------- decisions
DECISIONS = ("argmax", "bayes")


def check_decision(decision: Any) -> None:
    """``decision`` names a rule of :func:`decide`."""
    if decision not in DECISIONS:
        raise ValueError(f"decision is {decision!r}; expected 'argmax' or 'bayes'")


def decide(
    scores: torch.Tensor,
    decision: str,
    costs: torch.Tensor | None = None,
    *,
    logits: bool = False,
) -> torch.Tensor:
    """Class indices (N, ...) from scores (N, K, ...) (classes in dim 1); no checks, no syncs.

    ``"argmax"``: the arg-max of the scores (logits and probabilities alike). ``"bayes"``: the
    cost-optimal class ``argmin_j sum_i p_i C[i, j]`` (ties to the lower index), with ``p`` the
    scores (their softmax when ``logits``) in float32 at least and ``costs`` (K, K), or (N, K, K)
    per sample (sample n's matrix for every element of ``scores[n]``).
    """
    if decision == "argmax":
        return scores.argmax(dim=1)
    rows = scores.detach().movedim(1, -1)
    p = rows.to(torch.promote_types(rows.dtype, torch.float32))
    if logits:
        p = p.softmax(dim=-1)
    k = p.shape[-1]
    c = costs.to(p.device, p.dtype)
    if c.ndim == 2:
        return expected(p.reshape(-1, k), c).argmin(dim=1).reshape(rows.shape[:-1])
    return expected(p.reshape(p.shape[0], -1, k), c).argmin(dim=2).reshape(rows.shape[:-1])


# ---------------------------------------------------------------------- labels of the scikit-learn scorer
def label_indices(y: Any, labels: Any, cm: CostMatrix, name: str) -> np.ndarray:
    """Rows / columns of the cost matrix for labels ``y`` (a 1-D array of indices)."""
    arr = np.asarray(y).reshape(-1)
    k = cm.num_classes
    if labels is not None:
        lookup = {v: i for i, v in enumerate(np.asarray(labels).reshape(-1).tolist())}
        out = np.empty(arr.shape[0], dtype=np.int64)
        for n, v in enumerate(arr.tolist()):
            if v not in lookup:
                raise ValueError(
                    f"{name} contains {v!r}; expected one of the labels {list(lookup)}"
                )
            out[n] = lookup[v]
        return out
    if arr.dtype.kind in "iub":
        return class_indices(arr.astype(np.int64), name, k).numpy()
    lookup = {c: i for i, c in enumerate(cm.classes)}
    out = np.empty(arr.shape[0], dtype=np.int64)
    for n, v in enumerate(arr.tolist()):
        if str(v) not in lookup:
            raise ValueError(
                f"{name} contains {v!r}, which is not a class of the cost matrix "
                f"({', '.join(cm.classes)}); pass labels=[...] naming the class of each row"
            )
        out[n] = lookup[str(v)]
    return out


def label_cost(
    y_true: Any,
    y_pred: Any,
    *,
    costs: Any,
    labels: Any = None,
    sample_weight: Any = None,
) -> float:
    """The (weighted) mean Real World Cost of label arrays: ``sum_n w_n C[t_n, p_n] / sum_n w_n``."""
    cm = as_cost_matrix(costs)
    if labels is not None and len(labels) != cm.num_classes:
        raise ValueError(
            f"labels has {len(labels)} entries; expected {cm.num_classes}, one per row of costs"
        )
    t = label_indices(y_true, labels, cm, "y_true")
    p = label_indices(y_pred, labels, cm, "y_pred")
    if t.shape != p.shape or t.size == 0:
        raise ValueError(
            f"y_true has {t.size} labels and y_pred {p.size}; expected the same, non-zero number"
        )
    per = cm.matrix.numpy()[t, p]
    if sample_weight is None:
        return float(per.mean())
    w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if w.shape != per.shape:
        raise ValueError(f"sample_weight has {w.size} entries; expected {per.size}")
    return float(np.average(per, weights=w))
