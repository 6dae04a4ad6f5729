"""Fused Triton backend: the RWWCE loss and its gradient in one kernel.

Implements the backend contract of :mod:`rwwce.kernels` (see there, and ``kernels/reference.py``
for the executable spec). Three layers:

1. ``_rwwce_fwd_kernel`` (``@triton.jit``): one program per block of rows. It sweeps the row's
   logits once for the row statistics (arg-max m, its logit, and the log-sum-exp of the *other*
   classes relative to the second-largest logit), then computes the loss and, when a gradient is
   needed, d loss / d logits, scaled by ``row_scale``. When the row fits in one block
   (K <= ``BLOCK_K``, up to 8192 classes) the logits are read from memory exactly once and the
   gradient written once. Larger vocabularies loop over column blocks: a statistics sweep, a
   loss sweep (which also collects the row sums the gradient needs) and a gradient sweep; without
   an FP term the gradient is written in the loss sweep (two reads of the logits). Every sweep
   runs the same column-block body, ``_column_block``; ``FP_MODE`` and ``GRAD_MODE`` take the
   named constants ``_FP_*`` and ``_GRAD_*``. Per-row costs (``Problem.fn_rows`` /
   ``fp_rows``, from per-sample cost matrices) replace fn[t] (flag ``FN_ROWS``) and the row
   FP[t, :] (``_FP_ROWS``: row i of an (M, K) matrix, its entry at t taken as 0).
   Exact on every path: a masked class (-inf logit) gets exactly zero gradient (its terms are
   masked, never computed as exp(-inf + inf)); a row with ``row_scale == 0`` stores exactly 0
   loss and gradient whatever its logits; a target outside [0, K) reads no weight and makes its
   row's loss and gradient NaN (targets reach the kernel unchecked on CUDA).
2. ``_launch_forward`` / ``_launch_scale``: contiguity, allocation, block sizes, grid.
3. Registered operators (``torch.ops.rwwce.triton_loss`` / ``triton_scale``, at the end of
   this file): ``torch.library.triton_op`` with ``wrap_triton`` launches on a GPU (a plain
   ``custom_op`` under the interpreter), a fake implementation from shapes, and
   ``register_autograd``. The forward computes the loss and the gradient into a new buffer in
   the logits' dtype; the backward only multiplies it by the incoming gradient, on the device,
   without a host synchronisation (a tiny kernel that skips elements whose upstream factor is
   exactly 1). That gradient is not differentiable: a backward with ``create_graph=True``
   raises a RuntimeError that points to ``backend="torch"``.

Triton is optional: its import here is guarded, so importing this module never fails when triton
is missing (``is_available()`` then returns False), and ``import rwwce`` never imports this module
(``rwwce.kernels.dispatch`` imports it on the first call that may use it).
``TRITON_INTERPRET=1`` must be in the environment before this module is first imported (triton
decides at ``@triton.jit`` decoration time whether a kernel runs in its interpreter); then
``rwwce_loss`` accepts CPU tensors and runs the same kernel code in the interpreter.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional

import torch
from torch import Tensor

from rwwce.kernels import Problem, graph_is_retained

__all__ = ["is_available", "supports", "rwwce_loss", "rwwce_loss_and_grad"]

try:  # triton is an optional dependency (the `gpu` extra)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None

# torch.library.triton_op / wrap_triton (torch >= 2.6) make the kernel launches visible to
# torch.compile; custom_op (torch >= 2.4) is the opaque fallback (and the interpreter's path).
_triton_op = getattr(torch.library, "triton_op", None)
_custom_op = getattr(torch.library, "custom_op", None)
wrap_triton = getattr(torch.library, "wrap_triton", lambda kernel: kernel)

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Largest column block; rows with more classes loop over blocks of this size (three sweeps).
_MAX_BLOCK_K = 8192
# Elements per program tile when many short rows share a program (small K).
_TILE_ELEMENTS = 2048
_SCALE_BLOCK = 4096


def _interpret_mode() -> bool:
    """TRITON_INTERPRET=1 now, and it was set when this module's kernels were decorated."""
    return os.environ.get("TRITON_INTERPRET") == "1" and _kernels_interpreted()


def _kernels_interpreted() -> bool:
    # triton reads TRITON_INTERPRET in @triton.jit, i.e. when this module was imported
    return _KERNELS_INTERPRETED


@functools.cache
def is_available() -> bool:
    """True when triton is importable and there is a CUDA device or ``TRITON_INTERPRET=1``."""
    if triton is None:
        return False
    return bool(torch.cuda.is_available() or _interpret_mode())


