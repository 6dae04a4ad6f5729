"""Pure-PyTorch RWWCE backend: the executable form of the math in DESIGN.md.

This is the specification every other backend (the Triton kernel) is tested against. It follows
the backend contract of :mod:`rwwce.kernels`: ``rwwce_loss(problem)`` on a flattened (M, K)
:class:`~rwwce.kernels.Problem` whose ignore mask, sample weights and reduction denominator are
already folded into ``row_scale``.

Per row, with logits z, p = softmax(z), FN weights a = y * fn and FP weights w = y @ FP::

    loss = - sum_k a_k log p_k  -  sum_j w_j log(1 - p_j)

Numerics. Everything is computed in the shifted domain: logits enter only as differences
z_j - max(z), so a common offset (1e6, or -1e30) changes nothing, as in PyTorch's log-softmax.
Let m be the row's arg-max and d = z_m - logsumexp_{j != m} z_j (the log-odds of the arg-max
class; a row whose other classes all underflow against z_m takes them relative to the
second-largest logit). Then, exactly,

    log p_m       = -softplus(-d)        log(1 - p_m) = -softplus(d)
    p_j           = q_j * sigmoid(-d)    for j != m, with q = softmax over the classes j != m

so log(1 - p_m) never goes through ``1 - p_m`` (which is 0 in float32 once the logit gap exceeds
about 17), and for j != m, p_j <= 1/2 so ``log1p(-p_j)`` is accurate: a logit gap of 1e4 gives
log(1 - p_m) = -1e4 exactly, not -inf. Nothing is clipped.

Three forms compute the same function:

* eager, an ``autograd.Function`` (:class:`_RWWCEFunction`) whose forward computes the loss and
  the analytic logits gradient, already times ``row_scale``, in one sweep over row chunks that
  fit in cache; the only (M, K) buffer is that gradient, which ``backward`` multiplies by the
  upstream gradient in place (unless the graph is retained; not at all for the upstream 1 of a
  CPU ``loss.backward()``).
  No (M, K, K) tensor is ever built. When another input needs a gradient (soft targets,
  weights, ``row_scale``), or under ``create_graph=True``, backward recomputes the row losses
  with composite operations and differentiates them with autograd: exact, and differentiable
  again.
* under ``torch.compile`` with only the logits needing a gradient, :class:`_TracedRWWCEFunction`:
  the forward keeps a few row statistics and the backward computes the gradient from them,
  both out-of-place element-wise work and row reductions (no arg-max, scatter or in-place
  buffer) that the compiler fuses into one loop over each row; no loop over M, so the batch
  size stays symbolic. It treats the maximal classes as a set (ties are exact) rather than one arg-max.
* under ``torch.func`` transforms, and compiled when another input needs a gradient, the
  composite operations themselves (:func:`_composite_loss`): every transform (grad, vmap,
  jacrev, jacfwd, hessian) composes with them and the compiler derives their backward.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from rwwce.kernels import BackendOptions, Problem, graph_is_retained

__all__ = [
    "rwwce_loss",
    "rwwce_loss_and_grad",
    "log_one_minus_softmax",
    "compute_dtype",
    "is_traced",
]

# Elements per row chunk: small enough that a chunk's temporaries stay in the CPU's L2 cache,
# large enough that Python overhead per chunk is negligible. CUDA prefers few, large launches.
_CPU_CHUNK_ELEMENTS = 1 << 20
_CUDA_CHUNK_ELEMENTS = 1 << 26
# A sum of exp(z_j - z_max) below this has lost digits to underflow (float32's smallest normal is
# 2^-126; float64 keeps more, but the exact path is cheap and rare).
_FAR_SUM = 2.0**-100


def rwwce_loss(problem: Problem) -> Tensor:
    """RWWCE on a flattened problem (see :mod:`rwwce.kernels` for the contract).

    Returns:
        0-dim (``problem.reduce``) or (M,) tensor in float32 (float64 for float64 logits).
    """
    compiled_fast = torch.compiler.is_compiling() and _logits_grad_only(problem)
    if is_traced() and not compiled_fast:
        return _composite_loss(problem)
    options = BackendOptions(float(problem.label_smoothing), bool(problem.reduce))
    function = _TracedRWWCEFunction if compiled_fast else _RWWCEFunction
    return function.apply(
        problem.logits,
        problem.target,
        problem.fn_weight,
        problem.fp_weight,
        problem.row_scale,
        problem.fn_rows,
        problem.fp_rows,
        options,
    )


def _logits_grad_only(problem: Problem) -> bool:
    """No input but the logits requires grad."""
    others = (problem.target, problem.fn_weight, problem.fp_weight, problem.row_scale)
    others += (problem.fn_rows, problem.fp_rows)
    return not any(x is not None and x.requires_grad for x in others)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def is_traced() -> bool:
    """True under ``torch.compile`` (and export), ``torch.jit`` / FX tracing or a ``torch.func``
    transform: there, code must not read tensor values on the host nor write into buffers
    made outside the transform."""
    if torch.compiler.is_compiling():
        return True
    return (
        torch._C._are_functorch_transforms_active()
        or torch.jit.is_tracing()
        or torch.fx._symbolic_trace.is_fx_symbolic_tracing()
    )


def rwwce_loss_and_grad(problem: Problem, *, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The scaled row losses and their gradient w.r.t. the logits, computed without autograd.

    For callers that need the gradient of a piece of a larger problem where autograd does not run
    (inside a ``torch.library`` operator: the fused linear loss). ``problem.reduce`` is ignored.

    Args:
        problem: the flat problem (see :mod:`rwwce.kernels`).
        out: optional (M, K) contiguous buffer in the compute dtype that receives the gradient
            (reused across calls by the fused linear loss, so no (M, K) buffer is allocated per
            chunk).

    Returns:
        ``row_scale * loss_row`` (M,) and ``row_scale[:, None] * d loss_row / d logits`` (M, K),
        both in the compute dtype (float32, or float64 for float64 logits).
    """
    logits = problem.logits
    grad = out
    if grad is None:
        grad = torch.empty(logits.shape, dtype=compute_dtype(logits.dtype), device=logits.device)
    return _scaled_row_losses(problem, grad), grad


