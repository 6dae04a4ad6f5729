"""Fused linear layer + RWWCE: the loss of ``F.linear(input, linear_weight, linear_bias)`` without
ever holding the (N, K) logits or their gradient.

A classifier head with many classes (a language model's vocabulary, a product catalogue) spends
most of its memory on the logits and their gradient: 1 GiB each at 8192 x 32768 in float32. Here
the rows are processed in chunks. For each chunk the logits are computed, the backend gives the
chunk's loss and logit gradient g in the same pass (no autograd), and the three gradients are
formed at once::

    grad_input[chunk] = g @ W        grad_weight += g^T @ x[chunk]        grad_bias += sum_rows g

(``grad_weight`` and ``grad_bias`` accumulate in float32, float64 for float64 input). Only one
chunk's logits and gradient exist at a time. The reduction's denominator ('mean',
'weighted_mean') is computed for the whole batch before the chunks, so the result does not depend
on the chunk size beyond rounding.

The work runs inside a ``torch.library`` operator (opaque to ``torch.compile``, with a fake
implementation for tracing). For a reduced loss the gradients are computed in the forward pass
and the backward multiplies them by the upstream gradient, so a training step costs the three
matrix products of the unfused layer. For ``reduction='none'`` the upstream gradient is a vector
known only in the backward, which therefore recomputes the logits chunk by chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rwwce import _problem
from rwwce import _validate as V
from rwwce.kernels import Problem, graph_is_retained, reference
from rwwce.kernels.dispatch import backend_module, pick_backend
from rwwce.kernels.reference import compute_dtype

__all__ = ["linear_real_world_weight_cross_entropy"]

# Rows per chunk: about H, so that a chunk's logits (R x K) take about what the weight's gradient
# (K x H) takes anyway; at least enough rows for efficient matrix products; and at most a bound on
# the chunk's logit elements (CUDA prefers larger tiles).
_MIN_CHUNK_ROWS = 64
_MAX_CHUNK_ELEMENTS = {"cuda": 1 << 26}
_MAX_CHUNK_ELEMENTS_DEFAULT = 1 << 23


@V.torch_keywords(V.CROSS_ENTROPY_KEYWORDS)
def linear_real_world_weight_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    fn_weight: Tensor | None = None,
    fp_weight: Tensor | None = None,
    *,
    linear_bias: Tensor | None = None,
    sample_weight: Tensor | None = None,
    sample_costs: Tensor | None = None,
    ignore_index: int = -100,
    reduction: V.Reduction = "mean",
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
    backend: V.Backend = "auto",
    validate: bool | None = None,
) -> Tensor:
    r"""Real-World-Weight Cross-Entropy of a linear layer's output, without materialising it.

    Equal to ``real_world_weight_cross_entropy(F.linear(input, linear_weight, linear_bias),
    target, fn_weight, fp_weight, ...)`` (with the rows flattened for a (B, T, H) input), values
    and gradients to ``input``, ``linear_weight`` and ``linear_bias``: for logits
    z = x W^T + b, p = softmax(z) and target class t, each row's loss is

    .. math::
        \ell = -\,fn_t \log p_t \;-\; \sum_{j \ne t} FP_{t,j} \log(1 - p_j)

    Reductions as in :func:`rwwce.real_world_weight_cross_entropy`: ``'none'`` (the target's
    shape), ``'sum'``, ``'mean'`` (divided by the number of non-ignored rows) and
    ``'weighted_mean'`` (divided by :math:`\sum_i s_i fn_{t_i}` over non-ignored rows; with
    ``fp_weight=None`` exactly ``F.linear_cross_entropy(weight=fn_weight)``). A batch whose
    denominator is 0 gives 0.

    With ``sample_costs`` c, each row carries its own cost row, as in the plain loss:
    :math:`fn_i = \min_{j \ne t_i} c_{ij}` replaces :math:`fn_t` and
    :math:`FP_{i,j} = c_{ij} - fn_i` replaces :math:`FP_{t,j}` (the entry at the true class is
    ignored), and ``'weighted_mean'`` divides by :math:`\sum_i s_i fn_i`. Each chunk reads only
    its own rows of them.

    With an FP vector over a vocabulary, the FP term is token-level unlikelihood training: it
    penalises probability put on the chosen tokens wherever they are not the target.

    Memory: one chunk of rows at a time holds its (R, K) logits and gradient; R is chosen from N,
    H and K (about H rows, so a chunk's logits take about what the weight's gradient takes, at
    most 2**23 logit elements on the CPU and 2**26 on CUDA) unless ``chunk_size`` is given. A reduced loss
    computes the parameter gradients in the forward pass whenever one of ``input``,
    ``linear_weight``, ``linear_bias`` requires grad (run evaluation under ``torch.no_grad()``).

    Args:
        input: hidden states, float16, bfloat16, float32 or float64.
        linear_weight: (K, H) as ``nn.Linear`` stores it, the input's dtype and device.
        target: class indices (an integer dtype); ``ignore_index`` marks rows to skip.
        fn_weight: (K,) false-negative weights, or the (K, K) diagonal form. Default all ones.
        fp_weight: ``None`` (no FP term), (K,) meaning FP[t, j] = v[j] for j != t, or (K, K) with
            a zero diagonal.
        linear_bias: (K,) or ``None``.
        sample_weight: non-negative weight per row, the target's shape (or (B,) for (B, T)
            targets, one weight per sequence).
        sample_costs: non-negative cost of predicting each class for each row, the target's
            shape plus (K,): (N, K) or (B, T, K). Replaces ``fn_weight`` and ``fp_weight`` (a
            ValueError if either is given, or ``label_smoothing``).
        ignore_index: targets equal to it contribute nothing. Default -100.
        reduction: ``'none'`` | ``'sum'`` | ``'mean'`` | ``'weighted_mean'``. Default ``'mean'``.
        label_smoothing: e in [0, 1]. Default 0.
        chunk_size: rows per chunk; ``None`` chooses it.
        backend: ``'auto'`` (the Triton kernel for CUDA inputs when available, else PyTorch),
            ``'torch'`` or ``'triton'`` for each chunk's loss and gradient.
        validate: check the data (target range, weight values) before the chunks. ``None``
            (default) checks CPU tensors, except while ``torch.compile`` traces (the checks read
            values, which would break the graph); ``True`` always checks.

    Only ``input``, ``linear_weight`` and ``linear_bias`` receive gradients; cost weights,
    ``sample_weight`` or ``sample_costs`` that require grad raise a RuntimeError (use the unfused
    loss for those). Double backward is not supported (RuntimeError). Under a ``torch.func``
    transform (``grad``, ``vmap``, ``jacrev``, ...) the loss is computed unfused, holding the
    logits, by the plain loss's composite operations, which the transforms compose with.

    Shape:
        - input: (H,), (N, H) or (B, T, H) (any leading dimensions).
        - linear_weight: (K, H). linear_bias: (K,).
        - target: the input's leading shape: (), (N) or (B, T).
        - sample_costs: the target's shape plus (K,): (K,), (N, K) or (B, T, K).
        - output: the target's shape for ``reduction='none'``, in the input's dtype; else a
          scalar in float32 (float64 for float64 input).

    Example::

        >>> import torch, rwwce
        >>> hidden, head = torch.randn(6, 4), torch.nn.Linear(4, 10)
        >>> target = torch.tensor([1, 2, 3, 4, 5, -100])
        >>> fp = torch.zeros(10); fp[7] = 5.0   # penalise probability on class 7
        >>> loss = rwwce.linear_real_world_weight_cross_entropy(
        ...     hidden, head.weight, target, fp_weight=fp, linear_bias=head.bias, chunk_size=2)
        >>> loss.backward()
    """
    fn, fp, weights, costs = V.check_linear_call(
        input,
        linear_weight,
        target,
        fn_weight,
        fp_weight,
        linear_bias=linear_bias,
        sample_weight=sample_weight,
        sample_costs=sample_costs,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        chunk_size=chunk_size,
        backend=backend,
        validate=validate,
    )
    num_classes, hidden = linear_weight.shape
    dtype, device = compute_dtype(input.dtype), input.device
    if fn is None:
        fn = torch.ones(num_classes, dtype=dtype, device=device)
    flat_target, row_scale, fn_rows, fp_rows = _rows(
        target, weights, fn, costs, ignore_index, reduction
    )

    rows = input.reshape(flat_target.shape[0], hidden)  # not (-1, H): H may be 0
    if torch._C._are_functorch_transforms_active():
        # torch.func transforms cannot look into the operator: the same flat problem, unfused (the
        # logits are held), by the composite operations every transform composes with.
        problem = Problem(
            *(torch.nn.functional.linear(rows, linear_weight, linear_bias), flat_target, fn, fp),
            *(row_scale, fn_rows, fp_rows, float(label_smoothing), reduction != "none"),
        )
        loss = reference.rwwce_loss(problem)
        return loss.reshape(target.shape).to(input.dtype) if reduction == "none" else loss
    grad_on = torch.is_grad_enabled()
    loss = torch.ops.rwwce.fused_linear_rwwce(
        rows,
        linear_weight,
        linear_bias,
        flat_target,
        fn,
        fp,
        row_scale,
        fn_rows,
        fp_rows,
        float(label_smoothing),
        chunk_size or 0,
        reduction != "none",
        grad_on and input.requires_grad,
        grad_on and linear_weight.requires_grad,
        grad_on and linear_bias is not None and linear_bias.requires_grad,
        _resolve_backend(backend, input, num_classes, flat_target, fp, fn_rows, fp_rows),
    )[0]
    if reduction == "none":
        return loss.reshape(target.shape).to(input.dtype)
    return loss


def _rows(
    target: Tensor,
    weights: Tensor | None,
    fn: Tensor,
    costs: Tensor | None,
    ignore_index: int,
    reduction: str,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The flat problem's per-row tensors, for the whole batch, before any chunk, built by the
    plain loss's own helpers (:mod:`rwwce._problem`): the targets (M,) with ignored rows on
    placeholder class 0; ``row_scale`` (M,) = ignore mask x sample weight / the reduction's
    denominator, 0 when the denominator is 0; and ``fn_rows`` (M,), ``fp_rows`` (M, K) from the
    costs (the target's shape plus (K,); ``None`` without them)."""
    valid, flat = _problem.index_rows(target, ignore_index)
    row_weight = valid.to(fn.dtype)
    if weights is not None:
        row_weight = row_weight * weights.reshape(-1)
    fn_rows = fp_rows = None
    if costs is not None:
        fn_rows, fp_rows = _problem.cost_rows(costs.reshape(-1, costs.shape[-1]), flat)
    total = _problem.denominator(reduction, row_weight, flat, valid, fn, fn_rows)
    return flat, _problem.row_scale(row_weight, total, False), fn_rows, fp_rows


