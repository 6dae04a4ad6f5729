"""The prepared problem: the one place that turns a loss call into the flat backend problem.

A call ``(input, target, fn_weight, fp_weight, sample_weight, sample_costs, ignore_index,
reduction, label_smoothing, input_type, validate, global_normalize)`` becomes a
:class:`rwwce.kernels.Problem` in two steps:

1. :func:`check_call`, the one entry for the checks: static checks (types, shapes, options;
   always), data checks (values; see :func:`rwwce._validate.should_check_data`), and the weights
   normalised to tensors in the compute dtype: fn as (K,), FP as given, sample weights per
   element, per-sample costs as rows.
2. :func:`prepare` (of a checked call): rows flattened with the classes last, the ignore mask, label smoothing,
   per-row FN/FP weights from ``sample_costs``, and the reduction's denominator folded into the
   per-row scale.

Every consumer of the loss's structure (the functional loss, ``monitor.loss_breakdown``, the
Hugging Face Trainer's global denominator) asks here instead of keeping its own copy. Everything
is built with differentiable operations: gradients reach the soft target, ``fn_weight``,
``fp_weight``, ``sample_weight`` and ``sample_costs`` through the denominator too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rwwce import _validate as V
from rwwce.kernels import Problem
from rwwce.kernels.reference import compute_dtype


@dataclass(frozen=True)
class CheckedCall:
    """A checked call with its weights normalised (see :func:`check_call`).

    ``input`` and ``target`` have a batch dimension (an unbatched (K,) call gets one, and
    ``unbatched`` says so). ``fn`` is (K,) or ``None`` (all ones); ``fp`` ``None``, (K,) or (K, K);
    ``sample_weight`` has the element shape (N, d1, ..., dk) or is ``None``; ``costs`` is the
    (M, K) per-element cost rows or ``None``. Weights are in ``dtype``, on the input's device
    (0-dim CPU tensors excepted), and keep their autograd history. The options are the call's.
    """

    input: Tensor
    target: Tensor
    unbatched: bool
    element_shape: tuple[int, ...]
    num_classes: int
    soft: bool
    dtype: torch.dtype
    fn: Tensor | None
    fp: Tensor | None
    sample_weight: Tensor | None
    costs: Tensor | None
    ignore_index: int
    reduction: str
    label_smoothing: float
    input_type: str


@dataclass(frozen=True)
class Prepared:
    """A call turned into the backend's flat problem, plus what consumers need around it.

    ``problem`` is what a backend solves; ``element_shape`` / ``unbatched`` shape a ``'none'``
    result back; ``valid`` (M,) marks non-ignored rows (``None`` for probability targets);
    ``row_weight`` (M,) is valid x sample weight; ``classes`` is the (M,) index target (ignored
    rows hold class 0) or the (M, K) probabilities before label smoothing.
    """

    problem: Problem
    element_shape: tuple[int, ...]
    unbatched: bool
    valid: Tensor | None
    row_weight: Tensor
    classes: Tensor


def check_call(
    input: Tensor,
    target: Tensor,
    fn_weight: object = None,
    fp_weight: object = None,
    *,
    sample_weight: object = None,
    sample_costs: object = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    input_type: str = "logits",
    validate: bool | None = None,
    dtype: torch.dtype | None = None,
) -> CheckedCall:
    """Check a multi-class loss call once and return its normalised weights.

    Static checks always run; data checks follow :func:`rwwce._validate.should_check_data`
    (never under ``torch.compile`` or a ``torch.func`` transform). ``dtype`` overrides the
    compute dtype (float32, or float64 for float64 input).
    """
    V.check_loss_arguments(input, target, reduction, input_type)
    V.check_label_smoothing(label_smoothing)
    ignore_index = V.check_ignore_index(ignore_index)

    unbatched = input.dim() == 1
    if unbatched:
        input, target = input.unsqueeze(0), target.unsqueeze(0)
        if sample_weight is not None and torch.as_tensor(sample_weight).dim() == 0:
            sample_weight = torch.as_tensor(sample_weight).reshape(1)
        if isinstance(sample_costs, Tensor) and sample_costs.dim() == 1:
            sample_costs = sample_costs.unsqueeze(0)
    if input.dim() == 0:
        raise ValueError("input must have a class dimension: shape (K,), (N, K) or (N, K, ...)")
    num_classes = input.shape[1]
    element_shape = (input.shape[0], *input.shape[2:])
    soft = _is_soft_target(input, target, element_shape)

    dtype = compute_dtype(input.dtype) if dtype is None else dtype
    device = input.device
    fn_given, fn, fp = weight_tensors(fn_weight, fp_weight, num_classes, device, dtype)
    weights = V.as_tensor("sample_weight", sample_weight, device=device, dtype=dtype)
    weights = _sample_weight_per_element(weights, element_shape)
    costs = V.as_tensor("sample_costs", sample_costs, device=device, dtype=dtype)
    if costs is not None:
        _check_sample_costs_call(costs, input, soft, fn_given, fp, label_smoothing)

    if V.should_check_data(validate, input, target, fn_given, fp, weights, costs):
        with torch.no_grad():  # values only: no autograd history on the check's results
            check_weight_data(fn_given, fp, weights, costs)
            if input_type == "probs":
                V.check_probabilities(input)
            else:
                V.check_logits(input)
                V.warn_if_probabilities(input, stacklevel=5)  # the loss function's caller
            if soft:
                V.check_soft_targets(classes_last(target))
            else:
                V.check_class_targets(target, num_classes, ignore_index)

    return CheckedCall(
        input=input,
        target=target,
        unbatched=unbatched,
        element_shape=element_shape,
        num_classes=num_classes,
        soft=soft,
        dtype=dtype,
        fn=fn,
        fp=fp,
        sample_weight=weights,
        costs=None if costs is None else classes_last(costs),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=float(label_smoothing),
        input_type=input_type,
    )


def prepare(call: CheckedCall, global_normalize: bool = False) -> Prepared:
    """The flat :class:`~rwwce.kernels.Problem` of a checked multi-class loss call, with
    ``reduce = reduction != 'none'``. ``global_normalize``: see :func:`row_scale`."""
    dtype, num_classes = call.dtype, call.num_classes
    reduction, label_smoothing = call.reduction, call.label_smoothing
    logits = classes_last(as_logits(call.input, call.input_type))
    fn = call.fn
    if fn is None:
        fn = torch.ones(num_classes, dtype=dtype, device=logits.device)

    if call.soft:
        classes = classes_last(call.target).to(dtype)
        target_rows = classes
        if label_smoothing:
            target_rows = classes * (1.0 - label_smoothing) + label_smoothing / num_classes
        smoothing, valid = 0.0, None
        row_weight = torch.ones(classes.shape[0], dtype=dtype, device=logits.device)
    else:
        valid, classes = index_rows(call.target, call.ignore_index)
        target_rows = classes
        smoothing = float(label_smoothing)
        row_weight = valid.to(dtype)
    if call.sample_weight is not None:
        row_weight = row_weight * call.sample_weight.reshape(-1)

    fn_rows = fp_rows = None
    if call.costs is not None:
        fn_rows, fp_rows = cost_rows(call.costs, classes)

    total = denominator(reduction, row_weight, classes, valid, fn, fn_rows)
    problem = Problem(
        logits=logits,
        target=target_rows,
        fn_weight=fn,
        fp_weight=call.fp,
        row_scale=row_scale(row_weight, total, global_normalize),
        fn_rows=fn_rows,
        fp_rows=fp_rows,
        label_smoothing=smoothing,
        reduce=reduction != "none",
    )
    return Prepared(problem, call.element_shape, call.unbatched, valid, row_weight, classes)


def index_rows(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Class-index targets of any shape as rows: ``(valid, classes)``, both (M,), where ignored
    targets hold class 0 (a valid placeholder the row scale will zero)."""
    flat = target.reshape(-1).long()
    valid = flat != ignore_index
    return valid, torch.where(valid, flat, torch.zeros_like(flat))


