"""Pure-PyTorch RWWCE backend: the executable form of the math in DESIGN.md.

This is the specification every other backend (the Triton kernel) is tested against. It follows
the backend contract of :mod:`rwwce.kernels`: a flattened (M, K) problem whose ignore mask, sample
weights and reduction denominator are already folded into ``row_scale``.

Per row, with logits z, p = softmax(z), FN weights a = y * fn and FP weights w = y @ FP::

    loss = - sum_k a_k log p_k  -  sum_j w_j log(1 - p_j)

Numerics. Let m be the row's arg-max and d = z_m - logsumexp_{j != m} z_j (the log-odds of the
arg-max class). Then, exactly,

    log p_m       = -softplus(-d)        log(1 - p_m) = -softplus(d)
    p_j           = q_j * sigmoid(-d)    for j != m, with q = softmax over the classes j != m

so log(1 - p_m) never goes through ``1 - p_m`` (which is 0 in float32 once the logit gap exceeds
about 17), and for j != m, p_j <= 1/2 so ``log1p(-p_j)`` is accurate. The log-sum-exp over the other
classes is taken relative to the second-largest logit, so it cannot underflow either: a logit gap of
1e4 gives log(1 - p_m) = -1e4 exactly, not -inf. Nothing is clipped.

Memory. Rows are processed in chunks whose temporaries fit in cache; the only (M, K) buffers are
the gradient computed during the forward (when a gradient is needed) and the scaled gradient that
``backward`` returns. No (M, K, K) tensor is ever built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rwwce.kernels import BackendOptions

__all__ = ["rwwce_loss", "rwwce_loss_and_grad", "log_one_minus_softmax"]

# Elements per row chunk: small enough that a chunk's temporaries stay in the CPU's L2 cache,
# large enough that Python overhead per chunk is negligible. CUDA prefers few, large launches.
_CPU_CHUNK_ELEMENTS = 1 << 18
_CUDA_CHUNK_ELEMENTS = 1 << 26


def rwwce_loss(
    logits: Tensor,
    target: Tensor,
    fn_weight: Tensor,
    fp_weight: Tensor | None,
    row_scale: Tensor,
    label_smoothing: float = 0.0,
    reduce: bool = True,
) -> Tensor:
    """RWWCE on a flattened problem (see :mod:`rwwce.kernels` for the contract).

    Args:
        logits: (M, K) float16, bfloat16, float32 or float64.
        target: (M,) int64 class indices in [0, K), or (M, K) class probabilities.
        fn_weight: (K,) false-negative weights.
        fp_weight: ``None``, (K,) or (K, K) false-positive weights (zero diagonal).
        row_scale: (M,) per-row factor (ignore mask x sample weight / denominator).
        label_smoothing: e in [0, 1]; index targets become (1 - e) onehot(t) + e / K.
        reduce: sum the scaled row losses to a 0-dim tensor, or return them as (M,).

    Returns:
        0-dim or (M,) tensor in float32 (float64 for float64 logits).
    """
    options = BackendOptions(float(label_smoothing), bool(reduce))
    return _RWWCEFunction.apply(logits, target, fn_weight, fp_weight, row_scale, options)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rwwce_loss_and_grad(
    logits: Tensor,
    target: Tensor,
    fn_weight: Tensor,
    fp_weight: Tensor | None,
    row_scale: Tensor,
    label_smoothing: float = 0.0,
    *,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The scaled row losses and their gradient w.r.t. the logits, computed without autograd.

    For callers that need the gradient of a piece of a larger problem where autograd cannot run
    (inside a ``torch.library`` operator: the fused linear loss). Same arguments as
    :func:`rwwce_loss`.

    Args:
        out: optional (M, K) contiguous buffer in the compute dtype that receives the gradient
            (reused across calls by the fused linear loss, so no (M, K) buffer is allocated per
            chunk).

    Returns:
        ``row_scale * loss_row`` (M,) and ``row_scale[:, None] * d loss_row / d logits`` (M, K),
        both in the compute dtype (float32, or float64 for float64 logits).
    """
    grad = out
    if grad is None:
        grad = torch.empty(logits.shape, dtype=compute_dtype(logits.dtype), device=logits.device)
    row_loss = _scaled_row_losses(
        logits, target, fn_weight, fp_weight, row_scale, float(label_smoothing), grad
    )
    # Rows with row_scale 0 hold a finite gradient (see _rows_forward), so this zeroes them exactly.
    grad.mul_(row_scale.to(grad.dtype).unsqueeze(1))
    return row_loss, grad