def supports(problem: Problem) -> str | None:
    """None when the kernel handles this problem, else a short reason (for fallback or an error).

    The kernel differentiates the logits only: a problem where a weight, ``row_scale``, a
    per-row cost or a soft target requires grad is refused (the torch backend gives those
    inputs their gradients).
    """
    if triton is None:
        return "triton is not installed"
    if _custom_op is None:  # pragma: no cover - torch < 2.4
        return f"torch {torch.__version__} has no torch.library.custom_op (torch >= 2.4 needed)"
    logits, target = problem.logits, problem.target
    if logits.dim() != 2:
        return f"logits must be 2-D (M, K); got shape {tuple(logits.shape)}"
    if logits.dtype == torch.float64:
        return "float64 logits (the kernel computes in float32; use backend='torch')"
    if logits.dtype not in _SUPPORTED_DTYPES:
        return f"logits dtype {logits.dtype}"
    if logits.device.type != "cuda" and not (logits.device.type == "cpu" and _interpret_mode()):
        return (
            f"logits on {logits.device.type} (needs CUDA, or CPU with TRITON_INTERPRET=1 set "
            "before rwwce.kernels.triton is imported)"
        )
    num_rows, num_classes = logits.shape
    if num_classes == 0:
        return "zero classes"
    if target.device != logits.device:
        return "target on a different device than logits"
    soft = target.dim() == 2
    if soft:
        if target.shape != logits.shape:
            return f"soft target shape {tuple(target.shape)} != logits shape {tuple(logits.shape)}"
        if not target.is_floating_point():
            return "soft targets must be floating point"
    elif target.dim() != 1 or target.is_floating_point() or target.is_complex():
        return f"target must be (M,) class indices or (M, K) probabilities; got {target.dtype} {tuple(target.shape)}"
    fp_weight, fn_rows, fp_rows = problem.fp_weight, problem.fn_rows, problem.fp_rows
    if fp_weight is not None and fp_weight.dim() not in (1, 2):
        return f"fp_weight must be (K,) or (K, K); got shape {tuple(fp_weight.shape)}"
    if fn_rows is not None or fp_rows is not None:
        if soft:
            return "per-row costs (fn_rows / fp_rows) need class-index targets"
        if problem.label_smoothing:
            return "per-row costs (fn_rows / fp_rows) with label smoothing"
    if fn_rows is not None and tuple(fn_rows.shape) != (num_rows,):
        return f"fn_rows must be ({num_rows},); got shape {tuple(fn_rows.shape)}"
    if fp_rows is not None:
        if fp_weight is not None:
            return "fp_rows and fp_weight together (they are exclusive)"
        if tuple(fp_rows.shape) != (num_rows, num_classes):
            return f"fp_rows must be ({num_rows}, {num_classes}); got shape {tuple(fp_rows.shape)}"
    needs_grad = [
        name
        for name, value in (
            ("fn_weight", problem.fn_weight),
            ("fp_weight", fp_weight),
            ("fn_rows", fn_rows),
            ("fp_rows", fp_rows),
            ("row_scale", problem.row_scale),
            ("the soft target", target if soft else None),
        )
        if value is not None and value.requires_grad
    ]
    if needs_grad and torch.is_grad_enabled():
        return (
            f"{', '.join(needs_grad)} requires grad, and the kernel differentiates the logits "
            "only (backend='torch' gives those gradients)"
        )
    return None


def rwwce_loss(problem: Problem) -> Tensor:
    """RWWCE on a flattened (M, K) problem with the fused Triton kernel.

    Same contract as the torch backend (:mod:`rwwce.kernels`): returns the 0-dim sum
    (``problem.reduce``) or the (M,) vector of ``row_scale * loss_row`` in float32,
    differentiable w.r.t. ``logits`` only (the gradient comes back in the logits' dtype).
    ``problem.block_k`` (a power of two) overrides the column block size; meant for tests and
    tuning. The work is the registered operator ``torch.ops.rwwce.triton_loss`` (visible to
    ``torch.compile``), whose backward is ``torch.ops.rwwce.triton_scale``.
    """
    reason = supports(problem)
    if reason is not None:
        raise ValueError(f"the Triton RWWCE kernel cannot run this call: {reason}")
    block_k = problem.block_k
    if block_k is not None and (block_k < 2 or block_k & (block_k - 1)):
        raise ValueError(f"block_k must be a power of two >= 2; got {block_k}")
    logits = problem.logits
    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    row_loss, _ = torch.ops.rwwce.triton_loss(
        logits,
        problem.target,
        problem.fn_weight,
        problem.fp_weight,
        problem.row_scale,
        problem.fn_rows,
        problem.fp_rows,
        float(problem.label_smoothing),
        block_k,
        compute_grad,
    )
    return row_loss.sum() if problem.reduce else row_loss


# ---------------------------------------------------------------------------------------------
# Autograd of the registered forward (torch.ops.rwwce.triton_loss)
# ---------------------------------------------------------------------------------------------


def _setup_context(ctx, inputs, output):
    # Only our own gradient buffer is saved (not the logits): autograd frees it after a
    # backward that does not retain the graph, and reports a second backward as usual.
    _, grad = output
    ctx.mark_non_differentiable(grad)
    ctx.save_for_backward(grad)


def _backward(ctx, grad_row_loss, _grad_of_grad):
    """d loss / d logits = grad * upstream, row by row: a multiplication on the device."""
    if torch.is_grad_enabled():  # create_graph=True: a derivative of this backward is wanted
        raise RuntimeError(
            "the Triton RWWCE backend cannot be differentiated twice (a backward with "
            "create_graph=True: gradient penalties, Hessian-vector products, double "
            "backward); use backend='torch', whose double backward is exact"
        )
    (grad,) = ctx.saved_tensors
    grads = [None] * 10
    if ctx.needs_input_grad[0] and grad.dim() == 2:
        if _eager(grad) and not graph_is_retained():
            # The graph is freed after this backward, so the buffer is ours to consume: scale
            # it in place (a no-op for an upstream factor of exactly 1, decided on the device).
            grads[0] = _launch_scale(grad, grad_row_loss, in_place=True)
        else:
            # A retained graph needs the unscaled buffer again (retain_graph=True, or torch too
            # old to tell); a traced backward (torch.compile) gets the out-of-place operator.
            grads[0] = torch.ops.rwwce.triton_scale(grad, grad_row_loss)
    return tuple(grads)


