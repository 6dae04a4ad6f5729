"""The fused Triton kernel (rwwce.kernels.triton) against float64 truth and the torch reference.

Runs on CUDA when present, and on CPU through Triton's interpreter when the pytest process has
``TRITON_INTERPRET=1`` in its environment *before* triton is imported (triton decides at
``@triton.jit`` decoration time, i.e. when ``rwwce.kernels.triton`` is first imported, whether a
kernel is interpreted). So run it in its own process::

    TRITON_INTERPRET=1 python -m pytest tests/test_kernels_triton.py

Without triton the whole module is skipped; without the variable the CPU cases are skipped.
Error budget: the kernel's error against a float64 truth must be no worse than the torch
reference's error at the same dtype plus a small dtype-keyed margin.
"""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from oracles import fp_as_matrix, rwwce_float64, smoothed_onehot  # noqa: E402
from rwwce.kernels import reference  # noqa: E402
from rwwce.kernels import triton as tk  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# The interpreter evaluates masked-off lanes too (exp overflow, inf - inf): numpy warns, harmlessly.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")

# Relative / absolute (relative to the largest truth) margins for values stored in each dtype.
# Half-precision gradients get one unit in the last place: the kernel stores the row-scaled
# gradient in the logits' dtype during the forward and rounds again after the backward's
# multiplication by a non-unit upstream gradient (the reference rounds once).
MARGIN = {
    torch.float32: (2e-6, 2e-7),
    torch.bfloat16: (2**-7, 2**-12),
    torch.float16: (2**-10, 2**-14),
}


@pytest.fixture(
    params=[
        pytest.param("cpu", id="cpu-interpreter"),
        pytest.param("cuda", marks=pytest.mark.cuda),
    ]
)
def device(request):
    if request.param == "cpu" and not INTERPRET:
        pytest.skip("CPU runs the kernel in Triton's interpreter: set TRITON_INTERPRET=1")
    if request.param == "cuda" and INTERPRET:
        pytest.skip("TRITON_INTERPRET=1 interprets CUDA launches too; the CPU case covers it")
    return torch.device(request.param)


# --- helpers ----------------------------------------------------------------------------------


def make_problem(m, k, fp_kind, soft, device, dtype=torch.float32, scale=3.0, zero_rows=True):
    logits = (torch.randn(m, k) * scale).to(dtype)
    if soft:
        target = torch.softmax(torch.randn(m, k) * 2, dim=1)
    else:
        target = torch.randint(0, k, (m,))
    fn = torch.rand(k) * 2 + 0.25
    if fp_kind is None:
        fp = None
    elif fp_kind == "vector":
        fp = torch.rand(k) * 3
    else:
        fp = torch.rand(k, k) * 3
        fp.fill_diagonal_(0)
    row_scale = torch.rand(m) + 0.5
    if zero_rows and m > 2:
        row_scale[1] = 0.0  # an ignored row
    put = lambda x: None if x is None else x.to(device)  # noqa: E731
    return put(logits), put(target), put(fn), put(fp), put(row_scale)


def rwwce_float64_fp_vector(z, y, fn, v):
    """float64 RWWCE with an FP vector (FP[t, j] = v_j, j != t) in O(K) memory, for large K.

    Straight from the definition in DESIGN.md: w = y @ FP is w_j = v_j (sum_t y_t - y_j), and
    log(1 - p_j) is log1p(-p_j) for every class but the row's arg-max
    (p_j <= 1/2 there, so float64 keeps ~16 digits) and logsumexp(others) - logsumexp for it.
    """
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    log_p = z - lse
    loss = -(y * fn * log_p).sum(dim=1)
    if v is None:
        return loss
    w = v * (y.sum(dim=1, keepdim=True) - y)
    m = z.argmax(dim=1, keepdim=True)
    is_m = torch.zeros_like(z, dtype=torch.bool).scatter_(1, m, True)
    others = torch.logsumexp(z.masked_fill(is_m, float("-inf")), dim=1, keepdim=True)
    log_not_p = torch.where(is_m, others - lse, torch.log1p(-torch.exp(log_p)))
    return loss - (w * log_not_p).sum(dim=1)


def truth64(logits, target, fn, fp, row_scale, smoothing, reduce, upstream):
    """float64 loss and gradient from the definition (tests/oracles.py) through autograd."""
    z = logits.detach().cpu().double().requires_grad_()
    k = z.shape[1]
    if target.dim() == 1:
        y = smoothed_onehot(target.cpu(), k, smoothing)
    else:
        y = target.cpu().double()
    if k > 256 and (fp is None or fp.dim() == 1):  # the K x K oracle would not fit
        v = None if fp is None else fp.cpu().double()
        rows = rwwce_float64_fp_vector(z, y, fn.cpu().double(), v) * row_scale.cpu().double()
    else:
        fpm = fp_as_matrix(None if fp is None else fp.cpu().double(), k)
        rows = rwwce_float64(z, y, fn.cpu().double(), fpm) * row_scale.cpu().double()
    loss = rows.sum() if reduce else rows
    (grad,) = torch.autograd.grad(loss, z, upstream.cpu().double())
    return loss.detach(), grad


def run(fn, logits, target, fnw, fp, row_scale, smoothing, reduce, upstream, **kw):
    z = logits.detach().clone().requires_grad_()
    loss = fn(z, target, fnw, fp, row_scale, smoothing, reduce, **kw)
    loss.backward(upstream)
    return loss.detach(), z.grad


