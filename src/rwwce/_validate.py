"""Argument checks shared by :mod:`rwwce.functional`, :mod:`rwwce.modules` and the rest of the
package (cost values, class names, ``ignore_index``).

Two kinds of check:

* static checks (types, shapes, option strings) read only metadata and always run;
* data checks (ranges, NaN, distributions) read tensor values, which synchronises with a GPU, so
  they run only when asked (``validate=True``, a module's first call, or CPU tensors by default).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

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
    return torch.as_tensor(np.ascontiguousarray(arr))


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
    """``validate=None`` checks data only when nothing lives on an accelerator (no sync)."""
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
        return value.detach().to(dtype=dtype)
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a tensor of weights; got {value!r}")
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
    if tuple(fp_weight.shape) not in ((num_classes,), (num_classes, num_classes)):
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


def check_soft_targets(target: Tensor, tolerance: float = 1e-3) -> None:
    if target.numel() == 0:
        return
    low, high = torch.aminmax(target)
    if not (bool(low >= 0) and bool(high < float("inf"))):
        bad = ~torch.isfinite(target) | (target < 0)
        raise ValueError(
            "target given as class probabilities must be finite and non-negative; "
            f"got {_first_bad(target, bad)}"
        )
    sums = target.sum(dim=1, dtype=torch.float64)
    off = (sums - 1).abs() > tolerance
    if bool(off.any()):
        raise ValueError(
            "target given as class probabilities must sum to 1 over dim 1; got a row summing to "
            f"{float(sums[off][0]):.6g}; to pass class indices use an integer dtype"
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
            stacklevel=3,
        )


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
