"""Backends that compute the RWWCE loss on a flattened (M, K) problem.

Every backend module exposes one function (the one dispatch point, which picks the module, is
:func:`rwwce.kernels.dispatch.pick_backend`)::

    rwwce_loss(problem: Problem) -> Tensor

The front end (:mod:`rwwce._problem`) turns a user's call into a :class:`Problem`: rows
flattened with the class dimension last, the ignore mask, sample weights and reduction
denominator folded into ``row_scale``, label smoothing kept as a number for index targets.

* A row whose ``row_scale`` is 0 contributes exactly 0 to the result and to the logits'
  gradient, whatever its logits (a row loss of inf or NaN included: masked, never computed as
  0 * inf). One limit: the torch backend keeps such a row's logits gradient at 0 only when its
  logits hold no NaN or +inf (PyTorch's cross-entropy has the same limit).
* A backend never reads outside its weights for a target outside [0, K): the Triton kernel
  makes that row's loss and gradient NaN; the torch backend raises PyTorch's index error.
* ``reduce=True`` returns the 0-dim sum over rows of ``row_scale * loss_row``; ``False``
  returns the (M,) vector ``row_scale * loss_row``. Both in the compute dtype (float32, or
  float64 for float64 logits); the logits' gradient comes back in the logits' dtype.
* Only the torch backend gives gradients to the soft target, ``fn_weight``, ``fp_weight``,
  ``row_scale``, ``fn_rows`` and ``fp_rows``; another backend's ``supports`` names the reason
  when any of them requires grad.

The unreduced row loss, with p = softmax(z), a = y * fn and w = y @ FP::

    loss_row = - sum_k a_k log p_k  -  sum_j w_j log(1 - p_j)

and with per-row costs (``fn_rows``, ``fp_rows``; index targets only)::

    loss_row = - fn_rows[i] log p_t  -  sum_{j != t} fp_rows[i, j] log(1 - p_j)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Problem", "BackendOptions", "graph_is_retained"]


@dataclass(frozen=True)
class Problem:
    """The flat problem every backend solves (all rows flattened, classes last).

    Attributes:
        logits: (M, K) float16 / bfloat16 / float32 / float64.
        target: (M,) int64 class indices (ignored rows hold a valid placeholder class and a
            ``row_scale`` of 0), or (M, K) class probabilities in the compute dtype (smoothing
            already applied).
        fn_weight: (K,) false-negative weights, compute dtype.
        fp_weight: ``None``, (K,) (FP[t, j] = v[j] for j != t) or (K, K) with a zero diagonal.
        row_scale: (M,) compute dtype: ignore mask x sample weight / denominator.
        fn_rows: (M,) per-row FN weight (from ``sample_costs``), replacing ``fn_weight[target]``;
            index targets only.
        fp_rows: (M, K) per-row FP weights (from ``sample_costs``), replacing
            ``fp_weight[target]``; index targets only, exclusive with ``fp_weight``; the entry at
            the row's target is ignored.
        label_smoothing: e in [0, 1], index targets only: y = (1 - e) onehot(t) + e / K.
        reduce: sum the scaled row losses to a 0-dim tensor, or return them as (M,).
        block_k: the Triton kernel's column block override (tests); the torch backend ignores it.
    """

    logits: Tensor
    target: Tensor
    fn_weight: Tensor
    fp_weight: Tensor | None
    row_scale: Tensor
    fn_rows: Tensor | None = None
    fp_rows: Tensor | None = None
    label_smoothing: float = 0.0
    reduce: bool = True
    block_k: int | None = None


@dataclass(frozen=True)
class BackendOptions:
    """The non-tensor options of a backend call, as one value (so an ``autograd.Function``'s
    ``backward`` returns a short tuple). ``block_k`` is the Triton kernel's column block override
    (a power of two; tests use small ones); the torch backend ignores it."""

    label_smoothing: float
    reduce: bool
    block_k: int | None = None


def graph_is_retained() -> bool:
    """Whether the running backward keeps the graph (``retain_graph=True``, where a later backward
    needs saved gradients unscaled, so they must not be scaled in place); True when torch cannot
    tell, e.g. while ``torch.compile`` traces the backward or outside an engine-run backward."""
    probe = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if probe is None:  # pragma: no cover - older torch
        return True
    try:
        return bool(probe())
    except RuntimeError:  # not inside an engine-run backward
        return True