def assert_within_budget(name, got, ref, truth, dtype):
    """|got - truth| <= |ref - truth| + margin(dtype); prints the worst indices on failure.

    ``ref=None``: the margin alone (where the reference backend is not the point of the test).
    """
    got = got.detach().cpu().double()
    ref = truth if ref is None else ref.detach().cpu().double()
    assert torch.isfinite(got).all(), (
        f"{name}: non-finite values at {(~torch.isfinite(got)).nonzero()[:5].tolist()}"
    )
    rtol, atol = MARGIN[dtype]
    err = (got - truth).abs()
    ref_err = (ref - truth).abs()
    tol = ref_err + rtol * truth.abs() + atol * truth.abs().max().clamp_min(1.0)
    excess = err - tol
    if (excess > 0).any():
        flat = excess.flatten().argsort(descending=True)[:5]
        where = [tuple(int(i) for i in torch.unravel_index(j, excess.shape)) for j in flat]
        detail = [(w, float(got[w]), float(ref[w]), float(truth[w])) for w in where]
        raise AssertionError(f"{name} over budget at (index, kernel, reference, truth): {detail}")


# --- an address check for the interpreter -----------------------------------------------------


def _span(tensor):
    """[first byte, one past the last byte] of a tensor's elements (a view: its own elements)."""
    start = tensor.data_ptr()
    if tensor.numel() == 0:
        return start, start
    last = sum(
        (size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True)
    )
    return start, start + (last + 1) * tensor.element_size()


