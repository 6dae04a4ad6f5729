"""Argument checks shared by :mod:`rwwce.functional`, :mod:`rwwce.modules` and the rest of the
package (cost values, class names, ``ignore_index``).

Two kinds of check:

* static checks (types, shapes, option strings) read only metadata and always run;
* data checks (ranges, NaN, distributions) read tensor values, which synchronises with a GPU, so
  they run only when asked (``validate=True``, a module's first call, or CPU tensors by default).

Each loss has one entry that runs every check of its call, once, and returns the weights
normalised to tensors: :func:`check_call` (the multi-class loss; a
:class:`rwwce._problem.CheckedCall`, which :func:`rwwce._problem.prepare` then builds into the
backend's problem), :func:`check_linear_call` (the fused linear loss) and
:func:`check_binary_call`. The input warnings (:func:`warn_if_probabilities`,
:func:`warn_if_sigmoid_output`) name the user's line, found by :func:`user_stacklevel`.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor

from rwwce._problem import CheckedCall, classes_last
from rwwce.kernels.reference import compute_dtype, is_traced

Reduction = Literal["none", "sum", "mean", "weighted_mean"]
InputType = Literal["logits", "probs"]
Backend = Literal["auto", "torch", "triton"]

REDUCTIONS = ("none", "sum", "mean", "weighted_mean")
INPUT_TYPES = ("logits", "probs")
BACKENDS = ("auto", "torch", "triton")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_input(input: object, name: str = "input") -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(input).__name__}")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64; got dtype {input.dtype}"
        )


def check_loss_arguments(input: object, target: object, reduction: str, input_type: str) -> None:
    """The static checks every loss shares: tensor types, the reduction and the input type."""
    check_input(input)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor; got {type(target).__name__}")
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("input_type", input_type, INPUT_TYPES)


def check_label_smoothing(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"label_smoothing must be a float in [0, 1]; got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"label_smoothing must be a float in [0, 1]; got {value!r}")


def to_tensor(x: Any, name: str) -> Tensor:
    """Turn a tensor (any device), NumPy array, list or scalar into a tensor, keeping its device.

    Tensors are detached and returned as they are; everything else goes through NumPy, so nested
    lists of Python floats become float64 and lists of ints become int64.
    """
    if isinstance(x, Tensor):
        return x.detach()
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{name} could not be turned into an array ({err}); expected a tensor, a NumPy array "
            "or a (nested) list of numbers with equal-length rows"
        ) from None
    if arr.dtype == object or arr.dtype.kind in "USVMm":
        raise TypeError(
            f"{name} has dtype {arr.dtype}; expected numbers (a tensor, a NumPy array or a "
            "nested list of ints / floats)"
        )
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} is complex ({arr.dtype}); expected real numbers")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    # ascontiguousarray makes a 0-dim array 1-dim: a number stays 0-dim, as in PyTorch.
    return torch.as_tensor(np.ascontiguousarray(arr).reshape(arr.shape))


def check_num_classes(num_classes: Any, *, required: bool = True) -> int | None:
    """A positive int (``None`` passes through when not ``required``)."""
    if num_classes is None and not required:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise ValueError(f"num_classes is {num_classes!r}; expected a positive int")
    if num_classes < 1:
        raise ValueError(f"num_classes is {num_classes}; expected a positive int")
    return int(num_classes)


def should_check_data(validate: bool | None, *tensors: Tensor | None) -> bool:
    """``validate=None`` checks data only when nothing lives on an accelerator (no sync).

    Never under ``torch.compile``, ``torch.func`` transforms or tracing, whatever ``validate``
    says: a data check reads values on the host, which a traced graph cannot do (it would break
    the graph, or fail under ``vmap``). Static checks (types, shapes, options) still run there.
    """
    if is_traced():
        return False
    if validate is not None:
        return bool(validate)
    return all(t is None or t.device.type == "cpu" for t in tensors)


def as_tensor(
    name: str, value: object, *, device: torch.device, dtype: torch.dtype
) -> Tensor | None:
    """Weights given as a tensor, a NumPy array, a list or a number, as a tensor on ``device``.

    A tensor on another device than the input is an error, as in PyTorch: moving it here would
    copy it on every call, a hidden host-to-device transfer and synchronisation per step. Numbers
    and 0-dim CPU tensors stay on the CPU: PyTorch passes them to kernels as scalars, with no copy.
    A tensor keeps its autograd history (the losses differentiate w.r.t. their weights); numbers
    become 0-dim tensors. Numbers, and lists under ``torch.compile``, become tensors without NumPy,
    so that a compiled call with weights given as numbers or lists has no graph break.
    """
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers; got dtype {value.dtype}")
        cpu_scalar = value.dim() == 0 and value.device.type == "cpu"
        if value.device != device and not cpu_scalar:
            raise ValueError(
                f"{name} is on {value.device} but the input is on {device}; move it once with "
                f"{name}.to({str(device)!r}) (the modules keep weights as buffers that follow .to())"
            )
        return value.to(dtype=dtype)  # keeps its autograd history: weights can be learned
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a tensor of weights; got {value!r}")
    if type(value) in (int, float) or (is_traced() and isinstance(value, (list, tuple))):
        tensor = torch.tensor(value, dtype=dtype)  # not through NumPy: torch.compile traces it
    else:
        tensor = to_tensor(value, name).to(dtype)
    return tensor if tensor.dim() == 0 else tensor.to(device)


def fn_weight_vector(fn_weight: Tensor | None, num_classes: int) -> Tensor | None:
    """Accept (K,) or the paper's (K, K) diagonal form; return (K,). Shape checks only."""
    if fn_weight is None:
        return None
    if fn_weight.dim() == 1 and fn_weight.shape[0] == num_classes:
        return fn_weight
    if fn_weight.dim() == 2 and tuple(fn_weight.shape) == (num_classes, num_classes):
        return torch.diagonal(fn_weight)
    raise ValueError(
        f"fn_weight must have shape ({num_classes},) or the diagonal form ({num_classes}, "
        f"{num_classes}) for {num_classes} classes; got shape {tuple(fn_weight.shape)}"
    )


