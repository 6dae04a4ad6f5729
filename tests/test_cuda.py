"""The public API on a CUDA device, against independent oracles: float64 math on the CPU
(``oracles.rwwce_float64``, autograd for the gradients) and PyTorch's own ``F.cross_entropy``.

Every test here needs a GPU: without one they skip, and ``RWWCE_REQUIRE_CUDA=1`` turns that into
a failure (tests/conftest.py). Covered: (N, K, d1, d2) inputs, non-contiguous inputs,
float16 / bfloat16, masked (-inf) logits, out-of-range targets, a mixed-precision segmentation
training step that never synchronises, ``torch.compile(fullgraph=True)`` of the loss and its
module, CUDA-graph capture of forward+backward, and, where the API has them, per-sample costs
(``sample_costs``) and the fused linear loss (``linear_real_world_weight_cross_entropy``).
"""

import inspect

import pytest
import torch
import torch.nn.functional as F

import rwwce
from oracles import fp_as_matrix, rwwce_float64, smoothed_onehot

pytestmark = pytest.mark.cuda

rce = rwwce.real_world_weight_cross_entropy
CUDA = torch.device("cuda")
IGNORE = -100
INF = float("inf")
# ||got - truth|| / ||truth|| allowed for values stored in each dtype (the loss and the
# gradients are computed in float32 on every path).
REL = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


# --- oracles and helpers ----------------------------------------------------------------------


def _weights(num_classes, fp_kind, gen=None):
    gen = gen or torch.Generator().manual_seed(num_classes)
    fn = torch.rand(num_classes, generator=gen) + 0.5
    if fp_kind is None:
        return fn, None
    if fp_kind == "vector":
        return fn, torch.rand(num_classes, generator=gen) * 2
    return fn, (torch.rand(num_classes, num_classes, generator=gen) * 2).fill_diagonal_(0)


def truth(z, target, fn, fp, *, reduction="mean", smoothing=0.0, sample_weight=None):
    """float64 loss of class-index targets on the CPU from the definition, and the function of
    the float64 logits it comes from (for gradients). ``z``: (N, K) or (N, K, d1, ...)."""
    k = z.shape[1]
    t = target.detach().cpu().reshape(-1)
    valid = t != IGNORE
    y = smoothed_onehot(torch.where(valid, t, 0), k, smoothing)
    fn64 = fn.detach().cpu().double()
    fpm = fp_as_matrix(None if fp is None else fp.detach().cpu().double(), k)
    weight = valid.double()
    if sample_weight is not None:
        weight = weight * sample_weight.detach().cpu().double().reshape(-1)

    def loss_of(z64):
        rows = z64.movedim(1, -1).reshape(-1, k)
        per_row = torch.where(valid, rwwce_float64(rows, y, fn64, fpm) * weight, 0.0)
        if reduction == "none":
            return per_row.reshape(z64.shape[0], *z64.shape[2:])
        if reduction == "sum":
            return per_row.sum()
        if reduction == "mean":
            return per_row.sum() / valid.sum()
        return per_row.sum() / (weight * fn64[torch.where(valid, t, 0)]).sum()  # weighted_mean

    z64 = z.detach().cpu().double().requires_grad_()
    return loss_of(z64), z64


def loss_and_grad(loss_fn, z, upstream_seed=0, **kwargs):
    """Loss and input gradient under a random, non-unit upstream gradient (multiples of 1/8, exact
    in every dtype), plus that upstream gradient on the CPU in float64."""
    z = z.detach().clone().requires_grad_()
    loss = loss_fn(z, **kwargs)
    gen = torch.Generator().manual_seed(upstream_seed)
    upstream = torch.randint(4, 12, loss.shape, generator=gen).double() / 8
    (grad,) = torch.autograd.grad(loss, z, upstream.to(loss))
    return loss.detach(), grad, upstream


def assert_near(name, got, want, rel):
    """Relative error in the 2-norm within ``rel``; names the worst element on failure."""
    got = got.detach().cpu().double()
    want = want.detach().cpu().double()
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert torch.isfinite(got).all(), (
        f"{name}: non-finite at {(~torch.isfinite(got)).nonzero()[:5].tolist()}"
    )
    err = float((got - want).norm() / want.norm().clamp_min(1e-30))
    if err > rel:
        worst = int((got - want).abs().flatten().argmax())
        raise AssertionError(
            f"{name}: relative error {err:.2e} > {rel:.0e}; worst element {worst}: "
            f"{float(got.flatten()[worst])} vs {float(want.flatten()[worst])}"
        )