def cost_rows(costs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row loss weights from per-element cost rows, as ``CostMatrix.loss_weights`` does for a
    matrix: fn_i = min_{j != t_i} c_ij and FP_i[j] = c_ij - fn_i (0 at j = t_i).

    Args:
        costs: (M, K) cost of predicting each class for each row.
        target: (M,) class indices in [0, K).

    Returns:
        ``fn_rows`` (M,) and ``fp_rows`` (M, K). Differentiable w.r.t. ``costs``; at ties
        ``amin`` shares the gradient evenly among the minima (a subgradient).
    """
    is_target = torch.arange(costs.shape[1], device=costs.device) == target.unsqueeze(1)
    fn_rows = costs.masked_fill(is_target, float("inf")).amin(dim=1)
    fp_rows = (costs - fn_rows.unsqueeze(1)).masked_fill(is_target, 0.0)
    return fn_rows, fp_rows


def denominator(
    reduction: str,
    row_weight: Tensor,
    target: Tensor,
    valid: Tensor | None,
    fn: Tensor | None = None,
    fn_rows: Tensor | None = None,
) -> Tensor | None:
    """What ``'mean'`` / ``'weighted_mean'`` divide by (``None`` for ``'sum'`` / ``'none'``).

    ``'mean'``: the number of non-ignored rows (of rows for probability targets, ``valid`` None).
    ``'weighted_mean'``: sum of row_weight * fn[t] (``fn_rows`` when given; fn ``None`` means all
    ones), or of row_weight for probability targets. Differentiable w.r.t. fn and row_weight.
    """
    if reduction == "mean":
        if valid is None:
            return torch.ones_like(row_weight).sum()  # a tensor, so that M never specialises
        return valid.sum().to(row_weight.dtype)
    if reduction != "weighted_mean":
        return None
    if valid is None:
        return row_weight.sum()
    if fn_rows is not None:
        return (row_weight * fn_rows).sum()
    if fn is None:
        return row_weight.sum()
    # Unchecked targets (validate=False, or CUDA by default) must not index past fn: an
    # out-of-range class gives a NaN denominator (visible), as the Triton kernel's NaN row.
    num_classes = fn.shape[0]
    in_range = (target >= 0) & (target < num_classes)
    fn_target = torch.where(in_range, fn[target.clamp(0, num_classes - 1)], float("nan"))
    return (row_weight * fn_target).sum()


def row_scale(row_weight: Tensor, denominator: Tensor | None, global_normalize: bool) -> Tensor:
    """Per-row factor: ignore mask x sample weight / denominator (0 when the denominator is 0).

    Under ``global_normalize`` the denominator is summed over processes and the result times the
    world size; the gradient flows through this process's own share of the sum.
    """
    if denominator is None:
        return row_weight
    denominator = denominator.to(row_weight.dtype)
    scale = 1.0
    if global_normalize:
        total, scale = _all_reduce_sum(denominator.detach())
        denominator = denominator + (total - denominator.detach())
    positive = denominator > 0
    safe = torch.where(positive, denominator, torch.ones_like(denominator))
    return torch.where(positive, row_weight * (scale / safe), torch.zeros_like(row_weight))


def classes_last(tensor: Tensor) -> Tensor:
    """(N, K, d1, ..., dk) -> (N * d1 * ... * dk, K); (N, K) unchanged."""
    if tensor.dim() == 2:
        return tensor
    return tensor.movedim(1, -1).reshape(-1, tensor.shape[1])


def as_logits(input: Tensor, input_type: str) -> Tensor:
    """Logits as given, or log-probabilities (softmax(log p) = p for rows that sum to 1)."""
    if input_type == "logits":
        return input
    probs = input.to(compute_dtype(input.dtype))
    return torch.log(probs.clamp_min(torch.finfo(torch.float32).tiny))


def _all_reduce_sum(value: Tensor) -> tuple[Tensor, int]:
    """Sum over the default process group, and the world size (1 outside torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value, 1
    total = value.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total, dist.get_world_size()


def _is_soft_target(input: Tensor, target: Tensor, element_shape: tuple[int, ...]) -> bool:
    """Class probabilities (the input's shape, floating) or class indices (integer)."""
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(
            f"target must hold class indices or probabilities; got dtype {target.dtype}"
        )
    if target.is_floating_point():
        if target.shape == input.shape:
            return True
        if tuple(target.shape) == element_shape:
            raise TypeError(
                f"target has the class-index shape {tuple(target.shape)} but dtype {target.dtype}; "
                "class indices must be an integer dtype (use target.long())"
            )
        raise ValueError(
            f"target given as class probabilities must have the input's shape "
            f"{tuple(input.shape)}; got {tuple(target.shape)}"
        )
    if tuple(target.shape) != element_shape:
        raise ValueError(
            f"target of class indices must have shape {element_shape} for input of shape "
            f"{tuple(input.shape)}; got {tuple(target.shape)} (for one-hot or probability "
            "targets use a floating dtype)"
        )
    return False


def _sample_weight_per_element(
    weights: Tensor | None, element_shape: tuple[int, ...]
) -> Tensor | None:
    """(N,) or the element shape (N, d1, ..., dk), expanded to the element shape."""
    if weights is None:
        return None
    if tuple(weights.shape) == element_shape:
        return weights
    if weights.dim() == 1 and weights.shape[0] == element_shape[0]:
        return weights.reshape(-1, *([1] * (len(element_shape) - 1))).expand(element_shape)
    raise ValueError(
        f"sample_weight must have shape ({element_shape[0]},) or {element_shape}; "
        f"got {tuple(weights.shape)}"
    )


def _check_sample_costs_call(
    costs: Tensor,
    input: Tensor,
    soft: bool,
    fn_weight: Tensor | None,
    fp_weight: Tensor | None,
    label_smoothing: float,
) -> None:
    """``sample_costs``: the input's shape, class-index targets, no fn/fp weights, no smoothing."""
    if tuple(costs.shape) != tuple(input.shape):
        raise ValueError(
            f"sample_costs must have the input's shape {tuple(input.shape)} (the cost of "
            f"predicting each class for each element); got shape {tuple(costs.shape)}"
        )
    if input.shape[1] < 2:
        raise ValueError(f"sample_costs needs at least 2 classes; the input has {input.shape[1]}")
    if soft:
        raise ValueError(
            "sample_costs needs class-index targets (an integer dtype); got class probabilities"
        )
    check_sample_costs_options(fn_weight, fp_weight, label_smoothing)


def weight_tensors(
    fn_weight: object, fp_weight: object, num_classes: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The class weights as tensors, shapes checked: ``fn_weight`` as given, as a (K,) vector
    (``None`` for all ones), and ``fp_weight`` (``None``, (K,) or (K, K))."""
    fn_given = V.as_tensor("fn_weight", fn_weight, device=device, dtype=dtype)
    fn = V.fn_weight_vector(fn_given, num_classes)
    fp = V.as_tensor("fp_weight", fp_weight, device=device, dtype=dtype)
    V.check_fp_weight_shape(fp, num_classes)
    return fn_given, fn, fp


def check_weight_data(
    fn_given: Tensor | None, fp: Tensor | None, weights: Tensor | None, costs: Tensor | None
) -> None:
    """The data checks of the weights: finite and >= 0, an FN matrix diagonal, a zero FP
    diagonal (reads values: callers decide when, see :func:`rwwce._validate.should_check_data`)."""
    V.check_weight_values("fn_weight", fn_given)
    V.check_fn_matrix_diagonal(fn_given)
    V.check_weight_values("fp_weight", fp)
    V.check_fp_diagonal(fp)
    V.check_weight_values("sample_weight", weights)
    V.check_weight_values("sample_costs", costs)


def check_sample_costs_options(
    fn_weight: object, fp_weight: object, label_smoothing: float
) -> None:
    """``sample_costs`` replaces ``fn_weight`` and ``fp_weight`` and excludes label smoothing."""
    if fn_weight is not None or fp_weight is not None:
        given = [
            n for n, w in (("fn_weight", fn_weight), ("fp_weight", fp_weight)) if w is not None
        ]
        raise ValueError(
            f"sample_costs replaces fn_weight and fp_weight; got {' and '.join(given)} as well "
            "(pass either the per-element costs or the class weights)"
        )
    if label_smoothing:
        raise ValueError(
            f"sample_costs cannot be combined with label_smoothing (got {label_smoothing}): a "
            "cost row defines the loss for one true class"
        )