def check_fp_weight_shape(fp_weight: Tensor | None, num_classes: int) -> None:
    if fp_weight is None:
        return
    # Dimension by dimension (not a tuple lookup), so that symbolic sizes under torch.compile
    # compare as numbers.
    vector = fp_weight.dim() == 1 and fp_weight.shape[0] == num_classes
    matrix = fp_weight.dim() == 2 and fp_weight.shape[0] == fp_weight.shape[1] == num_classes
    if not (vector or matrix):
        raise ValueError(
            f"fp_weight must be None, shape ({num_classes},) or ({num_classes}, {num_classes}) "
            f"for {num_classes} classes; got shape {tuple(fp_weight.shape)}"
        )
    if num_classes < 2:
        raise ValueError(f"fp_weight needs at least 2 classes; the input has {num_classes}")


def check_weight_values(name: str, weight: Tensor | None) -> None:
    """Finite and non-negative (a data check). PyTorch accepts negative class weights; a negative
    cost would reward the mistake it is meant to penalise, so we refuse it."""
    if weight is None or weight.numel() == 0:
        return
    low, high = torch.aminmax(weight)  # NaN propagates to both
    if bool(low >= 0) and bool(high < float("inf")):
        return
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(
            f"{name} must be finite; got {_first_bad(weight, ~torch.isfinite(weight))}"
        )
    if bool((weight < 0).any()):
        raise ValueError(
            f"{name} must be non-negative (a negative cost would reward that mistake); "
            f"got {_first_bad(weight, weight < 0)}"
        )


def check_fn_matrix_diagonal(fn_weight: Tensor | None, name: str = "fn_weight") -> None:
    """FN weights given as a (K, K) matrix must be diagonal (the paper's notebook form)."""
    if fn_weight is None or fn_weight.dim() != 2:
        return
    off_diagonal = fn_weight - torch.diag(torch.diagonal(fn_weight))
    if bool((off_diagonal != 0).any()):
        raise ValueError(
            f"{name} given as a (K, K) matrix must be diagonal (the paper's form); "
            f"got a non-zero off-diagonal entry {_first_bad(fn_weight, off_diagonal != 0)}; "
            "put false-positive costs in fp_weight"
        )