def _resolve_backend(
    backend: str,
    input: Tensor,
    num_classes: int,
    target: Tensor,
    fp: Tensor | None,
    fn_rows: Tensor | None = None,
    fp_rows: Tensor | None = None,
) -> str:
    """'torch' or 'triton' for the chunks, by the package's one dispatch point. The kernel's
    checks read only metadata: an empty chunk of rows stands for them all. The operator is opaque
    to ``torch.compile``, so the kernel runs when the compiled graph does (``traced=False``)."""
    empty = input.new_empty((0, num_classes))
    stand_in = Problem(
        empty,
        target[:0],
        empty.new_ones(num_classes),
        fp,
        empty.new_empty(0),
        fn_rows=None if fn_rows is None else fn_rows[:0],
        fp_rows=None if fp_rows is None else fp_rows[:0],
    )
    return pick_backend(backend, stand_in, traced=False)


def _chunk_rows(num_rows: int, hidden: int, num_classes: int, device: torch.device) -> int:
    """Rows per chunk: about H, at least a few dozen, within the element bound, at most N."""
    most = _MAX_CHUNK_ELEMENTS.get(device.type, _MAX_CHUNK_ELEMENTS_DEFAULT) // num_classes
    return max(1, min(num_rows, max(_MIN_CHUNK_ROWS, hidden), most))