@pytest.fixture
def bounds_checked(device, monkeypatch):
    """Fail when a kernel loads or stores an address outside every tensor it was given.

    Under Triton's interpreter a load past a buffer's end just reads whatever memory is there,
    so out-of-bounds reads would go unnoticed: this wraps the interpreter's load and store and
    checks each unmasked address against the launch's tensor arguments. On CUDA it does
    nothing (compute-sanitizer's job). Yields the list of problems it saw.
    """
    problems = []
    if device.type != "cpu":
        yield problems
        return
    import numpy as np
    from triton.runtime import interpreter

    spans = []
    executor_call = interpreter.GridExecutor.__call__

    def call(self, *args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        spans[:] = [_span(t) for t in tensors]
        return executor_call(self, *args, **kwargs)

    def check(kind, ptrs, mask):
        size = interpreter._get_np_dtype(ptrs.get_element_ty()).itemsize
        addresses = np.broadcast_to(ptrs.data, np.shape(mask.data))[np.asarray(mask.data, bool)]
        inside = np.zeros(addresses.shape, bool)
        for start, end in spans:
            inside |= (addresses >= start) & (addresses + size <= end)
        if not inside.all():
            problems.append(f"{kind} outside every argument: {addresses[~inside][:4].tolist()}")
            raise AssertionError(problems[-1])

    builder = interpreter.interpreter_builder
    load, store = builder.create_masked_load, builder.create_masked_store

    def checked_load(ptrs, mask, *rest):
        check("load", ptrs, mask)
        return load(ptrs, mask, *rest)

    def checked_store(ptrs, value, mask, *rest):
        check("store", ptrs, mask)
        return store(ptrs, value, mask, *rest)

    monkeypatch.setattr(interpreter.GridExecutor, "__call__", call)
    monkeypatch.setattr(builder, "create_masked_load", checked_load)
    monkeypatch.setattr(builder, "create_masked_store", checked_store)
    yield problems
    assert not problems, problems


def check_against_truth(logits, target, fnw, fp, row_scale, smoothing, reduce, **kw):
    m = logits.shape[0]
    upstream = (torch.rand(()) + 0.5) if reduce else (torch.rand(m) + 0.5)
    upstream = upstream.to(logits.device)
    loss, grad = run(
        tk.rwwce_loss, logits, target, fnw, fp, row_scale, smoothing, reduce, upstream, **kw
    )
    ref_loss, ref_grad = run(
        reference.rwwce_loss, logits, target, fnw, fp, row_scale, smoothing, reduce, upstream
    )
    t_loss, t_grad = truth64(logits, target, fnw, fp, row_scale, smoothing, reduce, upstream)
    assert loss.dtype == torch.float32 and loss.shape == ref_loss.shape
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    assert_within_budget("loss", loss, ref_loss, t_loss, torch.float32)
    assert_within_budget("grad", grad, ref_grad, t_grad, logits.dtype)
    return loss, grad


# --- parity over options and shapes -----------------------------------------------------------


@pytest.mark.parametrize("fp_kind", [None, "vector", "matrix"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_every_option_matches_truth_and_reference(device, fp_kind, smoothing, soft):
    # one single-block case (whole row on chip) and one multi-block case (loop over columns)
    for (m, k, block_k), reduce in [((7, 37, None), True), ((5, 37, 16), False)]:
        problem = make_problem(m, k, fp_kind, soft, device)
        check_against_truth(*problem, smoothing, reduce, block_k=block_k)


@pytest.mark.parametrize(
    "m, k, block_k",
    [
        (1, 2, None),
        (1, 3, None),
        (17, 5, None),
        (4, 70, None),
        (3, 33, 8),
        (2, 130, 32),
        (6, 64, 16),
    ],
)
def test_shapes(device, m, k, block_k):
    problem = make_problem(m, k, "matrix", False, device)
    check_against_truth(*problem, 0.1, False, block_k=block_k)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("block_k", [None, 8], ids=["single", "multi"])
def test_half_precision_error_budget(device, dtype, block_k):
    for fp_kind in ["vector", "matrix"]:
        problem = make_problem(9, 21, fp_kind, False, device, dtype=dtype)
        check_against_truth(*problem, 0.05, block_k is None, block_k=block_k)


@pytest.mark.parametrize("seed", range(8))
def test_random_configurations(device, seed):
    """Random shape, block size, dtype, options and logit scale (up to 1e4) per seed."""
    gen = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    m, k = (
        int(torch.randint(1, 18, (1,), generator=gen)),
        int(torch.randint(2, 71, (1,), generator=gen)),
    )
    dtype = pick([torch.float32, torch.bfloat16, torch.float16])
    scale = pick([1.0, 30.0, 300.0, 1e4])
    if dtype == torch.float16:
        scale = min(scale, 300.0)
    problem = make_problem(
        m,
        k,
        pick([None, "vector", "matrix"]),
        pick([False, True]),
        device,
        dtype=dtype,
        scale=scale,
    )
    check_against_truth(
        *problem, pick([0.0, 0.1, 1.0]), pick([False, True]), block_k=pick([None, 2, 8, 16])
    )


# --- numerics at the extremes -----------------------------------------------------------------


def extreme_logits(k):
    rows = torch.zeros(6, k)
    rows[0, 2] = 1e4  # confidently wrong: target 0, arg-max 2
    rows[1] = 5.0  # all equal
    rows[2] = -1e4
    rows[2, 0] = 0.0  # confidently right, others at -1e4
    rows[3, 1] = 40.0  # p_m = 1 in float32, gap above the float32 resolution of 1 - p
    rows[4] = -1e4  # all very negative and equal
    rows[5, 3] = 1e4
    rows[5, 4] = 1e4  # a tie at the maximum
    return rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_k", [None, 2])
def test_extreme_logits_are_exact_with_finite_gradients(device, dtype, block_k):
    k = 6
    logits = extreme_logits(k)
    if dtype == torch.float16:
        logits = logits.clamp(-6e4, 6e4)
    logits = logits.to(dtype).to(device)
    target = torch.tensor([0, 3, 0, 0, 2, 0], device=device)
    fn = torch.full((k,), 2.0, device=device)
    fp = torch.full((k,), 3.0, device=device)
    row_scale = torch.ones(6, device=device)
    loss, grad = check_against_truth(logits, target, fn, fp, row_scale, 0.0, False, block_k=block_k)
    # gap g = 1e4 (as stored in the dtype), four other classes at 0:
    # fn * (g + log(1 + 5 e^-g)) + FP * softplus(g - log 5) = fn * g + FP * (g - log 5)
    gap = float(logits[0, 2].float() - logits[0, 0].float())
    expected = 2.0 * gap + 3.0 * (gap - torch.log(torch.tensor(5.0, dtype=torch.float64)))
    assert torch.isclose(loss[0].cpu().double(), expected, rtol=1e-6)
    assert loss[2].abs() < 1e-3  # confidently right costs nothing
    assert torch.isfinite(grad.float()).all()
    assert grad[0].float().abs().max() > 1.0  # the confident mistake still gets pushed
    # softmax invariance: every row's gradient sums to ~0
    assert grad.float().sum(dim=1).abs().max() < 1e-2


def test_single_class_rows_give_zero_loss(device):
    logits = torch.randn(3, 1, device=device)
    target = torch.zeros(3, dtype=torch.long, device=device)
    ones = torch.ones(1, device=device)
    loss, grad = run(
        tk.rwwce_loss,
        logits,
        target,
        ones,
        ones,
        torch.ones(3, device=device),
        0.0,
        False,
        torch.ones(3, device=device),
    )
    assert torch.equal(loss.cpu(), torch.zeros(3))
    assert torch.equal(grad.cpu(), torch.zeros(3, 1))


def test_zero_row_scale_rows_have_zero_loss_and_gradient(device):
    logits, target, fn, fp, row_scale = make_problem(
        6, 11, "matrix", False, device, zero_rows=False
    )
    row_scale[::2] = 0.0
    loss, grad = run(
        tk.rwwce_loss, logits, target, fn, fp, row_scale, 0.1, False, torch.ones(6, device=device)
    )
    assert torch.equal(loss[::2].cpu(), torch.zeros(3))
    assert torch.equal(grad[::2].cpu(), torch.zeros(3, 11))
    assert (loss[1::2] > 0).all()


# --- exact on every path: masked classes, ignored rows, unchecked targets ---------------------

INF = float("inf")
# K = 7 rows with masked (-inf) classes, and their targets. With block_k = 2 the column blocks
# are {0,1} {2,3} {4,5} {6}: whole blocks masked before, between and after the arg-max.
MASKED_ROWS = [
    ([-INF, 1.0, -INF, -INF, -INF, -INF, -INF], 1),  # all but the target masked
    ([-INF, -INF, 2.0, 0.5, -INF, -INF, -INF], 3),  # two classes left, target not the arg-max
    ([-INF, -INF, 2.0, 0.5, -INF, -INF, -INF], 2),  # two classes left, target the arg-max
    ([3.0, -INF, -INF, -INF, -INF, -INF, 1.0], 6),  # second max in the last (partial) block
    ([-INF, -INF, -INF, -INF, 0.0, 4.0, -INF], 4),  # first two blocks all masked
    ([5.0, -INF, 5.0, -INF, -2.0, -INF, -INF], 0),  # a tie at the max across blocks
    ([-INF, 0.5, -INF, 3.0, -INF, 3.0, 1.0], 6),  # masked classes between equal maxima
    ([0.2, -1.0, 0.7, -INF, 1.5, 0.0, -0.3], 5),  # one masked class
    ([-INF, -INF, -INF, -INF, -INF, -INF, 7.0], 6),  # only the last class (a block of one)
]


def covering(*multi_block_cases):
    """(fp_kind, block_k, dtype) cases: every FP kind x dtype on the single-block path (cheap
    under the interpreter) and the given (fp_kind, dtype) pairs on the multi-block path
    (block_k = 2: one interpreted program per row and column block, slow)."""
    single = [(f, None, d) for f in [None, "vector", "matrix"] for d in ALL_DTYPES]
    cases = single + [(f, 2, d) for f, d in multi_block_cases]
    return [
        pytest.param(f, b, d, id=f"{f}-{'multi' if b else 'single'}-{str(d)[6:]}")
        for f, b, d in cases
    ]


ALL_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# every FP kind and every dtype at least once on the multi-block path
MULTI_BLOCK_CASES = [
    (None, torch.float32),
    ("vector", torch.bfloat16),
    ("matrix", torch.float16),
    ("matrix", torch.float32),
]


def masked_truth64(logits, target, fn, fp, row_scale, upstream):
    """float64 loss and gradient of rows with masked classes: a class at -inf has p = 0 and
    log(1 - p) = 0, i.e. it is absent. Each row is solved without its masked classes (the
    definition in tests/oracles.py) and its gradient is 0 on them. ``target``: (M,) indices or
    (M, K) probabilities that are 0 on the masked classes."""
    z = logits.detach().cpu().double()
    m, k = z.shape
    y_all = target.cpu().double() if target.dim() == 2 else smoothed_onehot(target.cpu(), k)
    fpm = fp_as_matrix(None if fp is None else fp.cpu().double(), k)
    up = upstream.cpu().double().expand(m)
    losses, grad = torch.zeros(m, dtype=torch.float64), torch.zeros(m, k, dtype=torch.float64)
    for i in range(m):
        keep = torch.isfinite(z[i]).nonzero().flatten()
        zi = z[i, keep][None].clone().requires_grad_()
        y = y_all[i, keep][None]
        sub_fp = None if fpm is None else fpm[keep][:, keep]
        loss = rwwce_float64(zi, y, fn.cpu().double()[keep], sub_fp)[0] * row_scale[i].cpu()
        (gi,) = torch.autograd.grad(loss, zi, up[i])
        losses[i], grad[i, keep] = loss.detach(), gi[0]
    return losses, grad


@pytest.mark.parametrize("fp_kind, block_k, dtype", covering(*MULTI_BLOCK_CASES))
def test_masked_classes_get_exactly_zero_gradient(device, bounds_checked, fp_kind, block_k, dtype):
    """-inf logits (padded vocabularies, action masks): finite loss, exactly 0 gradient there."""
    logits = torch.tensor([r for r, _ in MASKED_ROWS]).to(dtype).to(device)
    target = torch.tensor([t for _, t in MASKED_ROWS], device=device)
    m, k = logits.shape
    _, _, fn, fp, row_scale = make_problem(m, k, fp_kind, False, device, zero_rows=False)
    upstream = (torch.rand(m) + 0.5).to(device)
    loss, grad = run(
        tk.rwwce_loss, logits, target, fn, fp, row_scale, 0.0, False, upstream, block_k=block_k
    )
    masked = torch.isinf(logits)
    assert torch.isfinite(loss).all(), loss
    assert torch.isfinite(grad).all(), grad
    assert torch.equal(grad[masked], torch.zeros_like(grad[masked]))
    t_loss, t_grad = masked_truth64(logits, target, fn, fp, row_scale, upstream)
    assert_within_budget("loss", loss, None, t_loss, torch.float32)
    assert_within_budget("grad", grad, None, t_grad, dtype)
    # the row with one class left costs nothing and gets no gradient at all
    assert loss[0] == 0 and torch.equal(grad[0].float(), torch.zeros(k, device=device))
    if block_k is None or fp_kind == "matrix":
        # soft targets (zero on the masked classes): same rule
        soft = torch.softmax(torch.randn(m, k, device=device) + logits.float(), dim=1)
        loss, grad = run(
            tk.rwwce_loss, logits, soft, fn, fp, row_scale, 0.0, False, upstream, block_k=block_k
        )
        assert torch.equal(grad[masked], torch.zeros_like(grad[masked]))
        t_loss, t_grad = masked_truth64(logits, soft, fn, fp, row_scale, upstream)
        assert_within_budget("soft loss", loss, None, t_loss, torch.float32)
        assert_within_budget("soft grad", grad, None, t_grad, dtype)


def test_masked_classes_match_cross_entropy(device):
    """fp_weight=None is weighted cross-entropy: equal to F.cross_entropy on masked rows, and
    with label smoothing (the masked classes then carry target mass) the same +inf loss and the
    same finite gradient as F.cross_entropy."""
    logits = torch.tensor([r for r, _ in MASKED_ROWS], device=device)
    target = torch.tensor([t for _, t in MASKED_ROWS], device=device)
    m, k = logits.shape
    fn = torch.rand(k, device=device) + 0.5
    ones = torch.ones(m, device=device)
    for smoothing in [0.0, 0.1]:
        loss, grad = run(
            tk.rwwce_loss, logits, target, fn, None, ones, smoothing, False, ones, block_k=4
        )
        z = logits.double().requires_grad_()
        expected = torch.nn.functional.cross_entropy(
            z, target, fn.double(), reduction="none", label_smoothing=smoothing
        )
        expected.backward(torch.ones_like(expected))
        torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad.double(), z.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fp_kind, block_k, dtype", covering(*MULTI_BLOCK_CASES))
def test_zero_row_scale_rows_give_exactly_zero_whatever_their_logits(
    device, bounds_checked, fp_kind, block_k, dtype
):
    """Ignored targets (placeholder class 0, row_scale 0) and zero sample weights: exactly 0 to
    the loss and the gradient even when the logits make that row's loss inf or NaN."""
    m, k = 8, 5
    reduce = dtype != torch.float32  # both outputs, (M,) and the sum, over the cases
    logits, target, fn, fp, row_scale = make_problem(
        m, k, fp_kind, False, device, dtype, zero_rows=False
    )
    bad = {
        0: [-INF, 0.64, 2.02, 0.1, -1.0],  # the placeholder class is masked: loss +inf
        2: [-INF] * k,  # everything masked: no softmax at all
        3: [float("nan"), 1.0, 2.0, 3.0, 4.0],
        5: [INF, 1.0, 2.0, -INF, 0.0],
        6: None,  # ordinary logits, zero sample weight
    }
    for i, row in bad.items():
        if row is not None:
            logits[i] = torch.tensor(row, device=device).to(dtype)
        target[i] = 0
        row_scale[i] = 0.0
    upstream = ((torch.rand(()) if reduce else torch.rand(m)) + 0.5).to(device)
    loss, grad = run(
        tk.rwwce_loss, logits, target, fn, fp, row_scale, 0.1, reduce, upstream, block_k=block_k
    )
    zeroed = torch.tensor(sorted(bad), device=device)
    kept = torch.tensor([i for i in range(m) if i not in bad], device=device)
    assert torch.equal(grad[zeroed].float(), torch.zeros(len(bad), k, device=device))
    sub = [x[kept] for x in (logits, target)]
    t_loss, t_grad = truth64(
        sub[0], sub[1], fn, fp, row_scale[kept], 0.1, reduce, upstream if reduce else upstream[kept]
    )
    if not reduce:
        assert torch.equal(loss[zeroed], torch.zeros(len(bad), device=device))
        loss = loss[kept]
    assert_within_budget("loss", loss, None, t_loss, torch.float32)
    assert_within_budget("grad", grad[kept], None, t_grad, dtype)


@pytest.mark.parametrize(
    "fp_kind, block_k, smoothing",
    [
        (fp_kind, block_k, smoothing)
        for fp_kind in [None, "vector", "matrix"]
        for block_k in [None, 2]
        for smoothing in [0.0, 0.1]
        if block_k is None or (fp_kind is None) == (smoothing == 0.0)
    ],
)
def test_out_of_range_targets_read_nothing_and_give_nan(
    device, bounds_checked, fp_kind, block_k, smoothing
):
    """Unchecked targets (validate=False, CUDA): a class outside [0, K) must not index fn / FP
    (the address check fails on any such read) and makes its row's loss and gradient NaN."""
    m, k = 8, 5
    logits, target, fn, fp, row_scale = make_problem(m, k, fp_kind, False, device, zero_rows=False)
    wrong = {1: 9, 3: -1, 4: 5, 6: -7, 7: 2**32 + 1}  # 2**32 + 1 must not wrap to class 1
    for i, t in wrong.items():
        target[i] = t
    row_scale[6] = 0.0  # a zero weight does not hide a wrong target
    upstream = (torch.rand(m) + 0.5).to(device)
    loss, grad = run(
        tk.rwwce_loss,
        logits,
        target,
        fn,
        fp,
        row_scale,
        smoothing,
        False,
        upstream,
        block_k=block_k,
    )
    bad = torch.tensor(sorted(wrong), device=device)
    good = torch.tensor([i for i in range(m) if i not in wrong], device=device)
    assert torch.isnan(loss[bad]).all(), loss
    assert torch.isnan(grad[bad]).all(), grad
    t_loss, t_grad = truth64(
        logits[good], target[good], fn, fp, row_scale[good], smoothing, False, upstream[good]
    )
    assert_within_budget("loss", loss[good], None, t_loss, torch.float32)
    assert_within_budget("grad", grad[good], None, t_grad, torch.float32)
    total = tk.rwwce_loss(logits, target, fn, fp, row_scale, smoothing, True, block_k=block_k)
    assert torch.isnan(total)


def test_public_api_ignored_row_with_masked_logits_and_unchecked_targets(device, bounds_checked):
    """Issue 9's examples through rwwce's own entry point, backend='triton'."""
    import rwwce

    tk.is_available.cache_clear()
    z = torch.tensor([[-INF, 0.64, 2.02], [0.3, -1.0, 0.5]], device=device, requires_grad=True)
    t = torch.tensor([-100, 2], device=device)
    loss = rwwce.real_world_weight_cross_entropy(z, t, reduction="sum", backend="triton")
    loss.backward()
    x = z.detach().clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(x, t, reduction="sum")
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(z.grad, x.grad)
    t = torch.tensor([9, 2], device=device)
    fp = torch.ones(3, device=device)
    loss = rwwce.real_world_weight_cross_entropy(
        z.detach(), t, None, fp, reduction="none", validate=False, backend="triton"
    )
    assert torch.isnan(loss[0]) and torch.isfinite(loss[1])
    # 'weighted_mean' divides by fn[target]: an unchecked target gives NaN there too, not a read
    # past fn (an index error on the CPU, a device-side assert on CUDA).
    for reduction in ("weighted_mean", "mean"):
        loss = rwwce.real_world_weight_cross_entropy(
            z.detach(),
            t,
            torch.ones(3, device=device),
            fp,
            reduction=reduction,
            validate=False,
            backend="triton",
        )
        assert torch.isnan(loss), reduction


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # the fixtures hold no state
)
@given(
    m=st.integers(1, 6),
    k=st.integers(2, 9),
    fp_kind=st.sampled_from([None, "vector", "matrix"]),
    block_k=st.sampled_from([None, 2, 4]),
    dtype=st.sampled_from(ALL_DTYPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_fuzz_masked_logits_and_ignored_targets(
    device, bounds_checked, m, k, fp_kind, block_k, dtype, seed
):
    """Issue 9's fuzzing as a property: each class masked with probability 0.3, 30% of the rows
    ignored (placeholder class 0, row_scale 0, the placeholder's logit itself possibly masked).
    Ignored rows give exactly 0, masked classes exactly 0 gradient, the rest the float64 truth."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(m, k, generator=gen) * 3
    target = torch.randint(0, k, (m,), generator=gen)
    masked = torch.rand(m, k, generator=gen) < 0.3
    masked[torch.arange(m), target] = False  # a masked target would cost +inf (correctly)
    ignored = torch.rand(m, generator=gen) < 0.3
    target[ignored] = 0
    logits = logits.masked_fill(masked, -INF).to(dtype).to(device)
    _, _, fn, fp, row_scale = make_problem(m, k, fp_kind, False, device, zero_rows=False)
    row_scale[ignored.to(device)] = 0.0
    target = target.to(device)
    upstream = (torch.rand(m, generator=gen) + 0.5).to(device)
    loss, grad = run(
        tk.rwwce_loss, logits, target, fn, fp, row_scale, 0.0, False, upstream, block_k=block_k
    )
    ignored, masked = ignored.to(device), masked.to(device)
    assert torch.equal(loss[ignored], torch.zeros_like(loss[ignored]))
    assert torch.equal(grad[ignored].float(), torch.zeros_like(grad[ignored].float()))
    assert torch.equal(grad[masked].float(), torch.zeros_like(grad[masked].float()))
    kept = ~ignored
    if kept.any():
        t_loss, t_grad = masked_truth64(
            logits[kept], target[kept], fn, fp, row_scale[kept], upstream[kept]
        )
        assert_within_budget("loss", loss[kept], None, t_loss, torch.float32)
        assert_within_budget("grad", grad[kept], None, t_grad, dtype)


@triton.jit
def _read_one(x_ptr, out_ptr, index):
    tl.store(out_ptr, tl.load(x_ptr + index))


@pytest.mark.parametrize("device", ["cpu"], indirect=True)  # the check wraps the interpreter
def test_address_check_catches_a_read_past_the_end(device, bounds_checked):
    x, out = torch.arange(4.0), torch.zeros(1)
    _read_one[(1,)](x, out, 3)
    assert out.item() == 3.0
    with pytest.raises(Exception, match="load outside every argument"):
        _read_one[(1,)](x, out, 4)
    bounds_checked.clear()  # seen and expected


# --- peers' shape grids (Liger-Kernel, QuACK), cut to a few rows for the interpreter -----------

# odd vocabularies: tiny, one below a power of two, one above 4096 and 8192 (the largest single
# block, so 8193 is the smallest multi-block row), GPT-2's 50257
PEER_SHAPES = [(8, 1), (8, 2), (8, 3), (6, 127), (3, 4097), (2, 8193), (2, 50257)]


@pytest.mark.parametrize("m, k", PEER_SHAPES, ids=[f"{m}x{k}" for m, k in PEER_SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_peer_shape_grid(device, bounds_checked, m, k, dtype):
    """20% of the targets ignored (placeholder class 0, row_scale 0), one confident row (logits
    of order 1e4), a random non-unit upstream gradient; float64 truth within the budget."""
    gen = torch.Generator().manual_seed(k)
    for fp_kind in [None, "vector"] + (["matrix"] if k <= 127 else []):
        logits, target, fn, fp, row_scale = make_problem(
            m, k, fp_kind, False, device, dtype, zero_rows=False
        )
        if m > 1:
            logits[-1] = (logits[-1].float() * 3000).to(dtype)
        ignored = torch.randperm(m, generator=gen)[: round(0.2 * m)].to(device)
        target[ignored] = 0
        row_scale[ignored] = 0.0
        check_against_truth(logits, target, fn, fp, row_scale, 0.0, fp_kind != "vector")


@pytest.mark.parametrize("m, k", PEER_SHAPES, ids=[f"{m}x{k}" for m, k in PEER_SHAPES])
def test_rows_shifted_by_100_give_the_same_loss_and_gradient(device, m, k):
    """Softmax invariance. The logits lie on a 2**-10 grid, so z + 100 is exact in float32 and
    the kernel, which subtracts the row's maximum first, must give bit-identical results."""
    for fp_kind in [None, "vector"]:
        logits, target, fn, fp, row_scale = make_problem(m, k, fp_kind, False, device)
        logits = (logits * 1024).round() / 1024
        upstream = (torch.rand(m) + 0.5).to(device)
        base = run(tk.rwwce_loss, logits, target, fn, fp, row_scale, 0.0, False, upstream)
        shifted = run(tk.rwwce_loss, logits + 100, target, fn, fp, row_scale, 0.0, False, upstream)
        assert torch.equal(shifted[0], base[0]), (shifted[0], base[0])
        assert torch.equal(shifted[1], base[1])


# --- autograd behaviour -----------------------------------------------------------------------


@pytest.mark.parametrize("block_k", [None, 8])
def test_deterministic(device, block_k):
    problem = make_problem(9, 29, "matrix", False, device, dtype=torch.bfloat16)
    up = torch.tensor(0.7, device=device)
    first = run(tk.rwwce_loss, *problem, 0.1, True, up, block_k=block_k)
    second = run(tk.rwwce_loss, *problem, 0.1, True, up, block_k=block_k)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])


def test_input_logits_are_not_modified(device):
    logits, target, fn, fp, row_scale = make_problem(5, 9, "vector", False, device)
    z = logits.clone().requires_grad_()
    before = z.detach().clone()
    loss = tk.rwwce_loss(z, target, fn, fp, row_scale, 0.0, True)
    loss.backward(torch.tensor(2.5, device=device))
    assert torch.equal(z.detach(), before)
    assert z.grad.data_ptr() != z.data_ptr()


@pytest.mark.parametrize("reduce", [True, False])
def test_retain_graph_second_backward_gives_the_same_gradient(device, reduce):
    logits, target, fn, fp, row_scale = make_problem(5, 13, "matrix", False, device)
    z = logits.clone().requires_grad_()
    loss = tk.rwwce_loss(z, target, fn, fp, row_scale, 0.0, reduce)
    up = torch.full_like(loss, 1.7)
    (g1,) = torch.autograd.grad(loss, z, up, retain_graph=True)
    g1 = g1.clone()
    (g2,) = torch.autograd.grad(loss, z, up, retain_graph=True)
    assert torch.equal(g1, g2)
    (g3,) = torch.autograd.grad(loss, z, torch.ones_like(loss))
    assert torch.allclose(g3 * 1.7, g1, rtol=1e-6, atol=1e-7)
    # accumulation into .grad over two backwards of one retained graph
    z.grad = None
    loss = tk.rwwce_loss(z, target, fn, fp, row_scale, 0.0, reduce)
    loss.backward(up, retain_graph=True)
    loss.backward(up)
    assert torch.allclose(z.grad, 2 * g1, rtol=1e-6, atol=1e-7)
    # without retain_graph the buffer is consumed, and a second backward is the usual error
    loss = tk.rwwce_loss(z, target, fn, fp, row_scale, 0.0, reduce)
    loss.backward(up)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward(up)


def test_double_backward_raises_and_names_the_torch_backend(device):
    """The gradient comes from the forward kernel, which autograd cannot differentiate: a
    backward with create_graph=True must refuse instead of returning a wrong second derivative."""
    logits, target, fn, fp, row_scale = make_problem(4, 6, "matrix", False, device)
    z = logits.clone().requires_grad_()
    loss = tk.rwwce_loss(z, target, fn, fp, row_scale, 0.0, True)
    with pytest.raises(RuntimeError, match="create_graph=True.*backend='torch'"):
        torch.autograd.grad(loss, z, create_graph=True)
    (g,) = torch.autograd.grad(loss, z)  # first order on the same (retained) graph still works
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_gradient_penalty_through_the_public_api_raises(device):
    """Issue 9's example: x @ W -> weighted_mean loss -> grad(loss, x, create_graph=True)."""
    import rwwce

    tk.is_available.cache_clear()
    x = torch.randn(5, 3, device=device, requires_grad=True)
    weight = torch.randn(3, 4, device=device, requires_grad=True)
    t = torch.randint(0, 4, (5,), device=device)
    loss = rwwce.real_world_weight_cross_entropy(
        x @ weight, t, reduction="weighted_mean", backend="triton"
    )
    with pytest.raises(RuntimeError, match="backend='torch'"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_unit_upstream_gradient_and_no_grad_path(device):
    problem = make_problem(8, 10, "vector", False, device)
    loss, grad = run(tk.rwwce_loss, *problem, 0.0, True, torch.tensor(1.0, device=device))
    ref_loss, ref_grad = run(
        reference.rwwce_loss, *problem, 0.0, True, torch.tensor(1.0, device=device)
    )
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        z = problem[0].clone().requires_grad_()
        no_grad_loss = tk.rwwce_loss(z, *problem[1:], 0.0, True)
    assert not no_grad_loss.requires_grad
    assert torch.equal(no_grad_loss, loss)
    # logits that do not require grad take the forward-only path
    assert torch.equal(tk.rwwce_loss(problem[0], *problem[1:], 0.0, True), loss)


def test_strided_logits(device):
    logits, target, fn, fp, row_scale = make_problem(6, 9, "vector", False, device)
    wide = torch.randn(6, 20, device=device)
    wide[:, 3:12] = logits
    view = wide[:, 3:12]  # row stride 20
    expected = tk.rwwce_loss(logits, target, fn, fp, row_scale, 0.0, False)
    torch.testing.assert_close(
        tk.rwwce_loss(view, target, fn, fp, row_scale, 0.0, False), expected, rtol=0, atol=0
    )


def test_empty_batch(device):
    logits = torch.randn(0, 5, device=device, requires_grad=True)
    loss = tk.rwwce_loss(
        logits,
        torch.zeros(0, dtype=torch.long, device=device),
        torch.ones(5, device=device),
        None,
        torch.ones(0, device=device),
        0.0,
        True,
    )
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.shape == (0, 5)


# --- availability and support reasons ---------------------------------------------------------


def test_supports_reasons(device):
    z = torch.randn(4, 5, device=device)
    t = torch.zeros(4, dtype=torch.long, device=device)
    assert tk.supports(z, t, None) is None
    assert tk.supports(z.half(), t, torch.ones(5, device=device)) is None
    assert tk.supports(z, torch.softmax(z, 1), torch.ones(5, 5, device=device)) is None
    assert "float64" in tk.supports(z.double(), t, None)
    assert "2-D" in tk.supports(z[None], t, None)
    assert tk.supports(z, t.float(), None) is not None
    with pytest.raises(ValueError, match="float64"):
        tk.rwwce_loss(
            z.double(), t, torch.ones(5, device=device), None, torch.ones(4, device=device)
        )


def test_cpu_without_interpreter_is_unsupported(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = tk.supports(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), None)
    assert reason is not None and "TRITON_INTERPRET" in reason


def test_is_available_matches_environment():
    tk.is_available.cache_clear()
    try:
        assert tk.is_available() == (torch.cuda.is_available() or INTERPRET)
    finally:
        tk.is_available.cache_clear()


def test_module_imports_without_triton_and_rwwce_does_not_import_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import rwwce\n"
        "from rwwce.kernels import triton as tk\n"
        "assert not tk.is_available()\n"
        "import torch\n"
        "assert 'not installed' in tk.supports(torch.zeros(2, 3), torch.zeros(2).long(), None)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys, rwwce; assert 'triton' not in sys.modules, 'import rwwce imported triton'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- through the public API -------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "weighted_mean"])
def test_public_api_backend_triton_matches_torch(device, reduction):
    import rwwce

    tk.is_available.cache_clear()
    x = torch.randn(4, 7, 3, device=device)  # (N, K, d1)
    t = torch.randint(0, 7, (4, 3), device=device)
    t[0, 1] = -100  # ignored
    fn = torch.rand(7, device=device) + 0.5
    fp = torch.rand(7, 7, device=device)
    fp.fill_diagonal_(0)
    results = {}
    for backend in ["torch", "triton"]:
        z = x.clone().requires_grad_()
        loss = rwwce.real_world_weight_cross_entropy(
            z, t, fn, fp, reduction=reduction, label_smoothing=0.1, backend=backend
        )
        loss.backward(torch.full_like(loss, 0.75))
        results[backend] = (loss.detach(), z.grad)
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["triton"][1], results["torch"][1], rtol=1e-5, atol=1e-6)


# --- the kernel lowers through the real compiler (no GPU needed) -------------------------------

_COMPILE_SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from rwwce.kernels import triton as tk

target = GPUTarget("cuda", 90, 32)
NONE, VECTOR, MATRIX = tk._FP_NONE.value, tk._FP_VECTOR.value, tk._FP_MATRIX.value
NO_GRAD, AFTER_SUMS = tk._GRAD_NONE.value, tk._GRAD_AFTER_SUMS.value
IN_LOSS_SWEEP = tk._GRAD_IN_LOSS_SWEEP.value
for dtype, fp_mode, soft, smooth, num_classes, grad_mode, index in [
    ("bf16", VECTOR, False, False, 1000, AFTER_SUMS, "i64"),
    ("fp32", MATRIX, False, True, 10, AFTER_SUMS, "i32"),
    ("fp16", NONE, True, False, 8192, AFTER_SUMS, None),
    ("fp32", VECTOR, False, False, 100, NO_GRAD, "i64"),
    ("bf16", VECTOR, False, True, 131072, AFTER_SUMS, "i64"),
    ("bf16", NONE, False, True, 131072, IN_LOSS_SWEEP, "i64"),
    ("fp32", MATRIX, True, False, 32768, NO_GRAD, None),
    ("fp16", MATRIX, False, False, 20000, AFTER_SUMS, "i32"),
]:
    block_m, block_k, num_warps = tk._block_sizes(8192, num_classes, None)
    signature = {
        "logits_ptr": "*" + dtype, "stride_row": "i32",
        "target_ptr": "*fp32" if soft else "*" + index, "fn_ptr": "*fp32", "fp_ptr": "*fp32",
        "fp_colsum_ptr": "*fp32", "soft_w_ptr": "*fp32", "row_scale_ptr": "*fp32",
        "loss_ptr": "*fp32", "grad_ptr": "*" + dtype, "n_rows": "i32", "n_cols": "i32",
        "smoothing": "fp32",
    }
    constants = dict(FP_MODE=fp_mode, SOFT=soft, SMOOTH=smooth, GRAD_MODE=grad_mode,
                     BLOCK_M=block_m, BLOCK_K=block_k, SINGLE_PASS=num_classes <= block_k,
                     ROUND_BF16=False)
    signature.update({name: "constexpr" for name in constants})
    names = list(signature)
    src = ASTSource(fn=tk._rwwce_fwd_kernel, signature=signature,
                    constexprs={(names.index(k),): v for k, v in constants.items()})
    triton.compile(src, target=target, options={"num_warps": num_warps})
signature = {"grad_ptr": "*bf16", "out_ptr": "*bf16", "go_ptr": "*fp32", "numel": "i64",
             "n_cols": "i32"}
constants = dict(PER_ROW=True, IN_PLACE=False, BLOCK=4096, ROUND_BF16=False)
signature.update({name: "constexpr" for name in constants})
names = list(signature)
triton.compile(ASTSource(fn=tk._scale_kernel, signature=signature,
                         constexprs={(names.index(k),): v for k, v in constants.items()}),
               target=target, options={"num_warps": 8})
print("compiled")
"""


def test_kernels_compile_for_sm90_without_a_gpu():
    """Interpreter runs do not exercise Triton's compiler: lower every variant to a cubin."""
    import triton

    if tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 2):
        pytest.skip("ASTSource API of triton >= 3.2")
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        pytest.skip("triton without its NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