def check_fp_diagonal(fp_weight: Tensor | None) -> None:
    if fp_weight is None or fp_weight.dim() != 2:
        return
    diagonal = torch.diagonal(fp_weight)
    if bool((diagonal != 0).any()):
        index = int(torch.nonzero(diagonal != 0)[0, 0])
        raise ValueError(
            "fp_weight (K, K) must have a zero diagonal (predicting the true class is no false "
            f"positive); got fp_weight[{index}, {index}] = {float(diagonal[index]):g}"
        )


def check_class_targets(target: Tensor, num_classes: int, ignore_index: int) -> None:
    if target.numel() == 0:
        return
    low, high = torch.aminmax(target)
    if bool(low >= 0) and bool(high < num_classes):
        return  # one pass in the common case; ignored targets need the masked pass below
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        raise IndexError(
            f"target holds class indices in [0, {num_classes}) or ignore_index={ignore_index}; "
            f"got {_first_bad(target, bad)}"
        )


def soft_target_tolerance(dtype: torch.dtype) -> float:
    """How far a row of class probabilities stored in ``dtype`` may sum from 1.

    Rounding each of a row's probabilities to ``dtype`` moves the sum by at most half a unit in
    the last place of 1, eps / 2 (relative errors of at most eps / 2 on terms that add up to 1);
    twice eps leaves room for a softmax or a mix of two distributions computed in that dtype.
    bfloat16 (eps = 2**-7) allows 0.0156, float16 0.002; float32 and float64 keep 1e-3.
    """
    return max(1e-3, 2 * torch.finfo(dtype).eps)


def check_soft_targets(target: Tensor, tolerance: float | None = None) -> None:
    """(M, K) class probabilities: finite, non-negative, each row summing to 1 within
    ``tolerance`` (default: :func:`soft_target_tolerance` of the target's dtype)."""
    if target.numel() == 0:
        return
    low, high = torch.aminmax(target)
    if not (bool(low >= 0) and bool(high < float("inf"))):
        bad = ~torch.isfinite(target) | (target < 0)
        raise ValueError(
            "target given as class probabilities must be finite and non-negative; "
            f"got {_first_bad(target, bad)}"
        )
    if tolerance is None:
        tolerance = soft_target_tolerance(target.dtype)
    sums = target.sum(dim=1, dtype=torch.float64)
    off = (sums - 1).abs() > tolerance
    if bool(off.any()):
        row = int(torch.nonzero(off)[0, 0])
        values = target[row]
        if bool((values == values.round()).all()):
            # whole numbers: multi-hot labels or counts, not a distribution
            hint = (
                "its entries are whole numbers: multi-hot labels belong to "
                "binary_real_world_weight_cross_entropy, and class indices are an integer "
                "tensor without the class dimension"
            )
        else:
            hint = "normalise each row, e.g. target / target.sum(dim=1, keepdim=True)"
        raise ValueError(
            "target given as class probabilities must sum to 1 over the class dimension "
            f"(within {tolerance:.3g} for {target.dtype}); row {row} sums to "
            f"{float(sums[row]):.6g}; {hint}"
        )


def check_probabilities(input: Tensor) -> None:
    """``input_type='probs'``: every value in [0, 1] (one pass; NaN fails it too)."""
    if input.numel() == 0:
        return
    low, high = torch.aminmax(input)
    if bool(low >= 0) and bool(high <= 1):
        return
    bad = ~((input >= 0) & (input <= 1))
    raise ValueError(f"input_type='probs' needs values in [0, 1]; got {_first_bad(input, bad)}")


def check_binary_targets(target: Tensor) -> None:
    """Binary / multi-label targets in [0, 1] (one pass in the common case)."""
    if target.numel() == 0:
        return
    low, high = torch.aminmax(target.to(torch.float32) if target.dtype == torch.bool else target)
    if bool(low >= 0) and bool(high <= 1):
        return
    bad = ~((target >= 0) & (target <= 1))
    raise ValueError(f"target must be in [0, 1]; got {_first_bad(target, bad)}")


def check_logits(input: Tensor) -> None:
    """No NaN and no +inf in the logits (-inf is a masked class), in one read-only reduction:
    ``amax`` propagates NaN. Only a failing input pays for the search that names the entry."""
    if input.numel() == 0 or bool(input.amax() < float("inf")):
        return
    bad = torch.isnan(input) | torch.isposinf(input)
    raise ValueError(f"input must not hold NaN or +inf; got {_first_bad(input, bad)}")