@torch.library.custom_op("rwwce::fused_linear_rwwce", mutates_args=())
def _fused_linear_rwwce(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    fn_weight: Tensor,
    fp_weight: Tensor | None,
    row_scale: Tensor,
    fn_rows: Tensor | None,
    fp_rows: Tensor | None,
    label_smoothing: float,
    chunk_size: int,
    reduce: bool,
    grad_input: bool,
    grad_weight: bool,
    grad_bias: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad_input, grad_weight, grad_bias) of the flat problem x (M, H), W (K, H).

    ``loss`` is the 0-dim sum of ``row_scale * loss_row`` (``reduce``) or that (M,) vector. The
    gradients of the reduced loss are computed when ``reduce`` and their flag are set (else an
    empty tensor stands in their place). ``chunk_size`` 0 means automatic.
    """
    num_rows, hidden = input.shape
    num_classes = weight.shape[0]
    dtype = compute_dtype(input.dtype)
    rows = chunk_size or _chunk_rows(num_rows, hidden, num_classes, input.device)
    with_grad = reduce and (grad_input or grad_weight or grad_bias)

    row_loss = torch.empty(num_rows, dtype=dtype, device=input.device)
    out_input = torch.empty_like(input) if with_grad and grad_input else input.new_empty(0)
    acc_weight = (
        torch.zeros(weight.shape, dtype=dtype, device=input.device)
        if with_grad and grad_weight
        else None
    )
    acc_bias = (
        torch.zeros(num_classes, dtype=dtype, device=input.device)
        if with_grad and grad_bias
        else None
    )
    # One logits buffer and one gradient buffer, reused by every chunk.
    logits_buffer = input.new_empty((min(rows, num_rows), num_classes))
    grad_buffer = (
        torch.empty(logits_buffer.shape, dtype=dtype, device=input.device)
        if with_grad and backend == "torch"
        else None
    )

    for start in range(0, num_rows, rows):
        stop = min(start + rows, num_rows)
        x = input[start:stop]
        logits = logits_buffer[: stop - start]
        if bias is None:
            torch.mm(x, weight.t(), out=logits)
        else:
            torch.addmm(bias, x, weight.t(), out=logits)
        # Every per-row tensor is sliced with its rows.
        problem = Problem(
            logits,
            target[start:stop],
            fn_weight,
            fp_weight,
            row_scale[start:stop],
            fn_rows=None if fn_rows is None else fn_rows[start:stop],
            fp_rows=None if fp_rows is None else fp_rows[start:stop],
            label_smoothing=label_smoothing,
            reduce=False,
        )
        if not with_grad:
            row_loss[start:stop] = backend_module(backend).rwwce_loss(problem)
            continue
        if backend == "torch":
            loss, grad = reference.rwwce_loss_and_grad(problem, out=grad_buffer[: stop - start])
        else:
            loss, grad = backend_module(backend).rwwce_loss_and_grad(problem)
        row_loss[start:stop] = loss
        if acc_bias is not None:
            acc_bias.add_(grad.sum(dim=0, dtype=dtype))
        grad = grad.to(input.dtype)  # the unfused layer's logit gradient has the logits' dtype
        if grad_input:
            torch.mm(grad, weight, out=out_input[start:stop])
        if acc_weight is not None:
            if grad.dtype == dtype:
                acc_weight.addmm_(grad.t(), x)
            else:  # half precision: each chunk's product in its dtype, the sum in float32
                acc_weight.add_(torch.mm(grad.t(), x))

    loss = row_loss.sum() if reduce else row_loss
    out_weight = acc_weight.to(weight.dtype) if acc_weight is not None else weight.new_empty(0)
    out_bias = acc_bias.to(bias.dtype) if acc_bias is not None else input.new_empty(0)
    return loss, out_input, out_weight, out_bias


@_fused_linear_rwwce.register_fake
def _(
    input,
    weight,
    bias,
    target,
    fn_weight,
    fp_weight,
    row_scale,
    fn_rows,
    fp_rows,
    label_smoothing,
    chunk_size,
    reduce,
    grad_input,
    grad_weight,
    grad_bias,
    backend,
):
    dtype = compute_dtype(input.dtype)
    loss = input.new_empty(() if reduce else (input.shape[0],), dtype=dtype)
    with_grad = reduce and (grad_input or grad_weight or grad_bias)
    out_input = input.new_empty(input.shape) if with_grad and grad_input else input.new_empty(0)
    out_weight = (
        weight.new_empty(weight.shape) if with_grad and grad_weight else weight.new_empty(0)
    )
    out_bias = (
        bias.new_empty(bias.shape)
        if with_grad and grad_bias and bias is not None
        else input.new_empty(0)
    )
    return loss, out_input, out_weight, out_bias


def _setup_context(ctx, inputs, output) -> None:
    input, weight, bias, target, fn_weight, fp_weight, row_scale, fn_rows, fp_rows = inputs[:9]
    smoothing, chunk, reduce, backend = inputs[9], inputs[10], inputs[11], inputs[15]
    ctx.reduce = reduce
    if reduce:  # the gradients are ready: keep them, not the inputs
        ctx.save_for_backward(*output[1:])
    else:
        ctx.save_for_backward(
            input, weight, bias, target, fn_weight, fp_weight, row_scale, fn_rows, fp_rows
        )
        ctx.options = (smoothing, chunk, backend)


def _backward(ctx, grad_loss, *_):
    if torch.is_grad_enabled():
        raise RuntimeError(
            "linear_real_world_weight_cross_entropy cannot be differentiated twice (a backward "
            "with create_graph=True); use real_world_weight_cross_entropy(F.linear(...)) with "
            "backend='torch', whose double backward is exact"
        )
    want_input, want_weight, want_bias = ctx.needs_input_grad[:3]
    if ctx.reduce:
        grads = ctx.saved_tensors
        # Unless a later backward needs them unscaled, the saved gradients are ours to consume:
        # scaling them in place spares a second copy of grad_weight at the backward's peak.
        in_place = not graph_is_retained()
    else:
        # The upstream gradient weights each row: recompute chunk by chunk with it folded into
        # the row scale, as a reduced loss whose gradients are the ones wanted.
        input, weight, bias, target, fn_weight, fp_weight, row_scale, fn_rows, fp_rows = (
            ctx.saved_tensors
        )
        label_smoothing, chunk_size, backend = ctx.options
        grads = torch.ops.rwwce.fused_linear_rwwce(
            input,
            weight,
            bias,
            target,
            fn_weight,
            fp_weight,
            row_scale * grad_loss.to(row_scale.dtype),
            fn_rows,
            fp_rows,
            label_smoothing,
            chunk_size,
            True,
            want_input,
            want_weight,
            want_bias,
            backend,
        )[1:]
        grad_loss = None
    scaled = []
    for wanted, grad in zip((want_input, want_weight, want_bias), grads, strict=True):
        if not wanted:
            scaled.append(None)
        elif grad_loss is None:
            scaled.append(grad)
        elif in_place:
            scaled.append(grad.mul_(grad_loss.to(grad.dtype)))
        else:
            scaled.append(grad * grad_loss.to(grad.dtype))
    return (*scaled, *([None] * 13))


_fused_linear_rwwce.register_autograd(_backward, setup_context=_setup_context)