def _scaled_row_losses(
    logits: Tensor,
    target: Tensor,
    fn_weight: Tensor,
    fp_weight: Tensor | None,
    row_scale: Tensor,
    smoothing: float,
    row_grad: Tensor | None,
) -> Tensor:
    """``row_scale * loss_row`` (M,), chunk by chunk; writes d loss_row / d logits (unscaled)
    into ``row_grad`` when one is given."""
    num_rows, num_classes = logits.shape
    dtype = compute_dtype(logits.dtype)
    row_loss = torch.empty(num_rows, dtype=dtype, device=logits.device)
    inactive = (row_scale == 0).unsqueeze(1)
    chunk_elements = _CUDA_CHUNK_ELEMENTS if logits.is_cuda else _CPU_CHUNK_ELEMENTS
    chunk_rows = max(1, chunk_elements // max(num_classes, 1))
    for start in range(0, num_rows, chunk_rows):
        rows = slice(start, start + chunk_rows)
        _rows_forward(
            logits[rows].to(dtype),
            target[rows],
            fn_weight,
            fp_weight,
            smoothing,
            out_loss=row_loss[rows],
            out_grad=row_grad[rows] if row_grad is not None else None,
            inactive=inactive[rows],
        )
    # A row with row_scale 0 (ignored target, zero sample weight) contributes exactly 0: its
    # loss may be inf (a -inf logit at the placeholder class), and its gradient is kept finite
    # by ``_rows_forward``, so the backward's scale zeroes it.
    return torch.where(row_scale == 0, torch.zeros_like(row_loss), row_loss * row_scale)


class _RWWCEFunction(torch.autograd.Function):
    """Forward computes the loss and, when needed, d loss_row / d logits; backward scales it.

    Under ``create_graph=True`` the backward is recomputed from the saved logits with
    differentiable operations (:func:`_differentiable_row_loss`), so second derivatives are exact;
    the first-order path never pays for that.
    """

    @staticmethod
    def forward(ctx, logits, target, fn_weight, fp_weight, row_scale, options: BackendOptions):
        row_grad = (
            torch.empty(logits.shape, dtype=compute_dtype(logits.dtype), device=logits.device)
            if ctx.needs_input_grad[0]
            else None
        )
        row_loss = _scaled_row_losses(
            logits, target, fn_weight, fp_weight, row_scale, options.label_smoothing, row_grad
        )
        ctx.save_for_backward(logits, target, fn_weight, fp_weight, row_grad, row_scale)
        ctx.label_smoothing = options.label_smoothing
        return row_loss.sum() if options.reduce else row_loss

    @staticmethod
    def backward(ctx, grad_output):
        logits, target, fn_weight, fp_weight, row_grad, row_scale = ctx.saved_tensors
        if row_grad is None:
            return None, None, None, None, None, None
        scale = (row_scale * grad_output.to(row_scale.dtype)).unsqueeze(1)
        if torch.is_grad_enabled():  # create_graph=True: a gradient that is itself differentiable
            grad_logits = _differentiable_grad(
                logits, target, fn_weight, fp_weight, row_scale, ctx.label_smoothing, scale
            )
        else:
            # Out of place: the saved gradient must survive a second backward (retain_graph=True).
            grad_logits = row_grad * scale
        return grad_logits.to(logits.dtype), None, None, None, None, None


def _differentiable_grad(
    logits: Tensor,
    target: Tensor,
    fn_weight: Tensor,
    fp_weight: Tensor | None,
    row_scale: Tensor,
    smoothing: float,
    scale: Tensor,
) -> Tensor:
    """d(sum_r scale_r * loss_r)/d logits as a graph of differentiable operations on ``logits``
    (and ``scale``, which carries the upstream gradient), for double backward."""
    with torch.enable_grad():
        active = (row_scale != 0).unsqueeze(1)
        z = logits.to(compute_dtype(logits.dtype))
        # Inactive rows are zeroed before the math, so their (possibly infinite) terms never
        # meet a zero factor in the backward: their gradient is exactly 0.
        z = torch.where(active, z, torch.zeros_like(z))
        row_loss = _differentiable_row_loss(z, target, fn_weight, fp_weight, smoothing)
        weighted = torch.where(active.squeeze(1), row_loss * scale.squeeze(1), 0.0)
        (grad,) = torch.autograd.grad(weighted.sum(), z, create_graph=True)
    return grad


def _differentiable_row_loss(
    z: Tensor, target: Tensor, fn_weight: Tensor, fp_weight: Tensor | None, smoothing: float
) -> Tensor:
    """The row losses (R,) by composite, twice-differentiable operations (the same log-space math
    as :func:`_rows_forward`). Slower and hungrier than the fused path: used for double backward.

    Zero-weight terms are masked with ``torch.where`` rather than multiplied, so that a masked
    class (-inf logit, log p = -inf) contributes 0, not 0 * inf, to the loss and its derivatives.
    """
    num_classes = z.shape[1]
    log_p = torch.log_softmax(z, dim=1)
    if target.dim() == 2:
        fn_coef = target * fn_weight
    else:
        y = F.one_hot(target, num_classes).to(z.dtype) * (1.0 - smoothing) + smoothing / num_classes
        fn_coef = y * fn_weight
    loss = -_weighted_sum(fn_coef, log_p)
    if fp_weight is None:
        return loss
    w = _fp_coefficients(target, fp_weight, smoothing, num_classes, z.shape[0])
    log_not_p = log_one_minus_softmax(z)
    return loss - _weighted_sum(w, log_not_p)


def log_one_minus_softmax(z: Tensor) -> Tensor:
    """log(1 - softmax(z)) for logits z (R, K), in log space, by composite operations that are
    differentiable twice and safe for masked (-inf) classes.

    For j != m (the row's arg-max), p_j <= 1/2 and log1p(-p_j) is accurate; for m,
    log(1 - p_m) = logsumexp_{j != m} z_j - logsumexp z, never through 1 - p_m (which rounds to 0
    once the logit gap passes ~17 in float32). The arg-max entry of log p is masked to -inf before
    log1p(-exp(.)), so the infinite derivative of log1p at p_m -> 1 is never formed; a row whose
    other classes are all masked gives log(1 - p_m) = -inf without a NaN derivative.
    """
    log_p = torch.log_softmax(z, dim=1)
    argmax = z.detach().argmax(dim=1, keepdim=True)
    is_max = torch.zeros_like(z, dtype=torch.bool).scatter_(1, argmax, True)
    log_not_p = torch.log1p(-torch.where(is_max, float("-inf"), log_p).exp())
    others = torch.where(is_max, float("-inf"), z)
    has_others = torch.isfinite(others).any(dim=1, keepdim=True)
    others = torch.where(has_others, others, torch.zeros_like(others))  # no all -inf logsumexp
    log_not_p_max = torch.logsumexp(others, dim=1, keepdim=True) - torch.logsumexp(
        z, dim=1, keepdim=True
    )
    log_not_p_max = torch.where(has_others, log_not_p_max, float("-inf"))
    return torch.where(is_max, log_not_p_max, log_not_p)


def _weighted_sum(weight: Tensor, log_value: Tensor) -> Tensor:
    """sum_k weight_k * log_value_k over dim 1, with 0 where the weight is 0 (even if log is -inf)."""
    return torch.where(weight != 0, weight * log_value, 0.0).sum(dim=1)


def _rows_forward(
    z: Tensor,
    target: Tensor,
    fn_weight: Tensor,
    fp_weight: Tensor | None,
    smoothing: float,
    *,
    out_loss: Tensor,
    out_grad: Tensor | None,
    inactive: Tensor,
) -> None:
    """Loss (and gradient) of a chunk of rows z (R, K), written into ``out_loss`` / ``out_grad``.

    ``inactive`` (R, 1) marks rows whose loss will be discarded (row_scale 0): their exponentials
    are shifted to 0 (by an O(R) shift, not a pass over the chunk), so that their gradient stays
    finite for any logits free of NaN and +inf (masked rows included) and a zero scale zeroes it
    exactly.
    """
    num_classes = z.shape[1]
    soft = target.dim() == 2

    if fp_weight is None:
        # Without an FP term only log p is needed: a plain, stable log-softmax.
        z_max = _finite_or_zero(z.amax(dim=1, keepdim=True))
        p = (z - _discard(z_max, inactive)).exp_()
        total = p.sum(dim=1, keepdim=True)
        p.div_(total.clamp_min(torch.finfo(z.dtype).tiny))  # a fully masked row: p = 0, not NaN
        lse = z_max + total.log()
    else:
        # Arg-max m, and the log-sum-exp of the other classes taken relative to the second max.
        z_max, argmax = z.max(dim=1, keepdim=True)
        z_max = _finite_or_zero(z_max)
        q = z.scatter(1, argmax, float("-inf"))
        second_max = _finite_or_zero(q.amax(dim=1, keepdim=True))
        q.sub_(_discard(second_max, inactive)).exp_()
        sum_others = q.sum(dim=1, keepdim=True)
        lse_others = second_max + sum_others.log()
        q.div_(sum_others.clamp_min(torch.finfo(z.dtype).tiny))  # softmax over j != m; q_m = 0
        d = z_max - lse_others  # log-odds of the arg-max class; +inf when every other logit is -inf
        lse = z_max + F.softplus(-d)
        p_max = torch.sigmoid(d)
        p = q * torch.sigmoid(-d)
        p.scatter_(1, argmax, p_max)

    # FN term: -sum_k a_k log p_k with a = y * fn.
    if soft:
        fn_coef = target * fn_weight  # a, (R, K)
        out_loss.copy_(-(fn_coef * (z - lse)).sum(dim=1))
        fn_total = fn_coef.sum(dim=1, keepdim=True)
    else:
        t = target.unsqueeze(1)
        fn_t = fn_weight[target].unsqueeze(1)
        log_p_t = z.gather(1, t) - lse
        loss = -(1.0 - smoothing) * fn_t * log_p_t
        if smoothing:
            loss -= (smoothing / num_classes) * ((z - lse) @ fn_weight).unsqueeze(1)
        out_loss.copy_(loss.squeeze(1))
        fn_total = (1.0 - smoothing) * fn_t + (smoothing / num_classes) * fn_weight.sum()

    fp_grad = out_grad is not None and fp_weight is not None
    if out_grad is not None and not fp_grad:
        # d/dz_i of -sum_k a_k log p_k = p_i * sum_k a_k - a_i.
        torch.mul(p, fn_total, out=out_grad)
        _subtract_fn_coefficients(out_grad, fn_coef if soft else None, target, fn_weight, smoothing)

    if fp_weight is None:
        return

    # FP term: -sum_j w_j log(1 - p_j) with w = y @ FP.
    w = _fp_coefficients(target, fp_weight, smoothing, num_classes, z.shape[0])
    log_not_p = torch.log1p(-p)
    # log(1 - p_m) = -softplus(d); capped so that a zero weight times it stays 0 when d = +inf.
    log_not_p_max = (-F.softplus(d)).clamp_min(torch.finfo(z.dtype).min)
    log_not_p.scatter_(1, argmax, log_not_p_max)
    out_loss.sub_((w * log_not_p).sum(dim=1))
    if not fp_grad:
        return

    # Gradient of L = -sum_j w_j log(1 - p_j). With dp_j/dz_i = p_j (delta_ij - p_i):
    #   dL/dz_i = sum_j w_j p_j (delta_ij - p_i) / (1 - p_j) = r_i - p_i R,
    #   r_j = w_j p_j / (1 - p_j),  R = sum_j r_j.
    # r_m = w_m p_m / (1 - p_m) overflows when p_m -> 1, so split it off. With R' = sum_{j!=m} r_j
    # and p_i / (1 - p_m) = q_i (softmax over the classes != m):
    #   i != m:  dL/dz_i = r_i - p_i R' - w_m p_m q_i
    #   i == m:  dL/dz_m = r_m (1 - p_m) - p_m R' = p_m (w_m - R')
    # Every factor is bounded: p_j <= 1/2 for j != m, so 1 - p_j >= 1/2.
    # r is built in the gradient buffer itself, which then receives the other terms in place.
    r = torch.div(p, 1.0 - p, out=out_grad)
    r.scatter_(1, argmax, 0.0)
    r.mul_(w)
    r_sum = r.sum(dim=1, keepdim=True)
    w_max = w.gather(1, argmax)
    # FP gradient plus the FN gradient p_i * sum_k a_k - a_i, sharing the p_i factor.
    out_grad.addcmul_(p, fn_total - r_sum)
    out_grad.addcmul_(q, w_max * p_max, value=-1.0)
    out_grad.scatter_add_(1, argmax, w_max * p_max)
    _subtract_fn_coefficients(out_grad, fn_coef if soft else None, target, fn_weight, smoothing)


def _finite_or_zero(row_max: Tensor) -> Tensor:
    """A row maximum, or 0 where it is -inf (every logit masked), so that ``z - max`` never
    forms -inf - -inf."""
    return torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))