def check_against_truth(z, target, fn, fp, *, reduction, backend="auto", smoothing=0.0, **opts):
    """The CUDA loss and gradient against the float64 truth of the same (rounded) inputs."""
    loss, grad, upstream = loss_and_grad(
        lambda x: rce(
            x,
            target,
            fn,
            fp,
            reduction=reduction,
            label_smoothing=smoothing,
            backend=backend,
            **opts,
        ),
        z,
    )
    want, z64 = truth(z, target, fn, fp, reduction=reduction, smoothing=smoothing, **opts)
    (want_grad,) = torch.autograd.grad(want, z64, upstream)
    assert loss.device == grad.device == z.device
    assert grad.dtype == z.dtype and grad.shape == z.shape
    assert loss.dtype == (z.dtype if reduction == "none" else torch.float32)
    assert_near("loss", loss, want.detach(), REL[loss.dtype])
    assert_near("grad", grad, want_grad, REL[z.dtype])
    return loss, grad


def _problem(shape, dtype=torch.float32, fp_kind="vector", seed=0):
    gen = torch.Generator().manual_seed(seed)
    k = shape[1]
    z = (torch.randn(*shape, generator=gen) * 3).to(dtype)
    target = torch.randint(0, k, (shape[0], *shape[2:]), generator=gen)
    target.view(-1)[::5] = IGNORE
    fn, fp = _weights(k, fp_kind, gen)
    put = lambda x: None if x is None else x.to(CUDA)  # noqa: E731
    return put(z), put(target), put(fn), put(fp)


# --- the kernel is what `auto` takes on CUDA --------------------------------------------------


def test_auto_backend_takes_the_triton_kernel_on_cuda():
    from rwwce.kernels import triton as triton_backend

    triton_backend.is_available.cache_clear()
    assert triton_backend.is_available(), "triton is missing or cannot see the GPU"
    z, target, fn, fp = _problem((4, 7))
    kernel = rce(z, target, fn, fp, reduction="none", backend="triton")  # raises if it cannot
    assert torch.equal(rce(z, target, fn, fp, reduction="none"), kernel)


# --- shapes and layouts -----------------------------------------------------------------------


@pytest.mark.parametrize("fp_kind", [None, "vector", "matrix"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "weighted_mean"])
def test_spatial_input_matches_float64_truth(fp_kind, reduction):
    """(N, K, d1, d2) with ignored elements, label smoothing and sample weights."""
    z, target, fn, fp = _problem((3, 7, 4, 5), fp_kind=fp_kind)
    weight = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(1)).add(0.5).to(CUDA)
    check_against_truth(z, target, fn, fp, reduction=reduction, smoothing=0.1, sample_weight=weight)


def test_spatial_input_without_fp_equals_cross_entropy():
    z, target, fn, _ = _problem((2, 5, 3, 6), fp_kind=None)
    for reduction, ours in [("none", "none"), ("sum", "sum"), ("mean", "weighted_mean")]:
        got, grad, _ = loss_and_grad(
            lambda x, ours=ours: rce(x, target, fn, reduction=ours, label_smoothing=0.05), z
        )
        want, want_grad, _ = loss_and_grad(
            lambda x, reduction=reduction: F.cross_entropy(
                x, target.cpu(), fn.cpu().double(), reduction=reduction, label_smoothing=0.05
            ),
            z.cpu().double(),
        )
        assert_near(f"{reduction} loss", got, want, REL[torch.float32])
        assert_near(f"{reduction} grad", grad, want_grad, REL[torch.float32])


