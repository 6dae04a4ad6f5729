"""Backends that compute the RWWCE loss on a flattened (M, K) problem.

Every backend implements the same function (one dispatch point lives in ``rwwce.functional``)::

    loss(logits, target, fn_weight, fp_weight, row_scale, label_smoothing, reduce) -> Tensor

* ``logits``: (M, K) float16 / bfloat16 / float32 / float64, class dimension last.
* ``target``: (M,) int64 class indices, in [0, K) unless the caller skipped the data checks
  (ignored rows already carry a valid placeholder class and a zero ``row_scale``), or (M, K)
  class probabilities (soft targets, label smoothing already applied) in the compute dtype.
  A backend never reads outside its weights for a target outside [0, K): the Triton kernel
  makes that row's loss and gradient NaN; the torch backend raises PyTorch's index error.
* ``fn_weight``: (K,) in the compute dtype (float32, or float64 for float64 logits).
* ``fp_weight``: ``None``, (K,) (FP[t, j] = v[j] for j != t) or (K, K) with a zero diagonal.
* ``row_scale``: (M,) compute dtype, detached: ignore mask x sample weight / reduction denominator.
  A row whose ``row_scale`` is 0 contributes exactly 0 to the result and to the gradient,
  whatever its logits (a row loss of inf or NaN included: masked, never computed as 0 * inf).
  One limit: the torch backend keeps such a row's gradient at 0 only when its logits hold no NaN
  or +inf (PyTorch's cross-entropy has the same limit; zeroing them would cost a pass over the
  logits); the Triton kernel zeroes it for any logits.
* ``label_smoothing``: applies to index targets only: y = (1 - e) onehot(t) + e / K.
* ``reduce``: True returns the 0-dim sum over rows of ``row_scale * loss_row``; False returns the
  (M,) vector ``row_scale * loss_row``. Both in the compute dtype; differentiable w.r.t. ``logits``
  only (the gradient comes back in the logits' dtype).

The unreduced row loss, with p = softmax(z), a = y * fn and w = y @ FP::

    loss_row = - sum_k a_k log p_k  -  sum_j w_j log(1 - p_j)
"""

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Problem:
    """The flat problem every backend solves (all rows flattened, classes last)."""
    logits: Tensor                 # (M, K) float16/bfloat16/float32/float64
    target: Tensor                 # (M,) int64 class indices (ignored rows hold a valid placeholder class, row_scale 0)
                                   # or (M, K) class probabilities in the compute dtype (smoothing already applied)
    fn_weight: Tensor              # (K,) compute dtype
    fp_weight: Tensor | None       # None, (K,) or (K, K)
    row_scale: Tensor              # (M,) compute dtype: ignore mask x sample weight / denominator
    fn_rows: Tensor | None = None  # (M,) per-row FN weight (from sample_costs): replaces fn_weight[target]; index targets only
    fp_rows: Tensor | None = None  # (M, K) per-row FP weights (from sample_costs): replaces fp_weight[target]; index targets only, exclusive with fp_weight
    label_smoothing: float = 0.0   # index targets only; not combined with fn_rows/fp_rows (the front end refuses that)
    reduce: bool = True            # True: 0-dim sum of row_scale * loss_row; False: (M,) vector
    block_k: int | None = None     # Triton column-block override for tests; torch backend ignores it


@dataclass(frozen=True)
class BackendOptions:
    """The non-tensor options of a backend call, as one value (so an ``autograd.Function``'s
    ``backward`` returns a short tuple). ``block_k`` is the Triton kernel's column block override
    (a power of two; tests use small ones); the torch backend ignores it."""

    label_smoothing: float
    reduce: bool
    block_k: int | None = None