def _discard(row_shift: Tensor, inactive: Tensor) -> Tensor:
    """The shift subtracted before ``exp``: +inf for inactive rows, so their exponentials are 0."""
    return torch.where(inactive, float("inf"), row_shift)


def _subtract_fn_coefficients(
    grad: Tensor, fn_coef: Tensor | None, target: Tensor, fn_weight: Tensor, smoothing: float
) -> None:
    """grad -= a, with a = y * fn: given (soft targets) or (1 - e) fn_t onehot(t) + e fn / K."""
    if fn_coef is not None:
        grad.sub_(fn_coef)
        return
    t = target.unsqueeze(1)
    grad.scatter_add_(1, t, -(1.0 - smoothing) * fn_weight[target].unsqueeze(1))
    if smoothing:
        grad.sub_((smoothing / grad.shape[1]) * fn_weight)


def _fp_coefficients(
    target: Tensor, fp_weight: Tensor, smoothing: float, num_classes: int, num_rows: int
) -> Tensor:
    """w = y @ FP for a chunk: (R, K). A (K,) ``fp_weight`` v means FP[t, j] = v[j] for j != t."""
    if target.dim() == 2:  # soft targets
        if fp_weight.dim() == 2:
            return target @ fp_weight
        return fp_weight * (target.sum(dim=1, keepdim=True) - target)
    uniform = smoothing / num_classes
    if fp_weight.dim() == 2:
        w = fp_weight.index_select(0, target)
        if smoothing:
            w.mul_(1.0 - smoothing).add_(uniform * fp_weight.sum(dim=0))
        return w
    # (y @ FP)_j = v_j * (1 - y_j) with y = (1 - e) onehot(t) + e / K.
    w = (fp_weight * (1.0 - uniform)).expand(num_rows, num_classes).clone()
    w.scatter_add_(1, target.unsqueeze(1), -(1.0 - smoothing) * fp_weight[target].unsqueeze(1))
    return w