# --- the multi-class loss call: one entry for its checks -----------------------------------------


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
    """Check a multi-class loss call once and return it with its weights normalised.

    Static checks (types, shapes, options) always run; data checks (values) follow
    :func:`should_check_data` (never under ``torch.compile`` or a ``torch.func`` transform).
    Weights become tensors in the compute dtype (float32, or float64 for float64 input; ``dtype``
    overrides it) on the input's device: fn as (K,) (the paper's diagonal form reduced), FP as
    given, sample weights expanded to the element shape (N, d1, ..., dk). An unbatched (K,) call
    gets a batch dimension of 1.
    """
    check_loss_arguments(input, target, reduction, input_type)
    check_label_smoothing(label_smoothing)
    ignore_index = check_ignore_index(ignore_index)

    unbatched = input.dim() == 1
    if unbatched:
        target = _unbatched_target(input, target)
        input, target = input.unsqueeze(0), target.unsqueeze(0)
        if sample_weight is not None:
            sample_weight = _unbatched_sample_weight(sample_weight)
        if sample_costs is not None and not isinstance(sample_costs, Tensor):
            sample_costs = to_tensor(sample_costs, "sample_costs")
        if sample_costs is not None and sample_costs.shape == input.shape[1:]:
            sample_costs = sample_costs.unsqueeze(0)
        elif sample_costs is not None:
            raise ValueError(
                f"sample_costs must have the input's shape {tuple(input.shape[1:])} (the cost of "
                f"predicting each class); got shape {tuple(sample_costs.shape)}"
            )
    if input.dim() == 0:
        raise ValueError("input must have a class dimension: shape (K,), (N, K) or (N, K, ...)")
    num_classes = input.shape[1]
    element_shape = (input.shape[0], *input.shape[2:])
    soft = _is_soft_target(input, target, element_shape)

    dtype = compute_dtype(input.dtype) if dtype is None else dtype
    device = input.device
    fn_given, fn, fp = weight_tensors(fn_weight, fp_weight, num_classes, device, dtype)
    weights = as_tensor("sample_weight", sample_weight, device=device, dtype=dtype)
    weights = _sample_weight_per_element(weights, element_shape)
    costs = as_tensor("sample_costs", sample_costs, device=device, dtype=dtype)
    if costs is not None:
        _check_sample_costs_call(costs, input, soft, fn_given, fp, label_smoothing)

    if should_check_data(validate, input, target, fn_given, fp, weights, costs):
        with torch.no_grad():  # values only: no autograd history on the check's results
            check_weight_data(fn_given, fp, weights, costs)
            if input_type == "probs":
                check_probabilities(input)
            else:
                check_logits(input)
                warn_if_probabilities(input)
            if soft:
                check_soft_targets(classes_last(target))
            else:
                check_class_targets(target, num_classes, ignore_index)

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
        costs=costs,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=float(label_smoothing),
        input_type=input_type,
    )


def weight_tensors(
    fn_weight: object, fp_weight: object, num_classes: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The class weights as tensors, shapes checked: ``fn_weight`` as given, as a (K,) vector
    (``None`` for all ones), and ``fp_weight`` (``None``, (K,) or (K, K))."""
    fn_given = as_tensor("fn_weight", fn_weight, device=device, dtype=dtype)
    fn = fn_weight_vector(fn_given, num_classes)
    fp = as_tensor("fp_weight", fp_weight, device=device, dtype=dtype)
    check_fp_weight_shape(fp, num_classes)
    return fn_given, fn, fp


def check_weight_data(
    fn_given: Tensor | None, fp: Tensor | None, weights: Tensor | None, costs: Tensor | None
) -> None:
    """The data checks of the weights: finite and >= 0, an FN matrix diagonal, a zero FP
    diagonal (reads values: callers decide when, see :func:`should_check_data`)."""
    check_weight_values("fn_weight", fn_given)
    check_fn_matrix_diagonal(fn_given)
    check_weight_values("fp_weight", fp)
    check_fp_diagonal(fp)
    check_weight_values("sample_weight", weights)
    check_weight_values("sample_costs", costs)


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


def _unbatched_target(input: Tensor, target: Tensor) -> Tensor:
    """The target of an unbatched (K,) input, checked in the caller's terms: a class index of
    shape () (or (1,), as PyTorch accepts), or probabilities of shape (K,)."""
    if target.is_floating_point():
        if target.dim() == 0:
            raise TypeError(
                f"target is one class index but has dtype {target.dtype}; class indices must be "
                "an integer dtype (use target.long())"
            )
        if target.shape != input.shape:
            raise ValueError(
                f"target given as class probabilities must have the input's shape "
                f"{tuple(input.shape)}; got {tuple(target.shape)}"
            )
        return target
    if target.shape == (1,):
        return target.reshape(())
    if target.dim() != 0 and target.dtype != torch.bool and not target.is_complex():
        raise ValueError(
            f"target of class indices must have shape () for an unbatched input of shape "
            f"{tuple(input.shape)}; got {tuple(target.shape)} (for probability targets use a "
            "floating dtype)"
        )
    return target


def _unbatched_sample_weight(sample_weight: object) -> object:
    """The sample weight of an unbatched call, one number (shape () or (1,)), as shape (1,)."""
    weight = torch.as_tensor(sample_weight)
    if weight.shape not in ((), (1,)):
        raise ValueError(
            f"sample_weight of an unbatched input must be one number (shape () or (1,)); got "
            f"shape {tuple(weight.shape)}"
        )
    return weight.reshape(1)


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
    weights: Tensor | None, element_shape: tuple[int, ...], *, per_target: bool = False
) -> Tensor | None:
    """``sample_weight`` given as the element shape (N, d1, ..., dk), or as (N,): one weight per
    sample, expanded to the element shape. ``per_target``: the error speaks of the target's
    shape (the fused loss, whose elements are the target's)."""
    if weights is None:
        return None
    if tuple(weights.shape) == tuple(element_shape):
        return weights
    if weights.dim() == 1 and weights.shape[0] == element_shape[0]:
        return weights.reshape(-1, *([1] * (len(element_shape) - 1))).expand(element_shape)
    # Worded only here: formatting symbolic sizes under torch.compile would specialise them.
    if per_target:
        expected = f"the target's shape {tuple(element_shape)}"
        expected += f" or ({element_shape[0]},)" if len(element_shape) > 1 else ""
    elif len(element_shape) > 1:
        expected = f"shape ({element_shape[0]},) or {element_shape}"
    else:
        expected = f"shape {tuple(element_shape)}"
    raise ValueError(f"sample_weight must have {expected}; got {tuple(weights.shape)}")


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


# --- the fused linear loss call: one entry for its checks ---------------------------------------


def check_linear_call(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    fn_weight: object = None,
    fp_weight: object = None,
    *,
    linear_bias: Tensor | None = None,
    sample_weight: object = None,
    sample_costs: object = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
    backend: str = "auto",
    validate: bool | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Check a fused linear loss call once; return ``(fn, fp, sample_weight, costs)`` in the
    compute dtype: fn (K,) (``None`` for all ones), fp ``None``, (K,) or (K, K), sample weights
    in the target's shape (or ``None``), and the costs in the target's shape plus (K,) (or
    ``None``).

    Static checks (types, dtypes, devices, shapes, options) always run; data checks follow
    :func:`should_check_data`. Only ``input``, ``linear_weight`` and ``linear_bias`` may carry a
    gradient: a weight that requires grad is a RuntimeError.
    """
    _check_linear_tensors(input, linear_weight, linear_bias, target)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("backend", backend, BACKENDS)
    check_label_smoothing(label_smoothing)
    check_ignore_index(ignore_index)
    check_chunk_size(chunk_size)
    for name, value in (
        ("fn_weight", fn_weight),
        ("fp_weight", fp_weight),
        ("sample_weight", sample_weight),
        ("sample_costs", sample_costs),
    ):
        if isinstance(value, Tensor) and value.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                f"{name} requires grad, but linear_real_world_weight_cross_entropy gives gradients "
                "to input, linear_weight and linear_bias only; detach it, or use "
                "real_world_weight_cross_entropy(F.linear(...)) for a gradient to it"
            )

    num_classes = linear_weight.shape[0]
    dtype = compute_dtype(input.dtype)
    device = input.device
    fn_given, fn, fp = weight_tensors(fn_weight, fp_weight, num_classes, device, dtype)
    weights = as_tensor("sample_weight", sample_weight, device=device, dtype=dtype)
    weights = _sample_weight_per_element(weights, tuple(target.shape), per_target=True)
    costs = as_tensor("sample_costs", sample_costs, device=device, dtype=dtype)
    if costs is not None:
        check_sample_costs_options(fn_given, fp, label_smoothing)
        expected = (*target.shape, num_classes)
        if tuple(costs.shape) != expected:
            raise ValueError(
                f"sample_costs must have shape {expected} (the target's shape plus the K = "
                f"{num_classes} classes of linear_weight); got {tuple(costs.shape)}"
            )

    if should_check_data(validate, input, target, fn_given, fp, weights, costs):
        check_weight_data(fn_given, fp, weights, costs)
        check_class_targets(target, num_classes, ignore_index)
    return fn, fp, weights, costs


def check_chunk_size(chunk_size: object) -> None:
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be None or a positive int; got {chunk_size!r}")


def _check_linear_tensors(
    input: object, linear_weight: object, linear_bias: object, target: object
) -> None:
    """Types, dtypes, devices and shapes of the tensors (metadata only, no data read)."""
    check_input(input)
    check_input(linear_weight, "linear_weight")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor; got {type(target).__name__}")
    if input.dim() == 0:
        raise ValueError("input must have a feature dimension: shape (H,), (N, H) or (B, T, H)")
    if linear_weight.dim() != 2:
        raise ValueError(
            f"linear_weight must have shape (K, H) as nn.Linear stores it; got "
            f"{tuple(linear_weight.shape)}"
        )
    num_classes, hidden = linear_weight.shape
    if input.shape[-1] != hidden:
        raise ValueError(
            f"linear_weight has shape {tuple(linear_weight.shape)} (K, H): its H = {hidden} must "
            f"equal the input's last dimension; got input of shape {tuple(input.shape)}"
        )
    if num_classes == 0:
        raise ValueError("linear_weight has 0 rows: the layer must output at least one class")
    if linear_weight.dtype != input.dtype or linear_weight.device != input.device:
        raise ValueError(
            f"linear_weight is {linear_weight.dtype} on {linear_weight.device}; expected the "
            f"input's dtype and device ({input.dtype} on {input.device})"
        )
    if linear_bias is not None:
        check_input(linear_bias, "linear_bias")
        if tuple(linear_bias.shape) != (num_classes,):
            raise ValueError(
                f"linear_bias must have shape ({num_classes},) for linear_weight of shape "
                f"{tuple(linear_weight.shape)}; got {tuple(linear_bias.shape)}"
            )
        if linear_bias.dtype != input.dtype or linear_bias.device != input.device:
            raise ValueError(
                f"linear_bias is {linear_bias.dtype} on {linear_bias.device}; expected the "
                f"input's dtype and device ({input.dtype} on {input.device})"
            )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold class indices (an integer dtype); got dtype {target.dtype}. "
            "Probability targets are (N, K) themselves: use "
            "real_world_weight_cross_entropy(F.linear(...), target)"
        )
    if tuple(target.shape) != tuple(input.shape[:-1]):
        raise ValueError(
            f"target must have the input's leading shape {tuple(input.shape[:-1])} (one class "
            f"per row of input {tuple(input.shape)}); got {tuple(target.shape)}"
        )
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but the input is on {input.device}")


# --- the binary loss call: one entry for its checks ---------------------------------------------


def check_binary_call(
    input: Tensor,
    target: Tensor,
    fn_weight: object = 1.0,
    fp_weight: object = 1.0,
    *,
    sample_weight: object = None,
    reduction: str = "mean",
    input_type: str = "logits",
    validate: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Check a binary / multi-label loss call once; return ``(fn, fp, sample_weight)`` as tensors
    in the compute dtype (float32, or float64 for float64 input), each broadcastable to the input
    (``sample_weight`` ``None`` when not given). Data checks follow :func:`should_check_data`."""
    check_loss_arguments(input, target, reduction, input_type)
    if target.shape != input.shape:
        raise ValueError(
            f"target must have the input's shape {tuple(input.shape)}; got {tuple(target.shape)}"
        )
    dtype = compute_dtype(input.dtype)
    device = input.device
    fn = as_tensor("fn_weight", fn_weight, device=device, dtype=dtype)
    fp = as_tensor("fp_weight", fp_weight, device=device, dtype=dtype)
    weights = as_tensor("sample_weight", sample_weight, device=device, dtype=dtype)
    named = (("fn_weight", fn), ("fp_weight", fp), ("sample_weight", weights))
    for name, value in named:
        _check_broadcasts(name, value, input.shape)

    if should_check_data(validate, input, target, fn, fp, weights):
        with torch.no_grad():  # values only: no autograd history on the check's results
            for name, value in named:
                check_weight_values(name, value)
            if input_type == "probs":
                check_probabilities(input)
            else:
                check_logits(input)
                warn_if_sigmoid_output(input)
            check_binary_targets(target)
    return fn, fp, weights


def _check_broadcasts(name: str, value: Tensor | None, shape: torch.Size) -> None:
    if value is None:
        return
    try:
        broadcast = torch.broadcast_shapes(value.shape, shape)
    except RuntimeError:
        broadcast = None
    if broadcast != shape:
        raise ValueError(
            f"{name} must be a number or broadcastable to the input's shape {tuple(shape)}; "
            f"got shape {tuple(value.shape)}"
        )


# --- warnings about the input, pointed at the user's line --------------------------------------

#: Frames of these folders are skipped when a warning looks for the user's line: rwwce's own
#: (the loss, its keyword wrapper, a module's forward) and torch's (``nn.Module.__call__``).
_INTERNAL_DIRS = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
)


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling function name the first
    frame outside rwwce and torch: the user's line, whether the loss was called as a function,
    through a module (and ``nn.Module.__call__``) or through ``loss_breakdown``. Eager only (the
    warnings come from data checks, which never run while tracing)."""
    frame = sys._getframe(1)  # the function that calls warnings.warn: stacklevel 1
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame = frame.f_back
        level += 1
    return level


# Rows (and spatial positions) looked at by the softmax-output warning: a sample, so that the
# heuristic costs nothing next to the loss; softmax output looks like probabilities everywhere.
_WARN_SAMPLE_ROWS = 16
_WARN_SAMPLE_POSITIONS = 64


def warn_if_probabilities(input: Tensor, class_dim: int = 1) -> None:
    """Warn when the sampled rows are in [0, 1] and sum to 1: softmax output passed as logits."""
    if input.numel() == 0 or input.dim() <= class_dim or input.shape[class_dim] < 2:
        return
    sample = input if class_dim == 0 else input[:_WARN_SAMPLE_ROWS]
    if sample.dim() > class_dim + 1:
        sample = sample.flatten(class_dim + 1)[..., :_WARN_SAMPLE_POSITIONS]
    low, high = torch.aminmax(sample)
    if not (bool(low >= 0) and bool(high <= 1)):
        return
    sums = sample.sum(dim=class_dim, dtype=torch.float32)
    if bool(((sums - 1).abs() < 1e-3).all()):
        warnings.warn(
            "input looks like probabilities (its rows are in [0, 1] and sum to 1) but "
            "input_type='logits'; pass raw logits, or input_type='probs' if the model ends in "
            "softmax",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


#: Binary logits looked at by the sigmoid-output warning, and how many it needs to say anything:
#: a handful of real logits can all fall in [0, 1] by chance, dozens rarely do.
_WARN_SAMPLE_ELEMENTS = 64
_WARN_MIN_ELEMENTS = 8


def warn_if_sigmoid_output(input: Tensor) -> None:
    """Warn when a sample of binary logits (at least 8 values) lies entirely in [0, 1] and spans
    at least half of it: sigmoid output (or the 0/1 labels) passed as logits. The binary
    counterpart of :func:`warn_if_probabilities`. The span keeps quiet about a model near its
    initialisation, whose logits cluster in a narrow band that may sit inside [0, 1] (all 0 for
    zero-initialised weights); sigmoid output of a model that has learned anything spreads out."""
    if input.numel() < _WARN_MIN_ELEMENTS:
        return
    flat = input.view(-1) if input.is_contiguous() else input[:_WARN_SAMPLE_ROWS].reshape(-1)
    sample = flat[:_WARN_SAMPLE_ELEMENTS]
    if sample.numel() < _WARN_MIN_ELEMENTS:
        return
    low, high = torch.aminmax(sample)
    if bool(low >= 0) and bool(high <= 1) and bool(high - low >= 0.5):
        warnings.warn(
            "input looks like probabilities (every sampled value is in [0, 1]) but "
            "input_type='logits'; pass raw logits (before the sigmoid), or input_type='probs' "
            "if the model ends in a sigmoid",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


#: PyTorch's keyword names that rwwce's losses spell otherwise, with what to write instead.
CROSS_ENTROPY_KEYWORDS = {
    "weight": "fn_weight=w (and reduction='weighted_mean' for F.cross_entropy(weight=w)'s mean)",
    "size_average": "reduction= ('none', 'sum', 'mean' or 'weighted_mean')",
    "reduce": "reduction= ('none', 'sum', 'mean' or 'weighted_mean')",
}
BINARY_KEYWORDS = {
    "weight": "fn_weight=w * pw, fp_weight=w for F.binary_cross_entropy_with_logits(x, y, "
    "weight=w, pos_weight=pw) (or sample_weight=w in the loss call)",
    "pos_weight": "fn_weight=pw (the positives' weight; fp_weight weighs the negatives)",
    "size_average": "reduction= ('none', 'sum', 'mean' or 'weighted_mean')",
    "reduce": "reduction= ('none', 'sum', 'mean' or 'weighted_mean')",
}

_Callable = TypeVar("_Callable", bound=Callable[..., Any])


def torch_keywords(hints: dict[str, str]) -> Callable[[_Callable], _Callable]:
    """Decorator for the public losses and module constructors: a call with one of PyTorch's
    keyword names (``weight=``, ``pos_weight=``, ``size_average=``...) that the function does not
    take raises a TypeError naming the rwwce argument to use, instead of Python's bare
    "unexpected keyword argument". ``functools.wraps`` keeps the signature visible to
    ``inspect`` and ``help``; the check reads only the keyword names (nothing under
    ``torch.compile`` but a trace-time loop)."""

    def decorate(fn: _Callable) -> _Callable:
        accepted = set(inspect.signature(fn).parameters)
        stray = {name: hint for name, hint in hints.items() if name not in accepted}
        qualname = fn.__qualname__
        shown = qualname.removesuffix(".__init__") + "()"

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for name in kwargs:
                if name in stray:
                    raise TypeError(
                        f"{shown} got PyTorch's keyword argument {name}=; in rwwce write "
                        f"{stray[name]}"
                    )
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _first_bad(values: Tensor, bad: Tensor) -> str:
    index = tuple(int(i) for i in torch.nonzero(bad)[0])
    shown = index[0] if len(index) == 1 else index
    return f"{values[index].item()!r} at index {shown}"


def check_finite_nonnegative(
    values: torch.Tensor, name: str, expected: str = "a finite cost >= 0"
) -> None:
    """Raise ValueError naming the first NaN, infinite or negative entry of ``values``:
    ``"{name}[i, j] is {value}; expected {expected}"`` (a data check: it reads the values)."""
    bad = ~torch.isfinite(values) | (values < 0)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        v = float(values[idx])
        where = f"{name}[{', '.join(map(str, idx))}]" if idx else name
        raise ValueError(f"{where} is {v}; expected {expected}")


def check_ignore_index(ignore_index: Any, *, optional: bool = False) -> int | None:
    """An int label to skip (``None`` too when ``optional``); anything else is a TypeError, as in
    PyTorch's losses."""
    if optional and ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        expected = "an int or None" if optional else "an int"
        raise TypeError(f"ignore_index is {ignore_index!r}; expected {expected}")
    return int(ignore_index)


def check_class_names(classes: Sequence[str] | None, k: int) -> tuple[str, ...]:
    if classes is None:
        return tuple(str(i) for i in range(k))
    if isinstance(classes, str):
        raise TypeError(f"classes is the string {classes!r}; expected a sequence of {k} names")
    names = tuple(classes)
    if len(names) != k:
        raise ValueError(f"classes has {len(names)} names; expected {k}, one per row of the matrix")
    for i, n in enumerate(names):
        if not isinstance(n, str):
            raise TypeError(f"classes[{i}] is {n!r} ({type(n).__name__}); expected a str")
        if not n.strip() or n != n.strip():
            raise ValueError(
                f"classes[{i}] is {n!r}; expected a non-empty name without leading or trailing "
                "whitespace"
            )
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise ValueError(
                f"classes[{i}] is {n!r}, the same as classes[{seen[n]}]; names must be unique"
            )
        seen[n] = i
    return names