def _eager(tensor: Tensor) -> bool:
    """A plain tensor outside any tracing mode (torch.compile, make_fx): a launch may run now."""
    return (
        type(tensor) is torch.Tensor
        and not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
    )


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _device_of(tensor: Tensor):
    """Launch on the tensor's GPU (triton launches on the current device)."""
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _block_sizes(num_classes: int, block_k: int | None) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_K, num_warps) for K classes; single pass when num_classes <= BLOCK_K.

    Independent of the number of rows, so that a compiled graph serves every batch size
    (``torch.compile(dynamic=True)`` traces the launch with a symbolic row count).
    """
    if block_k is None:
        block_k = min(_next_power_of_2(num_classes), _MAX_BLOCK_K)
    block_k = max(block_k, 2)
    block_m = max(1, _TILE_ELEMENTS // block_k) if num_classes <= block_k else 1
    tile = block_m * block_k
    num_warps = min(32, max(4, tile // 256))
    return block_m, block_k, num_warps


def rwwce_loss_and_grad(problem: Problem) -> tuple[Tensor, Tensor]:
    """The scaled row losses (M,) in float32 and their gradient w.r.t. the logits (M, K) in the
    logits' dtype, from one launch and without autograd (as
    :func:`rwwce.kernels.reference.rwwce_loss_and_grad`; used inside the fused linear loss's
    operator, where autograd does not run). ``problem.reduce`` is ignored."""
    reason = supports(problem)
    if reason is not None:
        raise ValueError(f"the Triton RWWCE kernel cannot run this call: {reason}")
    return _launch_forward(
        problem.logits, problem.target, problem.fn_weight, problem.fp_weight, problem.row_scale,
        problem.fn_rows, problem.fp_rows, float(problem.label_smoothing), problem.block_k, True,
    )  # fmt: skip


def _launch_forward(
    logits: Tensor,
    target: Tensor,
    fn_weight: Tensor,
    fp_weight: Tensor | None,
    row_scale: Tensor,
    fn_rows: Tensor | None,
    fp_rows: Tensor | None,
    label_smoothing: float,
    block_k: int | None,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Run the fused kernel: (row_scale * loss_row as float32 (M,), gradient (M, K) in the
    logits' dtype, or an empty (0,) tensor when ``compute_grad`` is False)."""
    num_rows, num_classes = logits.shape
    device = logits.device
    f32 = torch.float32
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    row_loss = torch.empty(num_rows, dtype=f32, device=device)
    shape = (num_rows, num_classes) if compute_grad else (0,)
    grad = torch.empty(shape, dtype=logits.dtype, device=device)
    if num_rows == 0:
        return row_loss, grad

    fn = fn_weight.detach().to(device=device, dtype=f32).contiguous()
    scale = row_scale.detach().to(device=device, dtype=f32).contiguous()
    soft = target.dim() == 2
    smoothing = 0.0 if soft else label_smoothing
    if fp_rows is not None:
        fp_mode = _FP_ROWS
        fp = fp_rows.detach().to(device=device, dtype=f32).contiguous()
    elif fp_weight is None:
        fp_mode = _FP_NONE
        fp = fn  # placeholder pointer when unused
    else:
        fp_mode = _FP_VECTOR if fp_weight.dim() == 1 else _FP_MATRIX
        fp = fp_weight.detach().to(device=device, dtype=f32).contiguous()
    fn_per_row = fn if fn_rows is None else fn_rows.detach().to(dtype=f32).contiguous()
    fp_colsum = fn  # placeholder pointer when unused
    soft_w = fn
    if soft:
        tgt = target.detach().to(dtype=f32).contiguous()
        if fp_mode is _FP_MATRIX:
            soft_w = (tgt @ fp).contiguous()  # w = y @ FP
        elif fp_mode is _FP_VECTOR:
            soft_w = (fp * (tgt.sum(dim=1, keepdim=True) - tgt)).contiguous()
    else:
        tgt = target.detach().contiguous()
        if fp_mode is _FP_MATRIX and smoothing != 0.0:
            fp_colsum = fp.sum(dim=0).contiguous()

    block_m, block_k, num_warps = _block_sizes(num_classes, block_k)
    grid = (triton.cdiv(num_rows, block_m),)
    if not compute_grad:
        grad_mode = _GRAD_NONE
    elif num_classes > block_k and fp_mode is _FP_NONE:
        grad_mode = _GRAD_IN_LOSS_SWEEP
    else:
        grad_mode = _GRAD_AFTER_SUMS
    with _device_of(logits):
        wrap_triton(_rwwce_fwd_kernel)[grid](
            logits,
            logits.stride(0),
            tgt,
            fn,
            fn_per_row,
            fp,
            fp_colsum,
            soft_w,
            scale,
            row_loss,
            grad if compute_grad else row_loss,
            num_rows,
            num_classes,
            float(smoothing),
            FP_MODE=fp_mode.value,
            FN_ROWS=fn_rows is not None,
            SOFT=soft,
            SMOOTH=smoothing != 0.0,
            GRAD_MODE=grad_mode.value,
            BLOCK_M=block_m,
            BLOCK_K=block_k,
            SINGLE_PASS=num_classes <= block_k,
            ROUND_BF16=_kernels_interpreted() and logits.dtype == torch.bfloat16,
            num_warps=num_warps,
        )
    return row_loss, grad


