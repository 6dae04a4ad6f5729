"""The Real World Cost metric, cost-optimal decisions and probability calibration.

With a cost matrix ``C`` (``C[i, j]``: the cost of predicting ``j`` when the truth is ``i``) and
the confusion counts ``count[i, j]`` of ``n`` samples::

    real_world_cost      = sum_ij C[i, j] * count[i, j] / n
    expected_costs(p)_j  = sum_i p_i C[i, j]                 (the expected cost of deciding j)
    bayes_decision(p)    = argmin_j expected_costs(p)_j

Every ``costs`` argument accepts a :class:`rwwce.CostMatrix` or anything array-like of shape
(K, K). Labels and probabilities may be tensors on any device, NumPy arrays or lists; results are
tensors on the device of the first tensor argument (the CPU for arrays and lists).

``RealWorldCost`` (a ``torchmetrics.Metric``) is loaded on first use, so ``import rwwce`` does not
import torchmetrics.

Example::

    >>> from rwwce import metrics
    >>> costs = [[0, 100], [2000, 0]]          # FN costs 2000, FP costs 100
    >>> float(metrics.real_world_cost([1, 1, 0, 0], [1, 0, 1, 0], costs))
    525.0
    >>> metrics.bayes_decision([0.02, 0.06], costs).tolist()   # threshold 100 / 2100 = 0.0476
    [0, 1]
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from rwwce._validate import check_choice, check_fn_matrix_diagonal, check_num_classes, to_tensor
from rwwce.costs import CostMatrix, _check_costs, as_cost_matrix

if TYPE_CHECKING:
    from rwwce._torchmetrics import RealWorldCost

__all__ = [
    "RealWorldCost",
    "bayes_decision",
    "confusion_matrix",
    "cost_curve",
    "expected_costs",
    "make_cost_scorer",
    "plot_cost_curve",
    "plot_prediction_costs",
    "real_world_benefit",
    "real_world_cost",
    "unweight_probabilities",
]

_LAZY = ("RealWorldCost",)


def __getattr__(name: str) -> Any:
    # RealWorldCost subclasses torchmetrics.Metric: import torchmetrics only when it is asked for.
    if name in _LAZY:
        from rwwce import _torchmetrics

        value = getattr(_torchmetrics, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# ---------------------------------------------------------------------- input checks
def _labels(
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


def _float_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for the metric arithmetic, float32 where the device lacks float64 (MPS)."""
    return torch.float32 if t.device.type == "mps" else torch.float64


def _probs(x: Any, name: str, k: int) -> torch.Tensor:
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


# ---------------------------------------------------------------------- confusion and cost
def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> torch.Tensor:
    """Confusion counts ``count[i, j] = #{y_true == i and y_pred == j}`` (rows: truth).

    Equals ``sklearn.metrics.confusion_matrix(y_true, y_pred, labels=range(num_classes))``.

    Args:
        y_true: class indices in ``[0, num_classes)``, any shape.
        y_pred: class indices, the same shape as ``y_true``.
        num_classes: K.

    Returns:
        int64 tensor of shape (K, K) on ``y_true``'s device.

    Example::

        >>> confusion_matrix([0, 1, 1], [0, 0, 1], num_classes=2).tolist()
        [[1, 0], [1, 1]]
    """
    k = check_num_classes(num_classes)
    t, p = _label_pair(y_true, y_pred, k)
    flat = (t * k + p).reshape(-1)
    return torch.bincount(flat, minlength=k * k).reshape(k, k)


