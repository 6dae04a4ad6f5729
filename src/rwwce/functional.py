"""The loss functions: validate the arguments, then dispatch to a backend.

:func:`real_world_weight_cross_entropy` is the single-label (softmax) loss and
:func:`binary_real_world_weight_cross_entropy` the binary / multi-label (sigmoid) one, after
Ho & Wookey, "The Real-World-Weight Cross-Entropy Loss Function: Modeling the Costs of
Mislabeling", IEEE Access 8 (2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rwwce import _validate as V
from rwwce._problem import global_denominator_gradient, prepare
from rwwce.kernels.dispatch import backend_module, pick_backend
from rwwce.kernels.reference import compute_dtype

__all__ = ["real_world_weight_cross_entropy", "binary_real_world_weight_cross_entropy"]


@V.torch_keywords(V.CROSS_ENTROPY_KEYWORDS)
def real_world_weight_cross_entropy(
    input: Tensor,
    target: Tensor,
    fn_weight: Tensor | None = None,
    fp_weight: Tensor | None = None,
    *,
    sample_weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: V.Reduction = "mean",
    label_smoothing: float = 0.0,
    input_type: V.InputType = "logits",
    validate: bool | None = None,
    global_normalize: bool = False,
    backend: V.Backend = "auto",
    sample_costs: Tensor | None = None,
) -> Tensor:
    r"""Real-World-Weight Cross-Entropy: cross-entropy with a false-negative weight per class and a
    false-positive cost matrix.

    For logits z, p = softmax(z) and target class t, each element's loss is

    .. math::
        \ell = -\,fn_t \log p_t \;-\; \sum_{j \ne t} FP_{t,j} \log(1 - p_j)

    and for class-probability targets y, :math:`\ell = -\sum_k y_k fn_k \log p_k -
    \sum_j (y\,FP)_j \log(1 - p_j)`. ``label_smoothing`` e turns t into
    y = (1 - e) onehot(t) + e / K. With ``fp_weight=None`` this is class-weighted cross-entropy.

    With ``sample_costs`` c (class-index targets), each element carries its own cost row:
    c_j is the cost of predicting class j for it (its entry at the true class t is ignored).
    Like a :class:`rwwce.CostMatrix` row (``CostMatrix.loss_weights``), fn = min_{j != t} c_j
    and FP_j = c_j - fn, so that

    .. math::
        \ell = -\,fn \log p_t \;-\; \sum_{j \ne t} (c_j - fn) \log(1 - p_j)

    and a batch whose rows all equal the cost matrix's rows gives the loss of that matrix's
    ``fn_weight, fp_weight``.

    :math:`\log(1 - p_j)` is computed in log space, never by clipping: a confidently wrong
    prediction with a logit gap of 1e4 costs about 1e4 (fn + FP) and keeps a non-zero gradient.

    Reductions (``sample_weight`` s multiplies each element's loss first):

    * ``'none'``: the per-element losses, shape of the target's index form (N, d1, ..., dk).
    * ``'sum'``: :math:`\sum_i s_i \ell_i`.
    * ``'mean'``: the sum divided by the number of non-ignored elements (the paper's per-sample
      mean: the loss keeps the units of the costs). Sample weights do not change this count.
    * ``'weighted_mean'``: the sum divided by :math:`\sum_i s_i\, fn_{t_i}` over non-ignored
      elements (each element's own fn with ``sample_costs``; :math:`\sum_i s_i` for probability
      targets): with ``fp_weight=None`` this is exactly
      ``F.cross_entropy(weight=fn_weight, reduction='mean')``.

    A batch whose denominator is 0 (every target ignored) gives a loss of 0 with a zero gradient
    under ``'mean'`` and ``'weighted_mean'``; PyTorch returns NaN there.

    Gradients: the loss is differentiable w.r.t. ``input``, a probability ``target``,
    ``fn_weight``, ``fp_weight``, ``sample_weight`` and ``sample_costs`` (the denominators
    included), exactly and to any order on the ``'torch'`` backend; ``torch.func`` transforms
    (``grad``, ``vmap``, ``jacrev``, ``jacfwd``, ``hessian``) work on it. With ``sample_costs`` the
    minimum that defines fn picks a subgradient at ties (``amin`` shares it evenly). Only the
    ``'torch'`` backend gives gradients to inputs other than ``input``.

    ``torch.compile`` (``fullgraph=True``, ``dynamic=True``, any backend) traces the loss
    without graph breaks or host reads: the static checks (types, shapes, options) run while
    tracing; the data checks (target range, distributions, NaN, weight values) are skipped
    under ``torch.compile`` and ``torch.func`` transforms whatever ``validate`` says; run the
    call once eagerly (or use ``validate=True`` in eager tests) to check the data.

    Args:
        input: logits (or probabilities with ``input_type='probs'``), float16, bfloat16, float32
            or float64. Computed in float32 at least.
        target: class indices (an integer dtype) or class probabilities (a floating dtype, the
            input's shape).
        fn_weight: (K,) false-negative weight of each class, or the paper's (K, K) diagonal form.
            Default: all ones.
        fp_weight: ``None`` (no false-positive term), (K,) meaning FP[t, j] = v[j] for every
            t != j, or (K, K) with a zero diagonal: FP[t, j] is the cost weight of putting
            probability on class j when the truth is t.
        sample_weight: (N,) or the target's index shape: a non-negative weight per element.
        ignore_index: class-index targets equal to it contribute nothing. Default -100.
        reduction: ``'none'`` | ``'sum'`` | ``'mean'`` | ``'weighted_mean'``. Default ``'mean'``.
        label_smoothing: e in [0, 1]. Default 0.
        input_type: ``'logits'`` (default) or ``'probs'`` for a model that ends in softmax.
            Probabilities are floored at the smallest normal float32 before the log, so an exact
            0 gives a large finite loss (about 87 fn) rather than inf.
        validate: check the data (target range, distributions, NaN, weight values) and warn when
            logits look like softmax output. ``None`` (default) checks tensors on the CPU and skips
            the checks on an accelerator, where they would synchronise; ``True`` always checks.
        global_normalize: under torch.distributed, divide ``'mean'`` / ``'weighted_mean'`` by
            the denominator summed over all processes, times the world size, so that
            DistributedDataParallel's gradient averaging yields the exact global-batch gradient
            (a learned ``fn_weight`` included, though ``'weighted_mean'``'s denominator depends
            on it: then the numerator is all-reduced too, one number).
        backend: ``'auto'`` (the Triton kernel for CUDA inputs when available, else PyTorch),
            ``'torch'`` or ``'triton'`` (an error when unavailable or unsupported). Second
            derivatives (``create_graph=True``) need ``'torch'``: its double backward is exact,
            while the Triton kernel raises a RuntimeError rather than return a wrong one.
        sample_costs: (N, K) or the input's shape (N, K, d1, ..., dk): the cost of predicting
            each class for each element, for class-index targets. Replaces ``fn_weight`` and
            ``fp_weight`` (an error to pass both) and cannot be combined with
            ``label_smoothing``. Non-negative and finite.

    Shape:
        - input: (K,), (N, K) or (N, K, d1, ..., dk).
        - target: (), (N) or (N, d1, ..., dk) of class indices in [0, K); or the input's shape.
        - sample_costs: the input's shape.
        - output: the target's index shape for ``reduction='none'``, in the input's dtype; else
          a scalar in float32 (float64 for float64 input), so a half-precision batch cannot
          overflow its sum.

    Example::

        >>> import torch, rwwce
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
        >>> target = torch.tensor([0, 1])
        >>> fp = torch.tensor([[0, 1, 1], [9, 0, 1], [1, 1, 0]], dtype=torch.float32)
        >>> rwwce.real_world_weight_cross_entropy(logits, target, fp_weight=fp)
        tensor(3.0519)
    """
    V.check_choice("backend", backend, V.BACKENDS)
    call = V.check_call(
        input,
        target,
        fn_weight,
        fp_weight,
        sample_weight=sample_weight,
        sample_costs=sample_costs,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        input_type=input_type,
        validate=validate,
    )
    prepared = prepare(call, global_normalize)
    solver = backend_module(pick_backend(backend, prepared.problem))
    loss = solver.rwwce_loss(prepared.problem)
    if reduction != "none":
        if global_normalize:
            loss = global_denominator_gradient(loss, prepared.denominator)
        return loss
    loss = loss.reshape(prepared.element_shape)
    return (loss.squeeze(0) if prepared.unbatched else loss).to(input.dtype)


@V.torch_keywords(V.BINARY_KEYWORDS)
def binary_real_world_weight_cross_entropy(
    input: Tensor,
    target: Tensor,
    fn_weight: float | Tensor = 1.0,
    fp_weight: float | Tensor = 1.0,
    *,
    sample_weight: Tensor | None = None,
    reduction: V.Reduction = "mean",
    input_type: V.InputType = "logits",
    validate: bool | None = None,
) -> Tensor:
    r"""Binary / multi-label Real-World-Weight Cross-Entropy (sigmoid outputs).

    For a logit z and a target y in [0, 1], each element's loss is

    .. math::
        \ell = fn \cdot y \cdot \mathrm{softplus}(-z) \;+\; fp \cdot (1 - y) \cdot
        \mathrm{softplus}(z)

    i.e. :math:`-fn\,y \log \sigma(z) - fp\,(1-y) \log(1-\sigma(z))`, computed stably. It equals
    ``F.binary_cross_entropy_with_logits(weight=w, pos_weight=pw)`` with fn = w * pw, fp = w.

    Reductions: ``'none'``; ``'sum'``; ``'mean'`` (divide by the number of elements);
    ``'weighted_mean'`` (divide by :math:`\sum s\,(fn\,y + fp\,(1-y))`, the total weight).

    Args:
        input: logits, or probabilities with ``input_type='probs'`` (floored at the smallest
            normal float32 before the log, so 0 and 1 give a large finite loss, not inf).
        target: the input's shape, values in [0, 1] (bool and integer targets are accepted).
        fn_weight: cost weight of a missed positive: a number or a tensor broadcastable to the
            input (e.g. (C,) for C labels). Default 1.
        fp_weight: cost weight of a false alarm, likewise. Default 1.
        sample_weight: non-negative weights broadcastable to the input.
        reduction: ``'none'`` | ``'sum'`` | ``'mean'`` | ``'weighted_mean'``. Default ``'mean'``.
        input_type: ``'logits'`` (default) or ``'probs'``.
        validate: check target range, weights and NaN (see
            :func:`real_world_weight_cross_entropy`).

    Shape:
        - input: any shape, e.g. (N,) or (N, C) for C labels.
        - target: the input's shape.
        - output: the input's shape for ``'none'``, in the input's dtype; else a scalar in float32
          (float64 for float64 input).

    Example::

        >>> import torch, rwwce
        >>> logits = torch.tensor([2.0, -1.0, 0.5])
        >>> target = torch.tensor([1.0, 1.0, 0.0])
        >>> rwwce.binary_real_world_weight_cross_entropy(logits, target, fn_weight=20.0)
        tensor(9.9260)
    """
    fn, fp, weights = V.check_binary_call(
        input,
        target,
        fn_weight,
        fp_weight,
        sample_weight=sample_weight,
        reduction=reduction,
        input_type=input_type,
        validate=validate,
    )
    dtype = compute_dtype(input.dtype)
    x = input.to(dtype)
    y = target.to(dtype)
    if input_type == "logits":
        neg_log_p, neg_log_not_p = F.softplus(-x), F.softplus(x)
    else:
        tiny = torch.finfo(torch.float32).tiny
        neg_log_p = -torch.log(x.clamp_min(tiny))
        neg_log_not_p = -torch.log((1.0 - x).clamp_min(tiny))
    loss = fn * y * neg_log_p + fp * (1.0 - y) * neg_log_not_p
    if weights is not None:
        loss = loss * weights

    if reduction == "none":
        return loss.to(input.dtype)
    total = loss.sum()  # reduced in float32 at least, like the multi-class loss
    if reduction == "mean":
        total = _safe_divide(total, loss.new_full((), float(loss.numel())))
    elif reduction == "weighted_mean":
        weight_total = fn * y + fp * (1.0 - y)
        if weights is not None:
            weight_total = weight_total * weights
        total = _safe_divide(total, weight_total.expand(loss.shape).sum())
    return total


def _safe_divide(total: Tensor, denominator: Tensor) -> Tensor:
    """total / denominator, and 0 (with a zero gradient) when the denominator is 0."""
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, total / safe, total * 0)