def _launch_scale(grad: Tensor, grad_output: Tensor, in_place: bool) -> Tensor:
    """grad * grad_output ((M,) per row, or one factor: 0-dim, or (M,) expanded from a sum's
    0-dim upstream) on the device, without a host sync.

    In place, elements whose factor is exactly 1 are neither read nor written; otherwise the
    product goes into a new tensor and ``grad`` is left untouched.
    """
    go = grad_output.detach().to(device=grad.device, dtype=torch.float32)
    if go.dim() == 1 and go.shape[0] > 0 and go.stride(0) == 0:
        go = go[:1].reshape(())  # one factor broadcast over the rows (the sum's backward)
    per_row = go.dim() > 0
    go = go.contiguous() if per_row else go.reshape(1)
    out = grad if in_place else torch.empty_like(grad)
    numel = grad.numel()
    if numel == 0:
        return out
    grid = (triton.cdiv(numel, _SCALE_BLOCK),)
    with _device_of(grad):
        wrap_triton(_scale_kernel)[grid](
            grad,
            out,
            go,
            numel,
            grad.shape[1],
            PER_ROW=per_row,
            IN_PLACE=in_place,
            BLOCK=_SCALE_BLOCK,
            ROUND_BF16=_kernels_interpreted() and grad.dtype == torch.bfloat16,
            num_warps=8,
        )
    return out


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