def _label_pair(y_true: Any, y_pred: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = _labels(y_true, "y_true", k)
    p = _labels(y_pred, "y_pred", k, device=t.device)
    if t.shape != p.shape:
        raise ValueError(
            f"y_true has shape {tuple(t.shape)} and y_pred has shape {tuple(p.shape)}; expected "
            "the same shape (one prediction per label)"
        )
    return t, p


def _costs(costs: Any) -> torch.Tensor:
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
    t = t.to(_float_dtype(t))
    _check_costs(t, "costs")
    return t


def _check_rows(c: torch.Tensor, n: int, what: str) -> None:
    if c.ndim == 3 and c.shape[0] != n:
        raise ValueError(
            f"costs has shape {tuple(c.shape)} ({c.shape[0]} per-sample matrices) but {what} "
            f"has {n} samples; expected one (K, K) matrix per sample"
        )


def _element_costs(t: torch.Tensor, p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``C[t, p]`` per element (``C[n, t, p]`` for per-sample costs, broadcast over (N, ...))."""
    c = c.to(t.device)
    if c.ndim == 2:
        return c[t, p]
    _check_rows(c, t.shape[0] if t.ndim else 1, "y_true")
    n = torch.arange(c.shape[0], device=t.device).reshape((-1,) + (1,) * (t.ndim - 1))
    return c[n, t, p]


def _decided_costs(
    y_true: Any, y_pred: Any, costs: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(labels, predictions, float64 costs on the labels' device), checked against each other."""
    c = _costs(costs)
    t, p = _label_pair(y_true, y_pred, c.shape[-1])
    if t.numel() == 0:
        raise ValueError("y_true is empty; expected at least one sample")
    if c.ndim == 3 and t.ndim == 0:
        raise ValueError("y_true is a scalar; per-sample costs need labels of shape (N, ...)")
    return t, p, c.to(t.device)


def real_world_cost(
    y_true: Any, y_pred: Any, costs: Any, *, reduction: Literal["mean", "sum"] = "mean"
) -> torch.Tensor:
    """The Real World Cost of a set of decisions.

    ``RWC = sum_ij C[i, j] * count[i, j] / n`` for ``reduction="mean"`` (the average cost per
    sample, in the units of ``C``), without the ``/ n`` for ``"sum"``. Binary with a zero
    diagonal: ``(FN * c_fn + FP * c_fp) / n``. With per-sample costs (a fraud's cost is its
    amount): ``RWC = sum_n C[n, t_n, p_n] / n``.

    Args:
        y_true: true class indices, shape (N, ...), values in ``[0, K)``.
        y_pred: predicted class indices, the same shape.
        costs: a :class:`rwwce.CostMatrix` or a (K, K) array-like; or (N, K, K) per-sample
            matrices (sample ``n``'s matrix applies to every element of ``y_true[n]``).
        reduction: ``"mean"`` (default, divide by the number of elements) or ``"sum"``.

    Returns:
        A 0-dim float64 tensor on ``y_true``'s device.

    Example::

        >>> cost = real_world_cost([1, 1, 0], [0, 1, 1], [[0, 1], [10, 0]])   # one FN, one FP
        >>> round(float(cost), 4)
        3.6667
        >>> amounts = torch.tensor([250.0, 40.0, 0.0])     # a missed fraud costs its amount
        >>> per_sample = torch.zeros(3, 2, 2)
        >>> per_sample[:, 1, 0], per_sample[:, 0, 1] = amounts, 5.0   # a false alarm costs 5
        >>> float(real_world_cost([1, 1, 0], [0, 1, 1], per_sample, reduction="sum"))
        255.0
    """
    check_choice("reduction", reduction, ("mean", "sum"))
    t, p, c = _decided_costs(y_true, y_pred, costs)
    if c.ndim == 2:
        counts = confusion_matrix(t, p, c.shape[0])
        total = (counts.to(c.dtype) * c).sum()
    else:
        total = _element_costs(t, p, c).sum()
    return total / t.numel() if reduction == "mean" else total


def real_world_benefit(
    y_true: Any,
    y_pred: Any,
    costs: Any,
    *,
    reduction: Literal["mean", "sum"] = "mean",
    baseline: int = 0,
) -> torch.Tensor:
    """The cost the model saves compared with doing nothing: predicting ``baseline`` for every sample.

    ``benefit = (sum_i n_i C[i, b] - sum_ij C[i, j] count[i, j]) / n`` with ``n_i`` the number of
    samples of true class ``i`` and ``b = baseline`` (default 0, the negative class): the cost of
    the all-negative baseline minus the model's Real World Cost. Binary with a zero diagonal it is
    ``(P * c_fn - (FN * c_fn + FP * c_fp)) / n``, i.e. ``(TP * c_fn - FP * c_fp) / n``: every caught
    positive saves ``c_fn``, every false alarm spends ``c_fp``. Positive means the model is worth
    deploying; the maximum, ``P * c_fn / n``, is reached by a perfect model. ``"sum"`` drops the
    ``/ n``. Written for the binary case; any K works, and so do (N, K, K) per-sample costs.

    Args:
        y_true, y_pred, costs, reduction: as in :func:`real_world_cost`.
        baseline: the class the reference policy predicts for every sample. Default 0.

    Example::

        >>> float(real_world_benefit([1, 1, 0, 0], [1, 0, 1, 0], [[0, 100], [2000, 0]]))
        475.0
    """
    check_choice("reduction", reduction, ("mean", "sum"))
    t, p, c = _decided_costs(y_true, y_pred, costs)
    k = c.shape[-1]
    if (
        isinstance(baseline, bool)
        or not isinstance(baseline, numbers.Integral)
        or not 0 <= baseline < k
    ):
        raise ValueError(f"baseline is {baseline!r}; expected a class index in [0, {k})")
    if c.ndim == 2:
        counts = confusion_matrix(t, p, k).to(c.dtype)
        total = (counts.sum(dim=1) * c[:, baseline]).sum() - (counts * c).sum()
    else:
        total = (_element_costs(t, torch.full_like(t, baseline), c) - _element_costs(t, p, c)).sum()
    return total / t.numel() if reduction == "mean" else total


def _masked_confusion(
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


def _streaming_confusion(
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
    return _masked_confusion(t, p, k, in_range), in_range, invalid


# ---------------------------------------------------------------------- decisions
def _expected(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``E[n, j] = sum_i p[n, i] C[i, j]`` (``C[n, i, j]`` per sample); no checks, no syncs.

    ``p`` is (N, K) or (N, M, K) (M elements per sample); ``c`` is (K, K) or (N, K, K).
    """
    if c.ndim == 2 or p.ndim == 3:
        return p @ c
    return (p.unsqueeze(1) @ c).squeeze(1)


def expected_costs(probs: Any, costs: Any) -> torch.Tensor:
    """The expected cost of each decision: ``E[n, j] = sum_i p[n, i] C[i, j]``, i.e. ``probs @ C``.

    Args:
        probs: (N, K) class probabilities (non-negative rows summing to 1), or for 2 x 2 costs
            (N,) probabilities of the positive class.
        costs: a :class:`rwwce.CostMatrix` or a (K, K) array-like, or (N, K, K) per-sample
            matrices (``E[n, j] = sum_i p[n, i] C[n, i, j]``).

    Returns:
        (N, K) tensor in ``probs``' dtype promoted to float32 at least, on ``probs``' device.

    Example::

        >>> expected_costs([[0.9, 0.1]], [[0, 100], [2000, 0]]).tolist()
        [[200.0, 90.0]]
    """
    c = _costs(costs)
    p = _probs(probs, "probs", c.shape[-1])
    _check_rows(c, p.shape[0], "probs")
    return _expected(p, c.to(p.device, p.dtype))


def bayes_decision(probs: Any, costs: Any) -> torch.Tensor:
    """The cost-optimal class for each sample: ``argmin_j sum_i p_i C[i, j]``.

    With a 2 x 2 cost matrix with a zero diagonal and (N,) probabilities of the positive class,
    this is the threshold rule ``predict 1 when p > c_fp / (c_fp + c_fn)``. Ties go to the lower
    class index. Per-sample costs (N, K, K) give each sample its own rule (binary: its own
    threshold).

    Args:
        probs: (N, K) class probabilities, or (N,) probabilities of the positive class for 2 x 2
            costs. Feed calibrated probabilities (:mod:`rwwce.calibration`): a model trained with
            RWWCE already leans towards the costly classes, see :func:`unweight_probabilities`.
        costs: a :class:`rwwce.CostMatrix`, a (K, K) array-like or (N, K, K) per-sample costs.

    Returns:
        int64 tensor of shape (N,) on ``probs``' device.

    Example::

        >>> bayes_decision([[0.5, 0.3, 0.2]], [[0, 1, 1], [1, 0, 1], [20, 20, 0]]).tolist()
        [2]
    """
    c = _costs(costs)
    raw = to_tensor(probs, "probs")
    if raw.ndim == 1 and c.shape == (2, 2) and float(c[0, 0]) == 0 and float(c[1, 1]) == 0:
        p = _probs(raw, "probs", 2)[:, 1]
        c_fn, c_fp = float(c[1, 0]), float(c[0, 1])
        if c_fn + c_fp == 0:
            return torch.zeros(p.shape, dtype=torch.int64, device=p.device)
        return (p > c_fp / (c_fp + c_fn)).to(torch.int64)
    return expected_costs(raw, c).argmin(dim=1)


# ---------------------------------------------------------------------- calibration
def _positive_scalar(v: Any, name: str) -> float:
    t = to_tensor(v, name)
    if t.numel() != 1:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)}; expected a scalar for binary (N,) probabilities"
        )
    f = float(t.reshape(()))
    if not f > 0 or f == float("inf"):
        raise ValueError(f"{name} is {f}; expected a finite weight > 0")
    return f


def unweight_probabilities(probs: Any, fn_weight: Any, fp_weight: Any = None) -> torch.Tensor:
    """Undo the lean of a cost-weighted model: recover calibrated probabilities ``p`` from its ``q``.

    A model trained with RWWCE does not learn ``p`` but the loss minimiser ``q``:

    * binary, ``fn * y * softplus(-z) + fp * (1 - y) * softplus(z)``:
      ``q = fn p / (fn p + fp (1 - p))``, inverted as ``p = fp q / (fp q + fn (1 - q))``;
    * multi-class with FN weights only (class-weighted cross-entropy): ``q_k ∝ fn_k p_k``,
      inverted as ``p_k ∝ q_k / fn_k``;
    * two-class softmax with an FP term: the same with ``fn_k + FP[k, 1 - k]`` in place of ``fn_k``.

    A general multi-class FP term has no closed-form inverse (NotImplementedError).

    Args:
        probs: (N,) binary probabilities of the positive class (``sigmoid`` output), or (N, K)
            class probabilities (``softmax`` output).
        fn_weight: binary: a positive scalar; multi-class: (K,) positive weights or a diagonal
            (K, K) matrix.
        fp_weight: binary: a positive scalar, ``None`` meaning 1.0; multi-class: ``None`` (or all
            zeros); for K == 2 also (K,) or (K, K) with a zero diagonal.

    Returns:
        Probabilities of ``probs``' shape, dtype and device.

    Example::

        >>> q = torch.tensor([0.5])        # a model trained with fn=3, fp=1 says 0.5 ...
        >>> unweight_probabilities(q, 3.0, 1.0)    # ... which means p = 1/4
        tensor([0.2500])
    """
    q = to_tensor(probs, "probs")
    if not q.is_floating_point():
        raise TypeError(f"probs has dtype {q.dtype}; expected floating-point probabilities")
    work = torch.promote_types(q.dtype, torch.float32)
    if q.ndim == 1:
        fn = _positive_scalar(fn_weight, "fn_weight")
        fp = 1.0 if fp_weight is None else _positive_scalar(fp_weight, "fp_weight")
        qq = _probs(q, "probs", 2)[:, 1].to(work)
        p = fp * qq / (fp * qq + fn * (1.0 - qq))
        return p.to(q.dtype)
    if q.ndim != 2:
        raise ValueError(
            f"probs has shape {tuple(q.shape)}; expected (N,) binary or (N, K) class probabilities"
        )
    k = q.shape[1]
    qq = _probs(q, "probs", k).to(work)
    fn = to_tensor(fn_weight, "fn_weight").to(q.device, work)
    if fn.shape == (k, k):
        check_fn_matrix_diagonal(fn)
        fn = torch.diagonal(fn)
    if fn.shape != (k,):
        raise ValueError(
            f"fn_weight has shape {tuple(fn.shape)}; expected ({k},) to match probs of shape "
            f"{tuple(q.shape)}"
        )
    if not bool(torch.isfinite(fn).all()) or not bool((fn > 0).all()):
        raise ValueError(
            f"fn_weight is {fn.tolist()}; expected finite weights > 0 (a class with weight 0 is "
            "never learned, so its probability cannot be recovered)"
        )
    w = fn
    if fp_weight is not None:
        fp = to_tensor(fp_weight, "fp_weight").to(q.device, work)
        if fp.shape == (k,):
            fp = fp.expand(k, k) * (1 - torch.eye(k, device=q.device, dtype=work))
        if fp.shape != (k, k):
            raise ValueError(
                f"fp_weight has shape {tuple(fp.shape)}; expected None, ({k},) or ({k}, {k})"
            )
        if bool(fp.any()):
            if k != 2:
                raise NotImplementedError(
                    f"unweight_probabilities: a {k}-class model trained with an FP term has no "
                    "closed-form inverse (its loss minimiser solves a non-linear system); it can "
                    "be inverted exactly only for binary / 2-class models or with fp_weight=None"
                )
            # 2 classes: 1 - q_j is the other class's probability, so the FP term folds into fn.
            w = fn + fp.sum(dim=1)
    p = qq / w
    p = p / p.sum(dim=1, keepdim=True)
    return p.to(q.dtype)


# ---------------------------------------------------------------------- scikit-learn scorer
def _label_indices(y: Any, labels: Any, cm: CostMatrix, name: str) -> np.ndarray:
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
        return _labels(arr.astype(np.int64), name, k).numpy()
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


def _label_cost(
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
    t = _label_indices(y_true, labels, cm, "y_true")
    p = _label_indices(y_pred, labels, cm, "y_pred")
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


def make_cost_scorer(costs: Any, *, labels: Any = None) -> Any:
    """A scikit-learn scorer: minus the Real World Cost of ``estimator.predict(X)``.

    For ``cross_val_score``, ``GridSearchCV(scoring=...)`` and ``TunedThresholdClassifierCV``
    (higher is better, so the cost is negated; ``sample_weight`` is honoured).

    Args:
        costs: a :class:`rwwce.CostMatrix` or a (K, K) array-like.
        labels: the class label of each row of ``costs`` (e.g. ``estimator.classes_``). Default:
            integer labels are row indices; other labels are matched against the
            ``CostMatrix``'s class names.

    Returns:
        A scorer made by ``sklearn.metrics.make_scorer`` (needs scikit-learn, the
        ``experiments`` extra).

    Example::

        >>> from sklearn.datasets import load_breast_cancer
        >>> from sklearn.linear_model import LogisticRegression
        >>> from sklearn.model_selection import cross_val_score
        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.preprocessing import StandardScaler
        >>> X, y = load_breast_cancer(return_X_y=True)
        >>> y = 1 - y                            # 1 = malignant: missing one costs 10
        >>> scorer = make_cost_scorer([[0, 1], [10, 0]])
        >>> model = make_pipeline(StandardScaler(), LogisticRegression())
        >>> round(float(cross_val_score(model, X, y, cv=5, scoring=scorer).mean()), 4)
        -0.1456
    """
    cm = as_cost_matrix(costs)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1).tolist()
        if len(labels) != cm.num_classes:
            raise ValueError(
                f"labels has {len(labels)} entries; expected {cm.num_classes}, one per row of costs"
            )
    _optional("sklearn", "make_cost_scorer", "scikit-learn")
    from sklearn.metrics import make_scorer

    return make_scorer(_label_cost, greater_is_better=False, costs=cm, labels=labels)


# ---------------------------------------------------------------------- cost curves
def _binary_scores(y_true: Any, scores: Any) -> tuple[torch.Tensor, torch.Tensor]:
    t = _labels(y_true, "y_true", 2).reshape(-1)
    s = to_tensor(scores, "scores")
    if s.is_complex():
        raise TypeError("scores is complex; expected real scores")
    if s.ndim != 1 or s.shape[0] != t.shape[0]:
        hint = " (for (N, 2) probabilities pass probs[:, 1])" if s.ndim == 2 else ""
        raise ValueError(
            f"scores has shape {tuple(s.shape)}; expected ({t.shape[0]},), one score of the "
            f"positive class per label{hint}"
        )
    s = s.to(t.device, torch.float64)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores contains NaN or infinite values; expected finite scores")
    positives = int(t.sum())
    if positives in (0, t.shape[0]):
        raise ValueError(
            f"y_true holds {'no' if positives == 0 else 'only'} positive labels; a cost curve "
            "needs both classes"
        )
    return t, s


def _operating_points(
    t: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every classifier ``predict 1 iff score >= threshold``: (thresholds, TP, FP), descending
    thresholds from ``+inf`` (all negative) to the lowest score (all positive)."""
    order = torch.argsort(s, descending=True, stable=True)
    ss, ts = s[order], t[order].to(torch.float64)
    tp, fp = torch.cumsum(ts, 0), torch.cumsum(1.0 - ts, 0)
    last = torch.ones_like(ss, dtype=torch.bool)
    last[:-1] = ss[1:] != ss[:-1]  # the last of each run of equal scores
    zero = torch.zeros(1, dtype=torch.float64, device=s.device)
    inf = torch.full((1,), math.inf, dtype=torch.float64, device=s.device)
    return torch.cat([inf, ss[last]]), torch.cat([zero, tp[last]]), torch.cat([zero, fp[last]])


def cost_curve(y_true: Any, scores: Any, *, points: int = 101) -> tuple[torch.Tensor, torch.Tensor]:
    """The Drummond-Holte cost curve of a binary scorer: its best normalised expected cost.

    For each probability cost ``pc`` on ``linspace(0, 1, points)`` the lower envelope, over all
    thresholds (``predict positive iff score >= threshold``) and the two trivial classifiers,
    of ``FNR * pc + FPR * (1 - pc)``. With prevalence ``pi`` and costs ``c_fn``, ``c_fp``, a
    deployment sits at ``pc = pi c_fn / (pi c_fn + (1 - pi) c_fp)``, and the curve's value there
    times ``pi c_fn + (1 - pi) c_fp`` is the lowest Real World Cost any threshold achieves on
    this data. Below the diagonals ``pc`` and ``1 - pc`` (the trivial classifiers) the model
    pays for itself. Drummond & Holte, "Cost curves", Machine Learning 65, 2006.

    Args:
        y_true: (N,) binary labels (0/1 or bool) with both classes present.
        scores: (N,) scores of the positive class (probabilities, logits or any monotone score).
        points: number of probability costs, at least 2. Default 101.

    Returns:
        ``(probability_cost, normalized_expected_cost)``: two float64 tensors of shape
        ``(points,)`` on ``scores``' device.

    Example::

        >>> pc, nec = cost_curve([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], points=5)
        >>> nec.tolist()
        [0.0, 0.125, 0.25, 0.125, 0.0]
    """
    if isinstance(points, bool) or not isinstance(points, numbers.Integral) or points < 2:
        raise ValueError(f"points is {points!r}; expected an int >= 2")
    t, s = _binary_scores(y_true, scores)
    _, tp, fp = _operating_points(t, s)
    positives = tp[-1]
    fnr, fpr = 1.0 - tp / positives, fp / fp[-1]
    pc = torch.linspace(0, 1, int(points), dtype=torch.float64, device=s.device)
    nec = torch.full_like(pc, math.inf)
    step = max(1, (1 << 22) // int(points))  # bound the (points, thresholds) block in memory
    for i in range(0, fnr.shape[0], step):
        block = fnr[None, i : i + step] * pc[:, None] + fpr[None, i : i + step] * (1 - pc[:, None])
        nec = torch.minimum(nec, block.min(dim=1).values)
    return pc, nec


# ---------------------------------------------------------------------- plots
def _optional(module: str, feature: str, package: str | None = None) -> Any:
    """Import an optional dependency, or say which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModuleNotFoundError(
            f"{feature} needs {package or module}, which is not installed; install rwwce's "
            "experiments extra: pip install 'rwwce[experiments]'"
        ) from None


def _check_figure_path(path: str | os.PathLike[str]) -> None:
    """Fail before any work on a figure path that cannot be written."""
    from matplotlib.figure import Figure

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; expected a file name such as plot.png")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: no such directory {directory!r}")
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    formats = Figure().canvas.get_supported_filetypes()
    if suffix not in formats:
        raise ValueError(
            f"cannot write {path!r}: unknown figure format {suffix!r}; expected a suffix such "
            f"as {', '.join('.' + f for f in sorted(formats))}"
        )


def _new_figure(nrows: int, ncols: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib Figure without pyplot: no backend is chosen or changed (works headless)."""
    _optional("matplotlib", "plotting")
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols)


def _thinned(*arrays: np.ndarray, limit: int = 4000) -> tuple[np.ndarray, ...]:
    n = arrays[0].shape[0]
    if n <= limit:
        return arrays
    keep = np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))
    return tuple(a[keep] for a in arrays)


def plot_cost_curve(
    y_true: Any,
    scores: Any,
    costs: Any = None,
    *,
    points: int = 101,
    axes: Any = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Draw the cost curve (:func:`cost_curve`) beside the cost-versus-threshold curve.

    Left: the normalised expected cost against the probability cost, with the two trivial
    classifiers (dashed); with ``costs``, a marker at the deployment's probability cost.
    Right: the Real World Cost per sample of ``predict 1 iff score >= threshold`` on this data
    against the threshold, with its minimum and, for probability scores, the Bayes threshold
    ``c_fp / (c_fp + c_fn)``. Needs matplotlib (``pip install 'rwwce[experiments]'``).

    Args:
        y_true: (N,) binary labels.
        scores: (N,) scores of the positive class.
        costs: a 2 x 2 :class:`rwwce.CostMatrix` or array-like; default the 0-1 cost (errors).
        points: resolution of the cost curve.
        axes: two matplotlib ``Axes`` to draw into; default a new figure.
        path: if given, the figure is saved there atomically (format from the suffix).

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    _optional("matplotlib", "plot_cost_curve")
    from rwwce._io import save_figure

    if path is not None:
        _check_figure_path(path)
    cm = as_cost_matrix([[0, 1], [1, 0]] if costs is None else costs)
    if cm.num_classes != 2:
        raise ValueError(f"costs has {cm.num_classes} classes; a cost curve needs 2 x 2 costs")
    c = cm.matrix.numpy()
    pc, nec = cost_curve(y_true, scores, points=points)
    t, s = _binary_scores(y_true, scores)
    thresholds, tp, fp = _operating_points(t, s)
    n, positives = t.shape[0], float(tp[-1])
    tp, fp = tp.cpu().numpy(), fp.cpu().numpy()
    fn, tn = positives - tp, (n - positives) - fp
    cost = (fn * c[1, 0] + fp * c[0, 1] + tp * c[1, 1] + tn * c[0, 0]) / n
    thr = thresholds.cpu().numpy()
    if axes is None:
        fig, axes = _new_figure(1, 2, (9.0, 3.8))
    left, right = axes
    fig = left.figure
    pc_np, nec_np = pc.cpu().numpy(), nec.cpu().numpy()
    left.plot(pc_np, nec_np, color="tab:blue", label="model (lower envelope)")
    left.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="always negative / positive")
    left.plot([0, 1], [1, 0], "--", color="gray", linewidth=1)
    c_fn, c_fp = c[1, 0] - c[1, 1], c[0, 1] - c[0, 0]  # regrets: what a wrong call adds
    prior = positives / n
    if costs is not None and prior * c_fn + (1 - prior) * c_fp > 0:
        op = prior * c_fn / (prior * c_fn + (1 - prior) * c_fp)
        left.axvline(op, color="tab:red", linewidth=1, label=f"these costs: pc = {op:.3g}")
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    left.set_xlabel("probability cost pc")
    left.set_ylabel("normalised expected cost")
    left.set_title("cost curve")
    left.legend(loc="upper right", fontsize=8)
    finite = np.isfinite(thr)
    x, y = _thinned(thr[finite], cost[finite])
    right.step(x, y, where="post", color="tab:blue", label="predict 1 iff score >= threshold")
    best = int(np.argmin(cost))
    best_thr = thr[best] if np.isfinite(thr[best]) else thr[finite].max()
    right.plot([best_thr], [cost[best]], "o", color="tab:green", label=f"lowest: {cost[best]:.4g}")
    s_np = s.cpu().numpy()
    if (s_np >= 0).all() and (s_np <= 1).all() and c_fn + c_fp > 0:
        bayes = c_fp / (c_fp + c_fn)
        right.axvline(bayes, color="tab:red", linewidth=1, label=f"Bayes threshold {bayes:.3g}")
    right.set_xlabel("threshold on the score")
    right.set_ylabel("Real World Cost per sample" if costs is not None else "error rate")
    right.set_title("cost versus threshold")
    right.legend(loc="best", fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_prediction_costs(
    y_true: Any,
    costs: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    probs: Any = None,
    y_pred: Any = None,
) -> Any:
    """The picture for a predictions file (``rwwce cost ... --plot FILE.png``).

    Binary with probabilities: :func:`plot_cost_curve` of ``P(positive)``. Otherwise bars: for
    each true class, the cost its samples contribute to the Real World Cost per sample (bars of
    one colour sum to it), for ``y_pred`` and, from ``probs``, the arg-max and the Bayes
    decisions. Needs matplotlib.

    Args:
        y_true: (N,) class indices.
        costs: a :class:`rwwce.CostMatrix` or (K, K) array-like (class names label the bars).
        path: if given, the figure is saved there atomically.
        probs: (N, K) class probabilities, or ``None``.
        y_pred: (N,) predicted class indices, or ``None``. At least one of the two.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    _optional("matplotlib", "plot_prediction_costs")
    from rwwce._io import save_figure

    if path is not None:
        _check_figure_path(path)
    if probs is None and y_pred is None:
        raise ValueError("probs and y_pred are both None; expected at least one of them")
    cm = as_cost_matrix(costs)
    k = cm.num_classes
    if probs is not None:
        p = _probs(probs, "probs", k)
        if k == 2:
            return plot_cost_curve(y_true, p[:, 1], cm, path=path)
    t = _labels(y_true, "y_true", k).reshape(-1)
    rules: dict[str, Any] = {}
    if y_pred is not None:
        rules["y_pred"] = y_pred
    if probs is not None:
        rules["arg-max"] = p.argmax(dim=1)
        rules["Bayes decision"] = bayes_decision(p, cm)
    fig, ax = _new_figure(1, 1, (max(5.0, 0.9 * k + 2.5), 3.8))
    width = 0.8 / len(rules)
    x = np.arange(k)
    for r, (name, pred) in enumerate(rules.items()):
        t2, p2 = _label_pair(t, pred, k)
        per = _element_costs(t2, p2, cm.matrix)
        share = torch.zeros(k, dtype=torch.float64).index_add_(0, t2.cpu(), per.cpu()) / t2.numel()
        total = float(share.sum())
        ax.bar(
            x + (r - (len(rules) - 1) / 2) * width,
            share.numpy(),
            width,
            label=f"{name}: {total:.4g}",
        )
    ax.set_xticks(x, list(cm.classes), rotation=30 if k > 6 else 0)
    ax.set_xlabel("true class")
    ax.set_ylabel("cost per sample (its share)")
    ax.set_title("Real World Cost by true class")
    ax.legend(fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig
