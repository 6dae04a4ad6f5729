"""The prepared problem: the one place that turns a checked loss call into the flat backend problem.

A loss call goes one way, down the layers, and never back:

1. :func:`rwwce._validate.check_call`, the one entry for the checks, returns a
   :class:`CheckedCall`: static checks (types, shapes, options; always), data checks (values; see
   :func:`rwwce._validate.should_check_data`), and the weights normalised to tensors in the
   compute dtype: fn as (K,), FP as given, sample weights per element, per-sample costs.
2. :func:`prepare` turns it into a :class:`rwwce.kernels.Problem`: rows flattened with the classes
   last, the ignore mask, label smoothing, per-row FN/FP weights from ``sample_costs``, and the
   reduction's denominator folded into the per-row scale.
3. :func:`rwwce.kernels.dispatch.pick_backend` chooses the backend that solves it.

This module builds; it checks nothing (a :class:`CheckedCall` is checked by construction).
Every consumer of the loss's structure (the functional loss, the fused linear loss,
``monitor.loss_breakdown``, the Hugging Face Trainer's global denominator) asks here instead of
keeping its own copy. Everything is built with differentiable operations: gradients reach the
soft target, ``fn_weight``, ``fp_weight``, ``sample_weight`` and ``sample_costs`` through the
denominator too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rwwce.kernels import Problem
from rwwce.kernels.reference import compute_dtype


@dataclass(frozen=True)
class CheckedCall:
    """A multi-class loss call, checked, with its weights normalised: what
    :func:`rwwce._validate.check_call` returns and :func:`prepare` takes.

    ``input`` and ``target`` have a batch dimension (an unbatched (K,) call gets one, and
    ``unbatched`` says so). ``fn`` is (K,) or ``None`` (all ones); ``fp`` ``None``, (K,) or (K, K);
    ``sample_weight`` has the element shape (N, d1, ..., dk) or is ``None``; ``costs`` has the
    input's shape (N, K, d1, ..., dk) or is ``None``. Weights are in ``dtype``, on the input's
    device (0-dim CPU tensors excepted), and keep their autograd history. The options are the
    call's.
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
    rows hold class 0) or the (M, K) probabilities before label smoothing; ``denominator`` is
    this process's reduction denominator (0-dim; ``None`` for ``'none'`` and ``'sum'``).
    """

    problem: Problem
    element_shape: tuple[int, ...]
    unbatched: bool
    valid: Tensor | None
    row_weight: Tensor
    classes: Tensor
    denominator: Tensor | None = None


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
        fn_rows, fp_rows = cost_rows(classes_last(call.costs), classes)

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
    return Prepared(problem, call.element_shape, call.unbatched, valid, row_weight, classes, total)


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


def global_denominator_gradient(loss: Tensor, denominator: Tensor | None) -> Tensor:
    """A reduced ``global_normalize`` loss with the denominator's gradient made global.

    This process's loss is W N_r / D (W processes, N_r its weighted sum of row losses, D the
    denominator summed over processes), and :func:`row_scale` lets the gradient reach only this
    process's share D_r of D. After DDP averages, a parameter that the denominator depends on
    (a learned ``fn_weight``: ``'weighted_mean'`` divides by sum s_i fn_{t_i}) would get
    sum_r (dN_r / D - N_r dD_r / D^2), where the global batch's gradient is
    sum_r dN_r / D - N dD_r / D^2 with N = sum_r N_r. The term added here is 0 in value and
    gives -W (N - N_r) dD_r / D^2, the difference. It costs one more all-reduce (of a number),
    and only when the denominator needs a gradient; outside torch.distributed it adds nothing.
    """
    if denominator is None or not denominator.requires_grad:
        return loss
    total, world = _all_reduce_sum(denominator.detach().to(loss.dtype))
    if world == 1:
        return loss
    positive = total > 0
    safe = torch.where(positive, total, torch.ones_like(total))
    local = torch.where(positive, loss.detach() * total / world, torch.zeros_like(total))
    numerator, _ = _all_reduce_sum(local)
    factor = torch.where(positive, world * (numerator - local) / safe**2, torch.zeros_like(total))
    share = denominator.to(loss.dtype)
    return loss - factor * (share - share.detach())


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