def _scaled_row_losses(problem: Problem, row_grad: Tensor | None) -> Tensor:
    """``row_scale * loss_row`` (M,), chunk by chunk; writes ``row_scale[:, None] * d loss_row /
    d logits`` into ``row_grad`` when one is given. ``problem.reduce`` is the caller's."""
    logits, row_scale, fn_rows, fp_rows = (
        problem.logits, problem.row_scale, problem.fn_rows, problem.fp_rows
    )  # fmt: skip
    num_rows, num_classes = logits.shape
    dtype = compute_dtype(logits.dtype)
    row_loss = torch.empty(num_rows, dtype=dtype, device=logits.device)
    scale = row_scale.to(dtype).unsqueeze(1)
    chunk_elements = _CUDA_CHUNK_ELEMENTS if logits.is_cuda else _CPU_CHUNK_ELEMENTS
    chunk_rows = max(1, chunk_elements // max(num_classes, 1))
    # The chunks' (R, K) temporaries are made once per call (one tensor each): allocating them
    # chunk by chunk costs page faults whenever the allocator hands the memory back to the OS.
    has_fp = problem.fp_weight is not None or fp_rows is not None
    shape = (min(chunk_rows, num_rows), num_classes)
    work = [
        torch.empty(shape, dtype=dtype, device=logits.device) for _ in range(4 if has_fp else 1)
    ]
    for start in range(0, num_rows, chunk_rows):
        rows = slice(start, start + chunk_rows)
        _rows_forward(
            logits[rows].to(dtype),
            problem.target[rows],
            problem.fn_weight,
            problem.fp_weight,
            float(problem.label_smoothing),
            fn_rows=None if fn_rows is None else fn_rows[rows],
            fp_rows=None if fp_rows is None else fp_rows[rows],
            out_loss=row_loss[rows],
            out_grad=row_grad[rows] if row_grad is not None else None,
            scale=scale[rows],
            work=[buffer[: num_rows - start] for buffer in work],
        )
    # A row with row_scale 0 (ignored target, zero sample weight) contributes exactly 0: its
    # loss may be inf or NaN (a -inf logit at the placeholder class, unchecked NaN logits), and
    # ``_rows_forward`` has set its gradient to 0.
    return torch.where(row_scale == 0, torch.zeros_like(row_loss), row_loss * row_scale)


class _RWWCEFunction(torch.autograd.Function):
    """Forward computes the loss and, when needed, row_scale * d loss_row / d logits; backward
    multiplies that by the upstream gradient.

    Other inputs that need a gradient, and ``create_graph=True``, take the composite path in
    backward (:func:`_composite_loss` differentiated by autograd); the first-order logits
    gradient never pays for it.
    """

    @staticmethod
    def forward(ctx, logits, target, fn_weight, fp_weight, row_scale, fn_rows, fp_rows, options):
        row_grad = (
            torch.empty(logits.shape, dtype=compute_dtype(logits.dtype), device=logits.device)
            if ctx.needs_input_grad[0]
            else None
        )
        problem = Problem(
            *(logits, target, fn_weight, fp_weight, row_scale, fn_rows, fp_rows),
            options.label_smoothing,
        )
        row_loss = _scaled_row_losses(problem, row_grad)
        ctx.save_for_backward(
            logits, target, fn_weight, fp_weight, row_scale, fn_rows, fp_rows, row_grad
        )
        ctx.options = options
        return row_loss.sum() if options.reduce else row_loss

    @staticmethod
    def backward(ctx, grad_output):
        *saved, row_grad = ctx.saved_tensors
        logits = saved[0]
        needs = ctx.needs_input_grad[:7]
        grads: list[Tensor | None] = [None] * 8
        create_graph = torch.is_grad_enabled()
        composite = [i for i in range(7) if needs[i] and (i > 0 or create_graph)]
        if composite:
            # Autograd differentiates the composite loss w.r.t. the inputs that need it; under
            # create_graph the result is itself differentiable (exact second derivatives).
            with torch.enable_grad():
                problem = Problem(*saved, ctx.options.label_smoothing, ctx.options.reduce)
                inputs = [saved[i] for i in composite]
                # A fresh leaf keeps a first-order backward local; under create_graph the saved
                # input itself, so that the gradient links to its history.
                leaves = [x if create_graph else x.detach().requires_grad_() for x in inputs]
                problem = _replace(problem, dict(zip(composite, leaves, strict=True)))
                loss = _composite_loss(problem)
                found = torch.autograd.grad(
                    loss, leaves, grad_output, create_graph=create_graph, allow_unused=True
                )
            for i, grad in zip(composite, found, strict=True):
                grads[i] = grad
        if needs[0] and not create_graph:
            grads[0] = _times_upstream(row_grad, grad_output)
        if grads[0] is not None:
            grads[0] = grads[0].to(logits.dtype)
        return tuple(grads)


def _times_upstream(row_grad: Tensor, grad_output: Tensor) -> Tensor:
    """The saved, already row-scaled gradient times the upstream gradient: in place unless a
    later backward needs it (retain_graph=True), and skipped for the upstream 1 of a reduced
    loss's ``backward()`` when reading it costs nothing (on the CPU)."""
    retained = graph_is_retained()
    if grad_output.dim() == 0 and grad_output.device.type == "cpu" and grad_output.item() == 1:
        return row_grad.clone() if retained else row_grad
    upstream = grad_output.to(row_grad.dtype)
    if upstream.dim() == 1:  # reduction='none': one upstream value per row
        upstream = upstream.unsqueeze(1)
    return row_grad * upstream if retained else row_grad.mul_(upstream)


class _TracedRWWCEFunction(torch.autograd.Function):
    """What ``torch.compile`` traces when only the logits need a gradient.

    Forward computes the row losses and keeps a few row statistics (R, 1); backward computes
    the gradient from them and the logits. Each is element-wise work and row reductions
    (:func:`_traced_forward`, :func:`_traced_grad`) that inductor fuses into one loop over each
    row (its partitioner moves the gradient into the forward and keeps that one (M, K) tensor
    for the backward, which scales it). The function is the eager one's; only the form
    differs (the eager sweep's arg-max, scatters and in-place buffers fuse badly).
    """

    @staticmethod
    def forward(ctx, logits, target, fn_weight, fp_weight, row_scale, fn_rows, fp_rows, options):
        inputs = (logits, target, fn_weight, fp_weight, row_scale, fn_rows, fp_rows)
        row_loss, stats = _traced_forward(Problem(*inputs, options.label_smoothing))
        ctx.save_for_backward(*inputs, *stats)
        ctx.options = options
        scaled = torch.where(row_scale == 0, torch.zeros_like(row_loss), row_loss * row_scale)
        return scaled.sum() if options.reduce else scaled

    @staticmethod
    def backward(ctx, grad_output):
        saved = ctx.saved_tensors
        problem = Problem(*saved[:7], ctx.options.label_smoothing)
        grad = _traced_grad(problem, saved[7:])
        row_scale = problem.row_scale
        scale = (row_scale * grad_output.to(row_scale.dtype)).unsqueeze(1)
        grad = torch.where(scale == 0, torch.zeros_like(grad), grad * scale)
        return (grad.to(problem.logits.dtype),) + (None,) * 7


def _traced_forward(problem: Problem) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Row losses (R,) of the problem's logits z (R, K) and the row statistics
    :func:`_traced_grad` needs (``row_scale`` and ``reduce`` are the caller's).

    The maximal classes are the set z_j == max(z) (c of them: ties are exact); z_2 is the largest
    logit below them and gap = max - z_2. With v_j = exp(z_j - z_2) below the maximum and their
    sum S (>= 1, so it cannot underflow at any gap), the maximal classes have log-odds d with
    e^-d = (c - 1) + S e^-gap, p_max = sigmoid(d) and log(1 - p_max) = -softplus(d) (never
    through 1 - p_max); the other classes have p_j = v_j e^-gap / (c + S e^-gap) <= 1/2, so
    log1p(-p_j) is accurate.
    """
    z, target, fn_weight, fp_weight, fn_rows, fp_rows, smoothing = _row_inputs(problem)
    z_max = _finite_or_zero(z.amax(dim=1, keepdim=True))
    _, _, fn_total, fn_dot = _fn_terms(z, z_max, target, fn_weight, fn_rows, smoothing)
    if fp_weight is None and fp_rows is None:
        log_total = torch.exp(z - z_max).sum(dim=1, keepdim=True).log()
        return (fn_total * log_total - fn_dot).squeeze(1), (z_max, log_total)
    w = _fp_coefficients(target, fp_weight, fp_rows, smoothing, z.shape[1])
    is_max = z == z_max
    count = is_max.to(z.dtype).sum(dim=1, keepdim=True)
    below = torch.where(is_max, float("-inf"), z).amax(dim=1, keepdim=True)
    z_second = torch.where(torch.isfinite(below), below, z_max)
    # One exponential per logit: v_j below the maximum and e^-gap at the maximal classes, whose
    # sum is c e^-gap. Every row factor the sums and the gradient use is arithmetic on row
    # statistics, so that the compiler runs the statistics, the sums and the gradient in one loop
    # over each row, the row in cache (a logarithm or an exponential of a row statistic would be
    # a loop of its own over the whole batch, and every sum after it another pass of the logits
    # through memory).
    v = _exponentials(z, is_max, z_max, z_second)
    sum_others = torch.where(is_max, 0.0, v).sum(dim=1, keepdim=True)
    max_mass = torch.where(is_max, v, 0.0).sum(dim=1, keepdim=True)  # c e^-gap
    w_max = torch.where(is_max, w, 0.0).sum(dim=1, keepdim=True)
    total = _scaled_total(count, sum_others, max_mass)
    p_all, odds = _probabilities(is_max, v, count, max_mass, total)
    p = torch.where(is_max, 0.0, p_all)
    log_not_p = (w * torch.log1p(-p)).sum(dim=1, keepdim=True)
    r_sum = torch.where(is_max, 0.0, w * odds).sum(dim=1, keepdim=True)
    # For a unique maximum d = gap - log S, exact at any gap (+inf when no other class is finite).
    far = max_mass / count.clamp_min(1.0)  # e^-gap
    d_ties = -torch.log((count - 1) + sum_others * far)
    d = torch.where(count > 1, d_ties, (z_max - below) - torch.log(sum_others))
    log_not_p_max = (-_softplus(d)).clamp_min(torch.finfo(z.dtype).min)
    loss = fn_total * _softplus(-d) - fn_dot - log_not_p - w_max * log_not_p_max
    return loss.squeeze(1), (z_max, z_second, count, max_mass, sum_others, r_sum, w_max)


def _scaled_total(count: Tensor, sum_others: Tensor, max_mass: Tensor) -> Tensor:
    """c^2 + S c e^-gap (R, 1): c times the sum of exp(z_j - max) over a row, so that
    p_max = c / it and p_j = v_j c e^-gap / it below the maximum."""
    return (count * count + sum_others * max_mass).clamp_min(torch.finfo(count.dtype).tiny)


def _exponentials(z: Tensor, is_max: Tensor, z_max: Tensor, z_second: Tensor) -> Tensor:
    """v (R, K): exp(z_j - z_2) below the maximum, e^-gap = exp(z_2 - z_max) at the maximal
    classes; one exponential per logit."""
    return torch.exp(torch.where(is_max, z_second - z_max, z - z_second))


def _probabilities(
    is_max: Tensor, v: Tensor, count: Tensor, max_mass: Tensor, total: Tensor
) -> tuple[Tensor, Tensor]:
    """p (R, K) and p / (1 - p), the latter used below the maximum and, with ties, at it (where
    it is e^d); v from :func:`_exponentials`, ``total`` from :func:`_scaled_total`."""
    inverse_total = 1.0 / total  # per row, not per logit
    p = torch.where(is_max, count, v * max_mass) * inverse_total
    return p, p / (1.0 - p)


def _traced_grad(problem: Problem, stats: list[Tensor]) -> Tensor:
    """d loss_row / d z (R, K) from the logits and :func:`_traced_forward`'s row statistics.

    With the maximal classes M (c of them), W = sum_{j in M} w_j, r_j = w_j p_j / (1 - p_j) and
    R = sum_{j not in M} r_j, the FP term -sum_j w_j log(1 - p_j) has the gradient
        j not in M:  r_j - p_j R - W p_max p_j / (1 - p_max)
        j in M:      p_max (W - R) + [c > 1] e^d (w_j - W)
    where p_j / (1 - p_max) = v_j e^-gap / ((c - 1) + S e^-gap) (v_j / S for a unique maximum):
    every factor is bounded (r_m = w_m p_m / (1 - p_m) itself, unbounded, is never formed). The
    FN term adds p_j sum_k a_k - a_j.
    """
    z, target, fn_weight, fp_weight, fn_rows, fp_rows, smoothing = _row_inputs(problem)
    z_max = stats[0]
    # The row sum fn_dot goes unused here; the compiler drops it.
    fn_coef, fn_t, fn_total, _ = _fn_terms(z, z_max, target, fn_weight, fn_rows, smoothing)
    if fp_weight is None and fp_rows is None:
        _, log_total = stats
        grad = torch.exp(z - z_max - log_total) * fn_total
    else:
        _, z_second, count, max_mass, sum_others, r_sum, w_max = stats
        w = _fp_coefficients(target, fp_weight, fp_rows, smoothing, z.shape[1])
        is_max = z == z_max
        ties = count > 1
        v = _exponentials(z, is_max, z_max, z_second)
        total = _scaled_total(count, sum_others, max_mass)
        p, odds = _probabilities(is_max, v, count, max_mass, total)
        # At the maximal classes p is p_max and odds is e^d. Below them W p_max p_j / (1 - p_max)
        # = v_j * from_max, p_max = c / total and with ties p_j / (1 - p_max) = v_j e^-gap c /
        # spread (spread = c (c - 1) + S c e^-gap); with a unique maximum it is v_j / S.
        spread = torch.where(ties, count * (count - 1) + sum_others * max_mass, sum_others)
        from_max = (
            w_max * count * torch.where(ties, max_mass, 1.0) / (total * spread.clamp_min(1.0))
        )
        at_max = p * (w_max - r_sum) + torch.where(ties, odds * (w - w_max), 0.0)
        others = w * odds - p * r_sum - v * from_max
        grad = torch.where(is_max, at_max, others) + p * fn_total
    _subtract_fn_coefficients(grad, fn_coef, target, fn_t, fn_weight, smoothing)
    return grad


_FIELDS = ("logits", "target", "fn_weight", "fp_weight", "row_scale", "fn_rows", "fp_rows")


def _replace(problem: Problem, by_index: dict[int, Tensor]) -> Problem:
    """The problem with some of its tensor fields (by position in ``_FIELDS``) replaced."""
    return replace(problem, **{_FIELDS[i]: value for i, value in by_index.items()})


def _composite_loss(problem: Problem) -> Tensor:
    """The problem's result by composite, differentiable operations: the same math as the fused
    forward, for ``torch.compile``, ``torch.func`` and every backward beyond the first-order
    logits gradient.

    A row with ``row_scale`` 0 contributes exactly 0 and still gets its true derivative w.r.t.
    ``row_scale`` (its loss: what learning sample weights from 0 needs). Only when such a row's
    loss may be infinite (a NaN or +inf logit, its target's logit at -inf, fewer than two finite
    logits with an FP term) are its logits replaced by zeros first, so that no 0 * inf reaches
    the derivatives; its derivative w.r.t. ``row_scale`` is then 0.
    """
    z = problem.logits.to(compute_dtype(problem.logits.dtype))
    row_scale = problem.row_scale
    unsafe = (row_scale == 0) & _may_be_infinite(z, problem)
    z = torch.where(unsafe.unsqueeze(1), torch.zeros_like(z), z)
    row_loss = _differentiable_row_loss(
        z,
        problem.target,
        problem.fn_weight,
        problem.fp_weight,
        float(problem.label_smoothing),
        problem.fn_rows,
        problem.fp_rows,
    )
    scaled = torch.where(unsafe, torch.zeros_like(row_loss), row_loss * row_scale)
    return scaled.sum() if problem.reduce else scaled


def _may_be_infinite(z: Tensor, problem: Problem) -> Tensor:
    """(R,) bool: rows whose loss may be inf or NaN (see :func:`_composite_loss`)."""
    z = z.detach()
    masked = torch.isneginf(z)
    bad = (torch.isnan(z) | torch.isposinf(z)).any(dim=1)
    target = problem.target.detach()
    if target.dim() == 2:
        bad = bad | (masked & (target != 0)).any(dim=1)
    elif problem.label_smoothing:
        bad = bad | masked.any(dim=1)
    else:
        bad = bad | masked.gather(1, target.unsqueeze(1)).squeeze(1)
    if problem.fp_weight is not None or problem.fp_rows is not None:
        bad = bad | ((~masked).sum(dim=1) < 2)
    return bad


def _differentiable_row_loss(
    z: Tensor,
    target: Tensor,
    fn_weight: Tensor,
    fp_weight: Tensor | None,
    smoothing: float,
    fn_rows: Tensor | None = None,
    fp_rows: Tensor | None = None,
) -> Tensor:
    """The row losses (R,) by composite operations, differentiable any number of times and by
    every ``torch.func`` transform, in the shifted domain.

    Zero-weight terms are masked with ``torch.where`` rather than multiplied, so that a masked
    class (-inf logit, log p = -inf) contributes 0, not 0 * inf, to the loss and its derivatives.
    """
    z = _shifted(z)
    num_classes = z.shape[1]
    log_p = torch.log_softmax(z, dim=1)
    if target.dim() == 2:
        loss = -_weighted_sum(target * fn_weight, log_p)
    else:
        t = target.unsqueeze(1)
        fn_t = fn_weight[target] if fn_rows is None else fn_rows
        coef = (1.0 - smoothing) * fn_t
        log_p_t = log_p.gather(1, t).squeeze(1)
        loss = -_times(coef, log_p_t)
        if smoothing:
            loss = loss - (smoothing / num_classes) * _weighted_sum(fn_weight, log_p)
    if fp_weight is None and fp_rows is None:
        return loss
    w = _fp_coefficients(target, fp_weight, fp_rows, smoothing, num_classes)
    return loss - _weighted_sum(w, log_one_minus_softmax(z, log_p))


def log_one_minus_softmax(z: Tensor, log_p: Tensor | None = None) -> Tensor:
    """log(1 - softmax(z)) for logits z (R, K), in log space and in the shifted domain, by
    composite operations that are differentiable twice and safe for masked (-inf) classes.

    For j != m (the row's arg-max), p_j <= 1/2 and log1p(-p_j) is accurate; for m,
    log(1 - p_m) = -softplus(d) with d = z_m - logsumexp_{j != m} z_j, never through 1 - p_m
    (which rounds to 0 once the logit gap passes ~17 in float32). The arg-max entry of log p is
    masked to -inf before log1p(-exp(.)), so the infinite derivative of log1p at p_m -> 1 is never
    formed; a row whose other classes are all masked gives log(1 - p_m) = -inf without a NaN
    derivative. ``log_p``: ``log_softmax(z)`` when the caller has it.
    """
    z = _shifted(z)
    if log_p is None:
        log_p = torch.log_softmax(z, dim=1)
    argmax = z.detach().argmax(dim=1, keepdim=True)
    is_max = torch.arange(z.shape[1], device=z.device) == argmax
    log_not_p = torch.log1p(-torch.where(is_max, float("-inf"), log_p).exp())
    others = torch.where(is_max, float("-inf"), z)
    has_others = torch.isfinite(others).any(dim=1, keepdim=True)
    others = torch.where(has_others, others, torch.zeros_like(others))  # no all -inf logsumexp
    d = z.gather(1, argmax) - torch.logsumexp(others, dim=1, keepdim=True)
    log_not_p_max = torch.where(has_others, -_softplus(d), float("-inf"))
    return torch.where(is_max, log_not_p_max, log_not_p)


def _shifted(z: Tensor) -> Tensor:
    """z minus its row maximum (a constant for autograd: the loss does not depend on it)."""
    return z - _finite_or_zero(z.detach().amax(dim=1, keepdim=True))


def _weighted_sum(weight: Tensor, log_value: Tensor) -> Tensor:
    """sum_k weight_k * log_value_k over dim 1, with 0 where the weight is 0 (even if log is -inf)."""
    return _times(weight, log_value).sum(dim=1)


def _times(weight: Tensor, log_value: Tensor) -> Tensor:
    """weight * log_value, and 0 where the weight is 0 even if the log is -inf (a masked class).

    Where the weight is 0 the product is formed with the log's finite part, so that the
    derivative w.r.t. the weight there is still the log (exact for learned weights at 0) and no
    0 * inf reaches any derivative.
    """
    finite = torch.where(torch.isfinite(log_value), log_value, torch.zeros_like(log_value))
    return torch.where(weight != 0, weight * log_value, weight * finite)


def _rows_forward(
    z: Tensor,
    target: Tensor,
    fn_weight: Tensor,
    fp_weight: Tensor | None,
    smoothing: float,
    *,
    fn_rows: Tensor | None,
    fp_rows: Tensor | None,
    out_loss: Tensor,
    out_grad: Tensor | None,
    scale: Tensor,
    work: list[Tensor],
) -> None:
    """Loss (and gradient) of a chunk of rows z (R, K), written into ``out_loss`` (unscaled) and
    ``out_grad`` (times the rows' ``scale`` (R, 1)); ``work`` holds the temporaries: four (R, K)
    buffers (one without an FP term).

    Logits enter only as z - max(z) (the shifted domain). Inactive rows, whose scale is 0 (their
    loss will be discarded), get a gradient of exactly 0 whatever their logits (fully masked,
    +inf or NaN). A zero FN weight at a -inf log-probability (a masked target class that
    carries no weight) contributes 0 to the loss, not 0 * inf.
    """
    inactive = scale == 0
    num_classes = z.shape[1]
    soft = target.dim() == 2
    has_fp = fp_weight is not None or fp_rows is not None
    tiny = torch.finfo(z.dtype).tiny
    if not has_fp:
        # Without an FP term only log p is needed: PyTorch's log-softmax (shifted domain).
        log_p = torch.log_softmax(z, dim=1, out=work[0])
        fn_coef = fn_t = None
        if soft:
            fn_coef = target * fn_weight  # a, (R, K)
            fn_total = fn_coef.sum(dim=1, keepdim=True)
            out_loss.copy_(-_weighted_sum(fn_coef, log_p))
        else:
            fn_t = (fn_weight[target] if fn_rows is None else fn_rows).unsqueeze(1)
            loss = -_zero_weight_product(
                (1.0 - smoothing) * fn_t, log_p.gather(1, target.unsqueeze(1))
            )
            if smoothing:
                loss -= (smoothing / num_classes) * _weight_dot(fn_weight, log_p).unsqueeze(1)
            out_loss.copy_(loss.squeeze(1))
            fn_total = (1.0 - smoothing) * fn_t + (smoothing / num_classes) * fn_weight.sum()
        if out_grad is not None:
            # d/dz_i of -sum_k a_k log p_k = p_i * sum_k a_k - a_i, times the row's scale.
            p = torch.exp(log_p, out=out_grad)
            p.mul_(fn_total * scale)
            _subtract_fn_coefficients(
                out_grad, fn_coef, target, fn_t, fn_weight, smoothing, scale=scale
            )
            _zero_inactive_rows(out_grad, inactive)
        return

    # Arg-max m, q_j = exp(z_j - z_m) for j != m (q_m = 0) and S = sum_j q_j, so that
    # d = z_m - logsumexp_{j != m} z_j = -log S: +inf when every other logit is -inf. In the
    # shifted domain log p_k = z_k - z_max - log_total with log_total = softplus(-d).
    z_max, argmax = z.max(dim=1, keepdim=True)
    z_max = _finite_or_zero(z_max)
    q = torch.sub(z, z_max, out=work[0]).exp_().scatter_(1, argmax, 0.0)
    sum_others = q.sum(dim=1, keepdim=True)
    d = sum_others.log().neg_()
    _shift_far_rows_by_second_max(z, argmax, z_max, inactive, q, sum_others, d)
    sum_others = sum_others.clamp_min(tiny)  # as a divisor: q = 0 there anyway
    log_total = _softplus(-d)
    p_max = torch.sigmoid(d)
    one_minus_p_max = torch.sigmoid(-d)
    # p_j = (1 - p_m) q_j / S for j != m; kept negated (and 0 at m) for log1p below.
    minus_p = torch.mul(q, (one_minus_p_max / sum_others).neg_(), out=work[1])

    # FN term: -sum_k a_k log p_k = fn_total * log_total - fn_dot, with a = y * fn.
    fn_coef, fn_t, fn_total, fn_dot = _fn_terms(z, z_max, target, fn_weight, fn_rows, smoothing)
    torch.sub(fn_total * log_total, fn_dot, out=out_loss.unsqueeze(1))

    # FP term: -sum_j w_j log(1 - p_j) with w = y @ FP (or the row's own FP weights); the arg-max
    # class's log(1 - p_m) = -softplus(d), never through 1 - p_m (log1p(-0) = 0 holds its place).
    w, w_at_target = _sweep_fp_coefficients(target, fp_weight, fp_rows, smoothing, work[2])
    w_max = w.expand_as(z).gather(1, argmax)
    log_not_p = torch.log1p(minus_p, out=work[3])
    # Capped so that a zero weight times it stays 0 when d = +inf.
    log_not_p_max = (-_softplus(d)).clamp_min(torch.finfo(z.dtype).min)
    if w_at_target is not None:
        t = target.unsqueeze(1)
        w_max = w_max + torch.where(argmax == t, w_at_target, 0.0)
        out_loss.sub_((w_at_target * log_not_p.gather(1, t)).squeeze(1))
    out_loss.sub_(log_not_p.mul_(w).sum(dim=1))
    out_loss.sub_((w_max * log_not_p_max).squeeze(1))
    if out_grad is None:
        return

    # Gradient of L = -sum_j w_j log(1 - p_j). With dp_j/dz_i = p_j (delta_ij - p_i):
    #   dL/dz_i = sum_j w_j p_j (delta_ij - p_i) / (1 - p_j) = r_i - p_i R,
    #   r_j = w_j p_j / (1 - p_j),  R = sum_j r_j.
    # r_m = w_m p_m / (1 - p_m) overflows when p_m -> 1, so split it off. With R' = sum_{j!=m} r_j
    # and p_i / (1 - p_m) = q_i / S (softmax over the classes != m):
    #   i != m:  dL/dz_i = r_i - p_i R' - w_m p_m q_i / S
    #   i == m:  dL/dz_m = r_m (1 - p_m) - p_m R' = p_m (w_m - R')
    # Every factor is bounded: p_j <= 1/2 for j != m, so 1 - p_j >= 1/2. With the FN gradient
    # p_i sum_k a_k - a_i and p_i = (1 - p_m) q_i / S, every i != m term but r_i is q_i times a
    # row factor. r is built in the gradient buffer itself (r_m = 0 since p is 0 there), times
    # the row's scale s: s r_j = -p_j / ((p_j - 1) / s); the row factors below take s too (an
    # inactive row, s = 0, is zeroed last).
    minus_inv_scale = -1.0 / scale
    p_minus_one = torch.addcmul(minus_inv_scale, minus_p, minus_inv_scale, out=log_not_p)
    r = torch.div(minus_p, p_minus_one, out=out_grad)
    r_target = None if w_at_target is None else r.gather(1, t)
    r.mul_(w)
    if r_target is not None:
        r.scatter_add_(1, t, w_at_target * r_target)
    r_sum = r.sum(dim=1, keepdim=True)  # s R'
    fn_total = fn_total * scale
    w_max = w_max * scale
    q_factor = (one_minus_p_max * (fn_total - r_sum) - w_max * p_max) / sum_others
    out_grad.addcmul_(q, q_factor)
    out_grad.scatter_(1, argmax, p_max * (fn_total + w_max - r_sum))
    _subtract_fn_coefficients(out_grad, fn_coef, target, fn_t, fn_weight, smoothing, scale=scale)
    _zero_inactive_rows(out_grad, inactive)


def _shift_far_rows_by_second_max(
    z: Tensor,
    argmax: Tensor,
    z_max: Tensor,
    inactive: Tensor,
    q: Tensor,
    sum_others: Tensor,
    d: Tensor,
) -> None:
    """Redo q, S and d in place for the rows whose other classes all lie far below the arg-max.

    Once z_m - z_j passes about 87 (float32) for every j != m, exp(z_j - z_m) underflows and
    S = sum_j q_j loses its digits (or is 0, making d infinite). Those rows take the other
    classes relative to their own maximum z_s instead: q_j = exp(z_j - z_s) and
    d = (z_m - z_s) - log S. The products q_j / S the caller forms are the same either way.
    """
    far = (sum_others < _FAR_SUM) & ~inactive
    if z.device.type == "cpu":  # picking the far rows reads the mask: free on the CPU
        rows = far.squeeze(1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        far = far[rows]
    else:  # every row, kept where far: no synchronisation with the host
        rows = torch.arange(z.shape[0], device=z.device)
    others = z[rows].scatter(1, argmax[rows], float("-inf"))
    second_max = _finite_or_zero(others.amax(dim=1, keepdim=True))
    q_far = others.sub_(second_max).exp_()
    sum_far = q_far.sum(dim=1, keepdim=True)
    d_far = (z_max[rows] - second_max) - sum_far.log()
    q[rows] = torch.where(far, q_far, q[rows])
    sum_others[rows] = torch.where(far, sum_far, sum_others[rows])
    d[rows] = torch.where(far, d_far, d[rows])


def _row_inputs(problem: Problem) -> tuple:
    """(z, target, fn_weight, fp_weight, fn_rows, fp_rows, smoothing), with the logits z in the
    compute dtype."""
    z = problem.logits.to(compute_dtype(problem.logits.dtype))
    fields = (
        problem.target,
        problem.fn_weight,
        problem.fp_weight,
        problem.fn_rows,
        problem.fp_rows,
    )
    return (z, *fields, float(problem.label_smoothing))


def _finite_or_zero(row_max: Tensor) -> Tensor:
    """A row maximum, or 0 where it is -inf (every logit masked), so that ``z - max`` never
    forms -inf - -inf."""
    return torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))


def _zero_inactive_rows(grad: Tensor, inactive: Tensor) -> None:
    """Set the gradient of inactive rows (``inactive`` (R, 1): scale 0) to the exact 0 their
    scale gives: whatever their logits (fully masked, +inf, NaN), the sweep's arithmetic on them
    may have left NaN (0 * inf, 1 / 0) there. Only the rows' own entries are affected."""
    if not grad.is_cpu or inactive.any():  # reading the mask is free on the CPU
        grad.masked_fill_(inactive, 0.0)


def _subtract_fn_coefficients(
    grad: Tensor,
    fn_coef: Tensor | None,
    target: Tensor,
    fn_t: Tensor | None,
    fn_weight: Tensor,
    smoothing: float,
    scale: Tensor | None = None,
) -> None:
    """grad -= a (times the rows' ``scale`` (R, 1) when given), with a = y * fn: given (soft
    targets) or (1 - e) fn_t onehot(t) + e fn / K, where fn_t (R, 1) is each row's FN weight of
    its target."""
    if fn_coef is not None:
        if scale is None:
            grad.sub_(fn_coef)
        else:
            grad.addcmul_(fn_coef, scale, value=-1.0)
        return
    at_target = -(1.0 - smoothing) * fn_t
    grad.scatter_add_(1, target.unsqueeze(1), at_target if scale is None else at_target * scale)
    if smoothing:
        uniform = (smoothing / grad.shape[1]) * fn_weight
        if scale is None:
            grad.sub_(uniform)
        else:
            grad.addcmul_(scale, uniform, value=-1.0)


def _sweep_fp_coefficients(
    target: Tensor,
    fp_weight: Tensor | None,
    fp_rows: Tensor | None,
    smoothing: float,
    out: Tensor,
) -> tuple[Tensor, Tensor | None]:
    """w = y @ FP for the eager sweep, as ``(w, w_at_target)``: w (R, K) written into ``out``,
    and None; or, for class indices and a (K,) fp_weight v, w as one shared (1, K) row
    v (1 - e/K) and ``w_at_target`` (R, 1) = -(1 - e) v_t, which the sweep adds at each row's
    target column itself, so that no (R, K) w is written or read."""
    if fp_rows is None and target.dim() == 1 and fp_weight.dim() == 1:
        shared = (fp_weight * (1.0 - smoothing / fp_weight.shape[0])).unsqueeze(0)
        return shared, -(1.0 - smoothing) * fp_weight[target].unsqueeze(1)
    w = _fp_coefficients(target, fp_weight, fp_rows, smoothing, out.shape[1], out=out)
    return w, None


def _fp_coefficients(
    target: Tensor,
    fp_weight: Tensor | None,
    fp_rows: Tensor | None,
    smoothing: float,
    num_classes: int,
    out: Tensor | None = None,
) -> Tensor:
    """w = y @ FP for a chunk: (R, K); the rows' own FP weights ``fp_rows`` with 0 at the target
    when given. A (K,) ``fp_weight`` v means FP[t, j] = v[j] for j != t. Written into ``out``
    (R, K) when one is given (the eager sweep); ``None`` keeps it differentiable."""
    t = target.unsqueeze(1)
    if fp_rows is not None:
        return torch.scatter(fp_rows, 1, t, 0.0, out=out)
    if target.dim() == 2:  # soft targets
        if fp_weight.dim() == 2:
            return torch.matmul(target, fp_weight, out=out)
        return torch.sub(target.sum(dim=1, keepdim=True), target, out=out).mul_(fp_weight)
    uniform = smoothing / num_classes
    if fp_weight.dim() == 2:
        w = torch.index_select(fp_weight, 0, target, out=out)
        if smoothing:
            w.mul_(1.0 - smoothing).add_(uniform * fp_weight.sum(dim=0))
        return w
    # (y @ FP)_j = v_j * (1 - y_j) with y = (1 - e) onehot(t) + e / K.
    w = (fp_weight * (1.0 - uniform)).expand(target.shape[0], num_classes)
    fp_target = -(1.0 - smoothing) * fp_weight[target].unsqueeze(1)
    return torch.scatter_add(w, 1, t, fp_target, out=out)


def _fn_terms(
    z: Tensor,
    z_max: Tensor,
    target: Tensor,
    fn_weight: Tensor,
    fn_rows: Tensor | None,
    smoothing: float,
) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor]:
    """The FN coefficients a = y * fn of rows z (R, K) and their two row sums.

    Returns ``(fn_coef, fn_t, fn_total, fn_dot)``: for soft targets ``fn_coef`` is a (R, K) and
    ``fn_t`` None; for class indices ``fn_coef`` is None and ``fn_t`` (R, 1) is each row's FN
    weight of its target (a = (1 - e) fn_t onehot(t) + e fn / K). ``fn_total`` = sum_k a_k and
    ``fn_dot`` = sum_k a_k (z_k - z_max), both (R, 1), so that the FN loss is
    -sum_k a_k log p_k = fn_total * log(sum_k exp(z_k - z_max)) - fn_dot.
    """
    if target.dim() == 2:
        fn_coef = target * fn_weight
        fn_dot = _weighted_sum(fn_coef, z - z_max).unsqueeze(1)
        return fn_coef, None, fn_coef.sum(dim=1, keepdim=True), fn_dot
    fn_t = (fn_weight[target] if fn_rows is None else fn_rows).unsqueeze(1)
    fn_total = (1.0 - smoothing) * fn_t
    fn_dot = _zero_weight_product(fn_total, z.gather(1, target.unsqueeze(1)) - z_max)
    if smoothing:
        uniform = smoothing / z.shape[1]
        fn_total = fn_total + uniform * fn_weight.sum()
        fn_dot = fn_dot + uniform * _weighted_sum(fn_weight, z - z_max).unsqueeze(1)
    return None, fn_t, fn_total, fn_dot


def _zero_weight_product(weight: Tensor, log_value: Tensor) -> Tensor:
    """weight * log_value, 0 where the weight is 0 even if the log is -inf; for the forms that
    differentiate by hand (three operations on a (R, 1) column, where :func:`_times`, which keeps
    the derivative w.r.t. the weight, takes five)."""
    return torch.where(weight != 0, weight * log_value, 0.0)


def _weight_dot(weight: Tensor, log_value: Tensor) -> Tensor:
    """sum_k weight_k * log_value_k (R,) for a (K,) weight, as one matrix product; rows where
    that is NaN (a zero weight at a -inf log, or a NaN log) are redone by :func:`_weighted_sum`,
    which gives 0 for the former."""
    dot = log_value @ weight
    if not dot.is_cpu or dot.isnan().any():  # reading the result is free on the CPU
        dot = torch.where(dot.isnan(), _weighted_sum(weight, log_value), dot)
    return dot


def _softplus(x: Tensor) -> Tensor:
    """log(1 + exp(x)), exact at every x (``F.softplus`` returns x itself above 20, off by up to
    2e-9, visible in float64)."""
    return torch.logaddexp(x, torch.zeros_like(x))