if triton is not None:
    # Named kernel modes. @triton.jit code may read module globals only when they are
    # tl.constexpr; the launcher passes their ``.value``.
    _FP_NONE = tl.constexpr(0)  # fp_weight=None: class-weighted cross-entropy
    _FP_VECTOR = tl.constexpr(1)  # FP[t, j] = v[j] for j != t
    _FP_MATRIX = tl.constexpr(2)  # FP[t, j] from a (K, K) matrix
    _FP_ROWS = tl.constexpr(3)  # FP_i[j] from row i of an (M, K) matrix (per-sample costs)
    _GRAD_NONE = tl.constexpr(0)  # loss only
    # the gradient once the row sums are known: from registers when the row is one block,
    # else in a third sweep over the column blocks
    _GRAD_AFTER_SUMS = tl.constexpr(1)
    # the gradient written in the loss sweep (several column blocks and no FP term: the row
    # sum it needs does not depend on the logits, so the logits are read twice, not three times)
    _GRAD_IN_LOSS_SWEEP = tl.constexpr(2)

    @triton.jit
    def _log1p(x):
        # log(1 + x) accurate for small |x| (Goldberg's trick: u - 1 is exact, and the ratio
        # x / (u - 1) corrects log(u) for the rounding of u = 1 + x). Few-ulp accurate in float32.
        u = 1.0 + x
        um1 = u - 1.0
        safe = tl.where(um1 == 0.0, 1.0, um1)
        return tl.where(um1 == 0.0, x, tl.log(u) * (x / safe))

    @triton.jit
    def _softplus(x):
        # log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|)).
        return tl.maximum(x, 0.0) + _log1p(tl.exp(-tl.abs(x)))

    @triton.jit
    def _to_dtype(x, ptr, ROUND_BF16: tl.constexpr):
        """Cast float32 to the element type of ``ptr``, rounding to nearest even.

        Triton's interpreter truncates float32 -> bfloat16 conversions (the GPU rounds to nearest
        even); ``ROUND_BF16`` (set only under TRITON_INTERPRET=1) does the rounding on the bits so
        that the interpreter reproduces the GPU's result.
        """
        if ROUND_BF16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            y = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            y = x.to(ptr.dtype.element_ty)
        return y

    @triton.jit
    def _scaled(x, scale):
        """x * scale, and exactly 0 where scale == 0 (ignored or zero-weight rows), whatever x
        is (inf from a masked class, NaN from NaN logits): never 0 * inf."""
        return tl.where(scale == 0.0, 0.0, x * scale)

    @triton.jit
    def _tile_stats(z, cols):
        """Per-row (max, first arg-max column, max of the others, sum exp(others - that max)).

        Masked classes (-inf) join the sums as exp(-inf - finite) = 0; a row whose other classes
        are all -inf gets (-inf, 0) for the last two.
        """
        tmax = tl.max(z, axis=1)
        big = 2147483647
        targ = tl.min(tl.where(z == tmax[:, None], cols[None, :], big), axis=1)
        others = tl.where(cols[None, :] == targ[:, None], float("-inf"), z)
        omax = tl.max(others, axis=1)
        base = tl.where(omax == float("-inf"), 0.0, omax)
        osum = tl.sum(tl.exp(others - base[:, None]), axis=1)
        return tmax, targ, omax, osum

    @triton.jit
    def _merge_stats(m, idx, m2, s2, bm, bidx, bm2, bs2):
        """Merge running (max, argmax, second max, sum over others) with a block's."""
        # The block's max becomes the new arg-max only when strictly larger (first occurrence
        # wins on ties); the loser of the two maxima joins the "others". Every exponent below is
        # (value - base) with a finite base, so -inf values give exp(-inf) = 0, never inf - inf.
        new_max = bm > m
        loser = tl.where(new_max, m, bm)
        n2 = tl.maximum(tl.maximum(m2, bm2), loser)
        base = tl.where(n2 == float("-inf"), 0.0, n2)
        n_s2 = s2 * tl.exp(m2 - base) + bs2 * tl.exp(bm2 - base) + tl.exp(loser - base)
        return tl.maximum(m, bm), tl.where(new_max, bidx, idx), n2, n_s2

    @triton.jit
    def _row_stats(mx, amax, m2, s2):
        """The row statistics every column block needs, as one tuple.

        (mx, amax, base2, log_s2, has_others, d, c, sig_d): d = z_m - logsumexp_{j != m} z_j
        from the second max (z_m - m2 is exact-ish and s2 >= 1, so nothing underflows even for a
        logit gap of 1e4); c = softplus(-d) = -log p_m; sig_d = sigmoid(d) = p_m. When every
        other class is masked (-inf, or K = 1) there is no "other" mass: d = +inf, p_m = 1, and
        base2 = log_s2 = 0 keep every later exponent free of inf - inf.
        """
        has_others = s2 > 0.0
        base2 = tl.where(m2 == float("-inf"), 0.0, m2)
        log_s2 = tl.log(tl.where(has_others, s2, 1.0))
        d = tl.where(has_others, (mx - base2) - log_s2, float("inf"))
        return mx, amax, base2, log_s2, has_others, d, _softplus(-d), tl.sigmoid(d)

    @triton.jit
    def _coefficients(cols, ok, row, weights, n_cols, smoothing, FP_MODE, SOFT, SMOOTH):
        """a = y * fn and w = y @ FP on a tile (zero outside the valid columns).

        ``row`` = (rows_c, t, fn_t): row indices, targets (already in [0, K)) and the row's FN
        weight (fn[t], or fn_rows[i]); with ``FP_MODE == _FP_ROWS`` ``fp_ptr`` is the (M, K)
        per-row FP matrix and w_j = fp_rows[i, j] for j != t, 0 at t (whatever is stored there);
        ``weights`` = (target_ptr, fn_ptr, fp_ptr, fp_colsum_ptr, soft_w_ptr).
        """
        rows_c, t, fn_t = row
        target_ptr, fn_ptr, fp_ptr, fp_colsum_ptr, soft_w_ptr = weights
        offs2 = rows_c[:, None] * n_cols + cols[None, :]
        in_k = cols < n_cols
        if SOFT:
            y = tl.load(target_ptr + offs2, mask=ok, other=0.0)
            fn = tl.load(fn_ptr + cols, mask=in_k, other=0.0)
            a = y * fn[None, :]
            if FP_MODE != _FP_NONE:
                w = tl.load(soft_w_ptr + offs2, mask=ok, other=0.0)
            else:
                w = tl.zeros_like(a)
        else:
            is_t = cols[None, :] == t[:, None]
            a = tl.where(is_t, (1.0 - smoothing) * fn_t[:, None], 0.0)
            uniform = smoothing / n_cols
            if SMOOTH:
                fn = tl.load(fn_ptr + cols, mask=in_k, other=0.0)
                a = a + uniform * fn[None, :]
            if FP_MODE == _FP_VECTOR:
                # FP[t, j] = v_j for j != t, so (y @ FP)_j = v_j (1 - y_j).
                v = tl.load(fp_ptr + cols, mask=in_k, other=0.0)
                if SMOOTH:
                    y = tl.where(is_t, 1.0 - smoothing + uniform, uniform)
                    w = v[None, :] * (1.0 - y)
                else:
                    w = tl.where(is_t, 0.0, v[None, :] + tl.zeros_like(a))
            elif FP_MODE == _FP_MATRIX:
                w = tl.load(
                    fp_ptr + t[:, None].to(tl.int64) * n_cols + cols[None, :], mask=ok, other=0.0
                )
                if SMOOTH:
                    cs = tl.load(fp_colsum_ptr + cols, mask=in_k, other=0.0)
                    w = (1.0 - smoothing) * w + uniform * cs[None, :]
            elif FP_MODE == _FP_ROWS:
                # no smoothing here (the front end refuses it with per-row costs)
                w = tl.where(is_t, 0.0, tl.load(fp_ptr + offs2, mask=ok, other=0.0))
            else:
                w = tl.zeros_like(a)
        a = tl.where(ok, a, 0.0)
        w = tl.where(ok, w, 0.0)
        return a, w

    @triton.jit
    def _w_at(col, row, weights, n_cols, smoothing, FP_MODE, SOFT, SMOOTH):
        """w = (y @ FP) at one column per row (the arg-max class)."""
        rows_c, t, fn_t = row
        target_ptr, fn_ptr, fp_ptr, fp_colsum_ptr, soft_w_ptr = weights
        # the arg-max is a valid column unless the row holds NaN: read nothing then
        ok = (col >= 0) & (col < n_cols)
        if FP_MODE == _FP_NONE:
            wm = tl.zeros(rows_c.shape, dtype=tl.float32)
        elif SOFT:
            wm = tl.load(soft_w_ptr + rows_c * n_cols + col, mask=ok, other=0.0)
        else:
            uniform = smoothing / n_cols
            if FP_MODE == _FP_VECTOR:
                v = tl.load(fp_ptr + col, mask=ok, other=0.0)
                if SMOOTH:
                    y = tl.where(col == t, 1.0 - smoothing + uniform, uniform)
                    wm = v * (1.0 - y)
                else:
                    wm = tl.where(col == t, 0.0, v)
            elif FP_MODE == _FP_ROWS:
                wm = tl.load(fp_ptr + rows_c * n_cols + col, mask=ok, other=0.0)
                wm = tl.where(col == t, 0.0, wm)
            else:
                wm = tl.load(fp_ptr + t.to(tl.int64) * n_cols + col, mask=ok, other=0.0)
                if SMOOTH:
                    cs = tl.load(fp_colsum_ptr + col, mask=ok, other=0.0)
                    wm = (1.0 - smoothing) * wm + uniform * cs
        return wm

    @triton.jit
    def _column_block(
        z,
        cols,
        ok,
        row,
        stats,
        weights,
        coef,
        wm_sd,
        n_cols,
        smoothing,
        FP_MODE: tl.constexpr,
        SOFT: tl.constexpr,
        SMOOTH: tl.constexpr,
        LOSS: tl.constexpr,
        GRAD: tl.constexpr,
        WHOLE_ROW: tl.constexpr,
    ):
        """One column block of a row block: (loss part, A part, R' part, unscaled gradient).

        loss_row = -sum_k a_k log p_k - sum_j w_j log(1 - p_j)   (a = y fn, w = y @ FP), with
        A = sum_k a_k and R' = sum_{j != m} w_j p_j / (1 - p_j) summed over the row's blocks.
        ``LOSS``: compute the loss part and R' part (else zeros); ``GRAD``: the gradient (else
        zeros), which needs the whole row's ``coef`` = A - R' and ``wm_sd`` = w_m sigmoid(d):
        passed by the caller, or taken from this block's own sums when ``WHOLE_ROW`` (the block
        is the row).
        """
        mx, amax, base2, log_s2, has_others, d, c, sig_d = stats
        a, w = _coefficients(cols, ok, row, weights, n_cols, smoothing, FP_MODE, SOFT, SMOOTH)
        is_m = cols[None, :] == amax[:, None]
        # log p_j = (z_j - z_m) - softplus(-d): exact for j = m too (z_m - z_m = 0); -inf for a
        # masked class, whose p_j = exp(-inf) = 0.
        log_p = (z - mx[:, None]) - c[:, None]
        p = tl.where(is_m, sig_d[:, None], tl.exp(log_p))
        p = tl.where(ok, p, 0.0)
        a_part = tl.sum(a, axis=1)
        loss_part = tl.zeros_like(a_part)
        r_part = tl.zeros_like(a_part)
        g = tl.zeros_like(p)
        # ---- gradient ---------------------------------------------------------------------
        # L = -sum_k a_k log p_k - sum_j w_j log(1 - p_j), with d log p_k / dz_i = delta_ki - p_i
        # and d p_j / dz_i = p_j (delta_ij - p_i):
        #   FN part:  dL/dz_i = p_i A - a_i,                       A = sum_k a_k
        #   FP part:  dL/dz_i = sum_j w_j p_j (delta_ij - p_i) / (1 - p_j) = r_i - p_i R,
        #             r_j = w_j p_j / (1 - p_j),  R = sum_j r_j.
        # r_m = w_m p_m / (1 - p_m) = w_m e^d overflows for a confident arg-max, so split it
        # off: R = R' + r_m with R' = sum_{j != m} r_j (every 1 - p_j >= 1/2 there), and
        #   i != m:  p_i r_m = w_m p_i e^d = w_m q_i sigmoid(-d) e^d = w_m sigmoid(d) q_i
        #            dL/dz_i = p_i A - a_i + r_i - p_i R' - w_m sigmoid(d) q_i
        #   i == m:  r_m - p_m r_m - p_m R' = r_m (1 - p_m) - p_m R' = sigmoid(d) (w_m - R')
        #            dL/dz_m = p_m A - a_m + sigmoid(d) (w_m - R')
        # With r_m := 0 and q_m := 0 both read  p (A - R') - a + r - w_m sigmoid(d) q
        # plus w_m sigmoid(d) at i = m. Every factor is bounded; no 1 - p_m anywhere.
        # q is the softmax over the classes != m; a masked class has p = q = r = 0, hence a zero
        # gradient. Zero weights times an infinite log (a masked class, d = +inf) stay 0.
        if FP_MODE == _FP_NONE:
            if LOSS:
                loss_part = -tl.sum(tl.where(a != 0.0, a * log_p, 0.0), axis=1)
            if GRAD:
                if WHOLE_ROW:
                    coef = a_part
                g = p * coef[:, None] - a
        else:
            r = tl.where(is_m, 0.0, w * p / (1.0 - p))
            if LOSS:
                # log(1 - p_m) = -softplus(d) (never 1 - p_m, which is 0 in float32 once
                # d > ~17); p_j <= 1/2 for j != m, so log1p(-p_j) is accurate there.
                log_1mp = tl.where(is_m, -_softplus(d)[:, None], _log1p(-p))
                terms = tl.where(a != 0.0, a * log_p, 0.0) + tl.where(w != 0.0, w * log_1mp, 0.0)
                loss_part = -tl.sum(terms, axis=1)
                r_part = tl.sum(r, axis=1)
            if GRAD:
                # q_j = exp((z_j - m2) - log s2); 0 at m and when no other class has mass.
                # Subtract the second max first: lse_others = m2 + log s2 rounded in float32
                # would lose the precision of log s2 when |m2| is large.
                q = tl.where(
                    is_m | ~has_others[:, None],
                    0.0,
                    tl.exp((z - base2[:, None]) - log_s2[:, None]),
                )
                q = tl.where(ok, q, 0.0)
                if WHOLE_ROW:
                    coef = a_part - r_part
                g = (
                    p * coef[:, None]
                    - a
                    + r
                    - wm_sd[:, None] * q
                    + tl.where(is_m, wm_sd[:, None], 0.0)
                )
        return loss_part, a_part, r_part, g

    @triton.jit
    def _store_grad(grad_ptr, rows_c, row_ok, cols, ok, g, row_scale, n_cols, ROUND_BF16):
        """Scale a gradient tile by row_scale (0 rows exactly 0) and store it in the grad dtype."""
        g = _scaled(g, row_scale[:, None])
        tl.store(
            grad_ptr + rows_c[:, None] * n_cols + cols[None, :],
            _to_dtype(g, grad_ptr, ROUND_BF16),
            mask=ok & row_ok[:, None],
        )

    @triton.jit
    def _rwwce_fwd_kernel(
        logits_ptr,
        stride_row,
        target_ptr,
        fn_ptr,
        fn_rows_ptr,
        fp_ptr,
        fp_colsum_ptr,
        soft_w_ptr,
        row_scale_ptr,
        loss_ptr,
        grad_ptr,
        n_rows,
        n_cols,
        smoothing,
        FP_MODE: tl.constexpr,
        FN_ROWS: tl.constexpr,
        SOFT: tl.constexpr,
        SMOOTH: tl.constexpr,
        GRAD_MODE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_K: tl.constexpr,
        SINGLE_PASS: tl.constexpr,
        ROUND_BF16: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        # Rows past the end compute a copy of the last row (no NaN paths) and store nothing.
        rows_c = tl.minimum(rows, n_rows - 1).to(tl.int64)
        cols0 = tl.arange(0, BLOCK_K)
        z_rows = logits_ptr + rows_c[:, None] * stride_row
        row_scale = tl.load(row_scale_ptr + rows_c)
        if SOFT:
            t = tl.zeros([BLOCK_M], dtype=tl.int32)
            fn_t = tl.zeros([BLOCK_M], dtype=tl.float32)
        else:
            # Targets reach the kernel unchecked (validate=False, or CUDA, where checking them
            # would synchronise). One outside [0, K) reads nothing: it is replaced by class 0 for
            # the arithmetic and its row's loss and gradient become NaN (a NaN scale), so the
            # mistake shows, as PyTorch's cross-entropy asserts.
            t_raw = tl.load(target_ptr + rows_c)
            t_ok = (t_raw >= 0) & (t_raw < n_cols)
            t = tl.where(t_ok, t_raw, 0).to(tl.int32)
            if FN_ROWS:  # per-sample costs: the row's own FN weight replaces fn[t]
                fn_t = tl.load(fn_rows_ptr + rows_c)
            else:
                fn_t = tl.load(fn_ptr + t, mask=t_ok, other=0.0)
            row_scale = tl.where(t_ok, row_scale, float("nan"))
        row = (rows_c, t, fn_t)
        weights = (target_ptr, fn_ptr, fp_ptr, fp_colsum_ptr, soft_w_ptr)

        # ---- sweep 1: row statistics (float32; online merge over column blocks) -------------
        if SINGLE_PASS:
            col_ok = (cols0 < n_cols)[None, :] & (rows_c[:, None] >= 0)
            z = tl.load(z_rows + cols0[None, :], mask=col_ok, other=float("-inf")).to(tl.float32)
            mx, amax, m2, s2 = _tile_stats(z, cols0)
        else:
            mx = tl.full([BLOCK_M], float("-inf"), tl.float32)
            amax = tl.zeros([BLOCK_M], dtype=tl.int32)
            m2 = tl.full([BLOCK_M], float("-inf"), tl.float32)
            s2 = tl.zeros([BLOCK_M], dtype=tl.float32)
            for k0 in range(0, n_cols, BLOCK_K):
                cols = k0 + cols0
                ok = (cols < n_cols)[None, :] & (rows_c[:, None] >= 0)
                zb = tl.load(z_rows + cols[None, :], mask=ok, other=float("-inf")).to(tl.float32)
                bm, bidx, bm2, bs2 = _tile_stats(zb, cols)
                mx, amax, m2, s2 = _merge_stats(mx, amax, m2, s2, bm, bidx, bm2, bs2)
        stats = _row_stats(mx, amax, m2, s2)
        sig_d = stats[7]
        wm_sd = sig_d * _w_at(amax, row, weights, n_cols, smoothing, FP_MODE, SOFT, SMOOTH)

        # ---- sweep 2: loss, A = sum_k a_k, R' = sum_{j != m} w_j p_j / (1 - p_j) ------------
        if SINGLE_PASS:
            # the block is the whole row: coef comes from its own sums (zeros: a placeholder)
            loss, a_sum, r_sum, g = _column_block(
                z, cols0, col_ok, row, stats, weights, tl.zeros([BLOCK_M], dtype=tl.float32),
                wm_sd, n_cols, smoothing, FP_MODE, SOFT, SMOOTH,
                LOSS=True, GRAD=GRAD_MODE != _GRAD_NONE, WHOLE_ROW=True,
            )  # fmt: skip
        else:
            loss = tl.zeros([BLOCK_M], dtype=tl.float32)
            a_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
            r_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
            if GRAD_MODE == _GRAD_IN_LOSS_SWEEP:
                # No FP term: the gradient p_i A - a_i needs only A = sum_k a_k, which does not
                # depend on the logits. Get A first (no logits read), then write the gradient in
                # the loss sweep.
                for k0 in range(0, n_cols, BLOCK_K):
                    cols = k0 + cols0
                    ok = (cols < n_cols)[None, :] & (rows_c[:, None] >= 0)
                    ab, _ = _coefficients(
                        cols, ok, row, weights, n_cols, smoothing, FP_MODE, SOFT, SMOOTH
                    )
                    a_sum += tl.sum(ab, axis=1)
            for k0 in range(0, n_cols, BLOCK_K):
                cols = k0 + cols0
                ok = (cols < n_cols)[None, :] & (rows_c[:, None] >= 0)
                zb = tl.load(z_rows + cols[None, :], mask=ok, other=0.0).to(tl.float32)
                lb, ab, rb, gb = _column_block(
                    zb, cols, ok, row, stats, weights, a_sum, wm_sd, n_cols, smoothing,
                    FP_MODE, SOFT, SMOOTH,
                    LOSS=True, GRAD=GRAD_MODE == _GRAD_IN_LOSS_SWEEP, WHOLE_ROW=False,
                )  # fmt: skip
                loss += lb
                if GRAD_MODE == _GRAD_IN_LOSS_SWEEP:
                    _store_grad(
                        grad_ptr, rows_c, row_ok, cols, ok, gb, row_scale, n_cols, ROUND_BF16
                    )
                else:
                    a_sum += ab
                    r_sum += rb
        tl.store(loss_ptr + rows, _scaled(loss, row_scale), mask=row_ok)

        # ---- sweep 3 (or registers): the gradient, scaled by row_scale ----------------------
        if GRAD_MODE == _GRAD_AFTER_SUMS:
            if SINGLE_PASS:
                _store_grad(
                    grad_ptr, rows_c, row_ok, cols0, col_ok, g, row_scale, n_cols, ROUND_BF16
                )
            else:
                coef = a_sum - r_sum
                for k0 in range(0, n_cols, BLOCK_K):
                    cols = k0 + cols0
                    ok = (cols < n_cols)[None, :] & (rows_c[:, None] >= 0)
                    zb = tl.load(z_rows + cols[None, :], mask=ok, other=0.0).to(tl.float32)
                    _, _, _, gb = _column_block(
                        zb, cols, ok, row, stats, weights, coef, wm_sd, n_cols, smoothing,
                        FP_MODE, SOFT, SMOOTH, LOSS=False, GRAD=True, WHOLE_ROW=False,
                    )  # fmt: skip
                    _store_grad(
                        grad_ptr, rows_c, row_ok, cols, ok, gb, row_scale, n_cols, ROUND_BF16
                    )

    @triton.jit
    def _scale_kernel(
        grad_ptr,
        out_ptr,
        go_ptr,
        numel,
        n_cols,
        PER_ROW: tl.constexpr,
        IN_PLACE: tl.constexpr,
        BLOCK: tl.constexpr,
        ROUND_BF16: tl.constexpr,
    ):
        """out = grad * grad_output; in place, factors of exactly 1 skip the element entirely."""
        pid = tl.program_id(0).to(tl.int64)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        ok = offs < numel
        if PER_ROW:
            g = tl.load(go_ptr + offs // n_cols, mask=ok, other=1.0)
        else:
            g = tl.load(go_ptr) + tl.zeros([BLOCK], dtype=tl.float32)
        if IN_PLACE:
            ok = ok & (g != 1.0)
        x = tl.load(grad_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, _to_dtype(x * g, out_ptr, ROUND_BF16), mask=ok)


# ---------------------------------------------------------------------------------------------
# Registered operators: torch.compile sees them (no graph break) and traces them with the fake
# implementations below, so nothing reads the device while tracing.
# ---------------------------------------------------------------------------------------------


def _loss_op(
    logits: Tensor,
    target: Tensor,
    fn_weight: Tensor,
    fp_weight: Optional[Tensor],  # noqa: UP045 - torch.library reads these annotations
    row_scale: Tensor,
    fn_rows: Optional[Tensor],  # noqa: UP045
    fp_rows: Optional[Tensor],  # noqa: UP045
    label_smoothing: float,
    block_k: Optional[int],  # noqa: UP045
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    """rwwce::triton_loss: (row_scale * loss_row (M,) float32, d / d logits (M, K) in the
    logits' dtype, or (0,) when ``compute_grad`` is False)."""
    return _launch_forward(
        logits, target, fn_weight, fp_weight, row_scale, fn_rows, fp_rows,
        label_smoothing, block_k, compute_grad,
    )  # fmt: skip


def _loss_fake(
    logits, target, fn_weight, fp_weight, row_scale, fn_rows, fp_rows, label_smoothing,
    block_k, compute_grad,
):  # fmt: skip
    num_rows, num_classes = logits.shape
    row_loss = logits.new_empty((num_rows,), dtype=torch.float32)
    shape = (num_rows, num_classes) if compute_grad else (0,)
    return row_loss, logits.new_empty(shape)


def _scale_op(grad: Tensor, grad_output: Tensor) -> Tensor:
    """rwwce::triton_scale: grad * grad_output row by row, into a new tensor."""
    return _launch_scale(grad, grad_output, in_place=False)


def _scale_fake(grad, grad_output):
    return torch.empty_like(grad)


def _register_operators() -> None:
    """Define torch.ops.rwwce.triton_loss / triton_scale (once per process).

    ``triton_op`` lets torch.compile look through the operator at the ``wrap_triton`` launches
    (inductor then schedules the kernels itself). Triton's interpreter cannot run on the fake
    tensors that tracing uses, so under ``TRITON_INTERPRET=1`` (and on torch < 2.6) the same
    operators are plain ``custom_op`` s: opaque to the compiler, still without a graph break.
    """
    define = _triton_op if _triton_op is not None and not _kernels_interpreted() else _custom_op
    loss = define("rwwce::triton_loss", _loss_op, mutates_args=())
    loss.register_fake(_loss_fake)
    loss.register_autograd(_backward, setup_context=_setup_context)
    scale = define("rwwce::triton_scale", _scale_op, mutates_args=())
    scale.register_fake(_scale_fake)


_KERNELS_INTERPRETED = (
    triton is not None and type(_rwwce_fwd_kernel).__name__ == "InterpretedFunction"
)
if triton is not None and _custom_op is not None:
    _register_operators()