@pytest.mark.parametrize("fp_kind", [None, "vector", "matrix"])
def test_non_contiguous_inputs_give_the_contiguous_result(fp_kind):
    """A transposed (N, K) view (class stride != 1), a channels_last (N, K, H, W) tensor, strided
    targets and weights: the same loss and gradient as contiguous copies, and the truth."""
    gen = torch.Generator().manual_seed(3)
    n, k = 6, 9
    fn_wide = (torch.rand(2 * k, generator=gen) + 0.5).to(CUDA)
    fn = fn_wide[::2]  # stride 2
    _, fp = _weights(k, fp_kind, gen)
    fp = None if fp is None else (fp.t() if fp.dim() == 2 else fp).to(CUDA)  # FP^T: a view
    cases = {
        "transposed": (torch.randn(k, n, generator=gen) * 3).to(CUDA).t(),
        "row-sliced": (torch.randn(2 * n, k + 3, generator=gen) * 3).to(CUDA)[::2, 1 : k + 1],
        "channels_last": (torch.randn(n, k, 3, 4, generator=gen) * 3)
        .to(CUDA)
        .contiguous(memory_format=torch.channels_last),
    }
    for name, z in cases.items():
        assert not z.is_contiguous(), name
        element_shape = (z.shape[0], *z.shape[2:])
        wide_target = torch.randint(0, k, (*element_shape, 2), generator=gen)
        wide_target.view(-1, 2)[::4, 0] = IGNORE
        target = wide_target.to(CUDA)[..., 0]  # strided targets
        loss, grad = check_against_truth(z, target, fn, fp, reduction="none")
        same, same_grad, _ = loss_and_grad(
            lambda x, target=target: rce(
                x,
                target.contiguous(),
                fn.contiguous(),
                None if fp is None else fp.contiguous(),
                reduction="none",
            ),
            z.contiguous(),
        )
        torch.testing.assert_close(loss, same, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(grad, same_grad, rtol=0, atol=0, msg=name)


# --- half precision ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("fp_kind", [None, "vector", "matrix"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_half_precision_matches_float64_truth(dtype, fp_kind, reduction):
    # many rows per program; and for fp_weight=None (whose truth needs no K x K matrix) a row
    # of several column blocks
    shapes = [(33, 37)] + ([(4, 9001)] if fp_kind is None else [])
    for shape in shapes:
        z, target, fn, fp = _problem(shape, dtype, fp_kind)
        check_against_truth(z, target, fn, fp, reduction=reduction, smoothing=0.1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_without_fp_is_as_good_as_cross_entropy(dtype):
    """fp_weight=None with weighted_mean against F.cross_entropy(weight=) at the same dtype on
    the same GPU: our error against float64 is at most PyTorch's own plus a small margin."""
    z, target, fn, _ = _problem((64, 1000), dtype, None)
    ours, ours_grad, up = loss_and_grad(lambda x: rce(x, target, fn, reduction="weighted_mean"), z)
    theirs, theirs_grad, _ = loss_and_grad(
        lambda x: F.cross_entropy(x, target, fn.to(dtype), reduction="mean"), z
    )
    want, want_grad, _ = loss_and_grad(
        lambda x: F.cross_entropy(x, target.cpu(), fn.cpu().double()), z.cpu().double()
    )

    def error(got, ref):
        return float((got.cpu().double() - ref).norm() / ref.norm())

    assert error(ours, want) <= error(theirs, want) + 1e-6
    assert error(ours_grad, want_grad) <= error(theirs_grad, want_grad) + REL[dtype] / 4


# --- masked logits and out-of-range targets ---------------------------------------------------


def _masked_batch(num_classes, seed):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(24, num_classes, generator=gen) * 3
    target = torch.randint(0, num_classes, (24,), generator=gen)
    masked = torch.rand(24, num_classes, generator=gen) < 0.4
    masked[torch.arange(24), target] = False  # the target and one other class stay finite
    masked[torch.arange(24), (target + 1) % num_classes] = False
    z[masked] = -INF
    target[::6] = IGNORE
    z[::6] = torch.where(torch.rand(4, num_classes, generator=gen) < 0.5, -INF, z[::6])  # anything
    return z, target


@pytest.mark.parametrize("num_classes", [7, 9001])
def test_masked_logits_without_fp_equal_cross_entropy(num_classes):
    """Kept rows against F.cross_entropy in float64; ignored rows (whose logits may be -inf
    anywhere) get exactly no gradient, and masked classes exactly none."""
    z, target = _masked_batch(num_classes, 0)
    fn = (torch.rand(num_classes) + 0.5).to(CUDA)
    got, grad, upstream = loss_and_grad(
        lambda x: rce(x, target.to(CUDA), fn, reduction="weighted_mean"), z.to(CUDA)
    )
    kept = target != IGNORE
    x = z[kept].double().requires_grad_()
    want = F.cross_entropy(x, target[kept], fn.cpu().double())
    (want_grad,) = torch.autograd.grad(want, x, upstream)
    assert_near("loss", got, want.detach(), REL[torch.float32])
    assert_near("grad", grad[kept.to(CUDA)], want_grad, REL[torch.float32])
    grad = grad.cpu()
    assert torch.equal(grad[~kept], torch.zeros_like(grad[~kept]))
    assert torch.equal(grad[torch.isinf(z)], torch.zeros(int(torch.isinf(z).sum())))


@pytest.mark.parametrize("fp_kind", ["vector", "matrix"])
def test_masked_logits_with_fp_are_absent_classes(fp_kind):
    """A class at -inf has p = 0 and log(1 - p) = 0: each row equals the same row without its
    masked classes (float64 truth), and its gradient there is exactly 0."""
    num_classes = 7
    z, target = _masked_batch(num_classes, 1)
    fn, fp = _weights(num_classes, fp_kind)
    got, grad, upstream = loss_and_grad(
        lambda x: rce(x, target.to(CUDA), fn.to(CUDA), fp.to(CUDA), reduction="none"), z.to(CUDA)
    )
    fpm = fp_as_matrix(fp.double(), num_classes)
    for i in range(z.shape[0]):
        if target[i] == IGNORE:
            assert got[i] == 0 and torch.equal(grad[i].cpu(), torch.zeros(num_classes))
            continue
        keep = torch.isfinite(z[i]).nonzero().flatten()
        zi = z[i, keep].double()[None].requires_grad_()
        y = smoothed_onehot((keep == target[i]).nonzero().flatten(), len(keep))
        want = rwwce_float64(zi, y, fn.double()[keep], fpm[keep][:, keep])[0]
        (want_grad,) = torch.autograd.grad(want, zi, upstream[i])
        assert_near(f"row {i} loss", got[i : i + 1], want.detach()[None], REL[torch.float32])
        assert_near(f"row {i} grad", grad[i, keep][None], want_grad, REL[torch.float32])
        masked = torch.isinf(z[i])
        assert torch.equal(grad[i].cpu()[masked], torch.zeros(int(masked.sum())))


def test_out_of_range_targets_are_caught_or_give_nan():
    z, target, fn, fp = _problem((8, 5), fp_kind="vector")
    target = target.clamp_min(0)
    target[3] = 5
    with pytest.raises(IndexError, match="target"):
        rce(z, target, fn, fp, validate=True)
    criterion = rwwce.RWWCELoss(fn, fp).to(CUDA)
    with pytest.raises(IndexError, match="target"):
        criterion(z, target)  # a module checks its first call on an accelerator
    # Unchecked (validate=False): the kernel reads no weight for that row and makes it NaN.
    loss, grad, _ = loss_and_grad(
        lambda x: rce(x, target, fn, fp, reduction="none", validate=False), z
    )
    assert torch.isnan(loss[3]) and torch.isnan(grad[3]).all()
    rest = torch.arange(8, device=CUDA) != 3
    assert torch.isfinite(loss[rest]).all() and torch.isfinite(grad[rest]).all()
    assert torch.isnan(rce(z, target, fn, fp, validate=False))


# --- a training step that never synchronises ----------------------------------------------------


def test_mixed_precision_segmentation_step_does_not_synchronise():
    """bf16 autocast, (N, K, H, W) logits whose classes are not the innermost dimension, ignored
    pixels, sample weights, an FP vector: after the module's first (checked) call, whole steps
    run with host synchronisations made errors."""
    num_classes = 5
    per_pixel = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, num_classes)
    ).to(CUDA)
    optimizer = torch.optim.SGD(per_pixel.parameters(), lr=0.1, momentum=0.9)
    fn, fp = _weights(num_classes, "vector")
    criterion = rwwce.RWWCELoss(fn, fp, ignore_index=IGNORE).to(CUDA)
    x = torch.randn(4, 16, 16, 3, device=CUDA)
    target = torch.randint(0, num_classes, (4, 16, 16), device=CUDA)
    target[:, :2] = IGNORE
    pixel_weight = torch.rand(4, 16, 16, device=CUDA) + 0.5

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = per_pixel(x).permute(0, 3, 1, 2)  # (N, K, H, W), a view
            loss = criterion(logits, target, sample_weight=pixel_weight)
        loss.backward()
        optimizer.step()
        return loss.detach()

    first = step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.stack([first, *losses])).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in per_pixel.parameters())


# --- torch.compile and CUDA graphs (the loss as a first-class op) -------------------------------


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("fp_kind", [None, "vector", "matrix"])
def test_compiled_loss_fullgraph_equals_eager(backend, fp_kind):
    z, target, fn, fp = _problem((16, 7, 3), fp_kind=fp_kind)

    def loss_fn(x, t):
        return rce(x, t, fn, fp, label_smoothing=0.1, backend=backend)

    compiled = torch.compile(loss_fn, fullgraph=True)
    got, grad, _ = loss_and_grad(lambda x: compiled(x, target), z)
    eager, eager_grad, _ = loss_and_grad(lambda x: loss_fn(x, target), z)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-5, atol=1e-7)
    check_against_truth(z, target, fn, fp, reduction="mean", smoothing=0.1, backend=backend)


def test_compiled_module_with_dynamic_batch_does_not_recompile():
    import torch._dynamo

    fn, fp = _weights(6, "matrix")
    criterion = rwwce.RWWCELoss(fn, fp).to(CUDA)
    compiled = torch.compile(criterion, fullgraph=True, dynamic=True)

    def compare(n):
        z, target, _, _ = _problem((n, 6), fp_kind=None, seed=n)
        got, grad, _ = loss_and_grad(lambda x: compiled(x, target), z)
        eager, eager_grad, _ = loss_and_grad(lambda x: criterion(x, target), z)
        torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, eager_grad, rtol=1e-5, atol=1e-7)

    compare(16)  # the first size compiles
    compare(20)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for n in (24, 40, 7):  # other batch sizes reuse the dynamic graph
            compare(n)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("fp_kind", [None, "vector"])
def test_cuda_graph_capture_of_forward_and_backward(backend, fp_kind):
    """Capture loss + backward once, replay on new data copied into the static inputs: the same
    loss and gradient as eager on that data."""
    shape = (32, 11)
    static_z, static_target, fn, fp = _problem(shape, fp_kind=fp_kind, seed=0)
    static_z.requires_grad_()

    def step():
        loss = rce(static_z, static_target, fn, fp, validate=False, backend=backend)
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (lazy initialisation, Triton compilation) off-graph
        for _ in range(3):
            static_z.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    static_z.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()

    for seed in (1, 2):
        z, target, _, _ = _problem(shape, fp_kind=None, seed=seed)
        with torch.no_grad():
            static_z.copy_(z)
        static_target.copy_(target)
        graph.replay()
        eager, eager_grad = _eager_unit(z, target, fn, fp, backend)
        torch.testing.assert_close(static_loss, eager, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(static_z.grad, eager_grad, rtol=1e-6, atol=1e-8)


def _eager_unit(z, target, fn, fp, backend):
    x = z.detach().clone().requires_grad_()
    loss = rce(x, target, fn, fp, backend=backend)
    loss.backward()
    return loss.detach(), x.grad


# --- per-sample costs and the fused linear loss, once the API has them -------------------------


def _require(feature_present, what):
    if not feature_present:
        pytest.skip(f"rwwce has no {what} yet")


@pytest.mark.parametrize("num_classes", [6, 40])
@pytest.mark.parametrize("reduction", ["none", "mean", "weighted_mean"])
def test_sample_costs_match_the_element_wise_definition(num_classes, reduction):
    """Row i's costs c_i: fn_i = min_{j != t_i} c_ij and FP_i[j] = c_ij - fn_i (DESIGN.md)."""
    _require("sample_costs" in inspect.signature(rce).parameters, "sample_costs argument")
    gen = torch.Generator().manual_seed(num_classes)
    n = 12
    z = torch.randn(n, num_classes, generator=gen) * 3
    target = torch.randint(0, num_classes, (n,), generator=gen)
    target[::5] = IGNORE
    costs = torch.rand(n, num_classes, generator=gen) * 10
    got, grad, upstream = loss_and_grad(
        lambda x: rce(x, target.to(CUDA), sample_costs=costs.to(CUDA), reduction=reduction),
        z.to(CUDA),
    )
    z64 = z.double().requires_grad_()
    rows, fn_rows = [], []
    for i in range(n):
        if target[i] == IGNORE:
            rows.append(z64[i, 0] * 0)
            fn_rows.append(0.0)
            continue
        t = int(target[i])
        others = torch.cat([costs[i, :t], costs[i, t + 1 :]]).double()
        fn_i = others.min()
        fpm = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        fpm[t] = costs[i].double() - fn_i
        fpm[t, t] = 0
        fn_vec = torch.full((num_classes,), float(fn_i), dtype=torch.float64)
        y = smoothed_onehot(target[i : i + 1], num_classes)
        rows.append(rwwce_float64(z64[i : i + 1], y, fn_vec, fpm)[0])
        fn_rows.append(float(fn_i))
    per_row = torch.stack(rows)
    valid = target != IGNORE
    if reduction == "none":
        want = per_row
    elif reduction == "mean":
        want = per_row.sum() / valid.sum()
    else:
        want = per_row.sum() / torch.tensor(fn_rows, dtype=torch.float64).sum()
    (want_grad,) = torch.autograd.grad(want, z64, upstream)
    assert_near("loss", got, want.detach(), REL[torch.float32])
    assert_near("grad", grad, want_grad, REL[torch.float32])


@pytest.mark.parametrize("fp_kind", [None, "vector", "matrix"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_fused_linear_loss_matches_float64_truth(fp_kind, dtype, chunk_size):
    """(B, T, H) hidden states, a (K, H) weight and a bias: the loss and the gradients to the
    input, the weight and the bias equal those of F.linear followed by the definition."""
    linear = getattr(rwwce, "linear_real_world_weight_cross_entropy", None)
    _require(linear is not None, "linear_real_world_weight_cross_entropy")
    gen = torch.Generator().manual_seed(5)
    b, t, h, k = 3, 10, 16, 37
    x = torch.randn(b, t, h, generator=gen).to(dtype)
    weight = (torch.randn(k, h, generator=gen) / h**0.5).to(dtype)
    bias = torch.randn(k, generator=gen).to(dtype)
    target = torch.randint(0, k, (b, t), generator=gen)
    target[:, ::4] = IGNORE
    fn, fp = _weights(k, fp_kind, gen)
    leaves = [v.to(CUDA).requires_grad_() for v in (x, weight, bias)]
    loss = linear(
        leaves[0],
        leaves[1],
        target.to(CUDA),
        fn.to(CUDA),
        None if fp is None else fp.to(CUDA),
        linear_bias=leaves[2],
        chunk_size=chunk_size,
    )
    grads = torch.autograd.grad(loss, leaves, torch.tensor(0.75, device=CUDA))
    ref = [v.double().requires_grad_() for v in (x, weight, bias)]
    logits = F.linear(ref[0].reshape(-1, h), ref[1], ref[2])
    valid = target.reshape(-1) != IGNORE
    y = smoothed_onehot(torch.where(valid, target.reshape(-1), 0), k)
    fpm = fp_as_matrix(None if fp is None else fp.double(), k)
    per_row = rwwce_float64(logits, y, fn.double(), fpm)
    want = torch.where(valid, per_row, 0.0).sum() / valid.sum()
    want_grads = torch.autograd.grad(want, ref, torch.tensor(0.75, dtype=torch.float64))
    # float32 matrix products may run in TF32 on the GPU: a looser bound than the plain loss
    rel = 1e-3 if dtype == torch.float32 else 2e-2
    assert loss.dtype == torch.float32
    assert_near("loss", loss, want.detach(), rel)
    for name, got, expected, leaf in zip(
        ["input", "weight", "bias"], grads, want_grads, leaves, strict=True
    ):
        assert got.dtype == leaf.dtype and got.shape == leaf.shape
        assert_near(f"grad {name}", got, expected, rel)
