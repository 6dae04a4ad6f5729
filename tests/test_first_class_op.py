"""The loss as a first-class PyTorch op: every gradient, exact under shifts, torch.func,
torch.compile, numbers as 0-dim tensors, per-sample costs.

Oracles: PyTorch's own functions (``F.cross_entropy``, ``F.binary_cross_entropy_with_logits``),
float64 autograd of the formula (``oracles.rwwce_float64``), finite differences (``gradcheck``),
autograd itself for the ``torch.func`` transforms, and eager for compiled.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, hessian, jacrev, vmap

import rwwce
from oracles import rwwce_float64
from rwwce import _validate as V

RW = rwwce.real_world_weight_cross_entropy
REDUCTIONS = ["none", "sum", "mean", "weighted_mean"]


def _weights(k, dtype=torch.float64):
    fn = torch.rand(k, dtype=dtype) + 0.5
    fp = torch.rand(k, k, dtype=dtype).fill_diagonal_(0)
    return fn, fp


# ------------------------------------------------------------------ 1. every gradient
def test_soft_target_gradient_equals_cross_entropy():
    z = torch.randn(4, 3, requires_grad=True)
    y = torch.softmax(torch.randn(4, 3), dim=1).requires_grad_()
    RW(z, y).backward()
    z2 = z.detach().clone().requires_grad_()
    y2 = y.detach().clone().requires_grad_()
    F.cross_entropy(z2, y2).backward()
    assert y.grad is not None
    torch.testing.assert_close(y.grad, y2.grad)
    torch.testing.assert_close(z.grad, z2.grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("fp_kind", ["vector", "matrix"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_gradcheck_every_input_index_targets(reduction, fp_kind, smoothing):
    k = 4
    z = torch.randn(6, k, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, k, (6,))
    t[2] = -100  # an ignored row
    fn, fp = _weights(k)
    fn[0] = 0.0  # a learned weight at 0 still gets its derivative
    if fp_kind == "vector":
        fp = torch.rand(k, dtype=torch.float64)
    sw = torch.rand(6, dtype=torch.float64)
    sw[1] = 0.0  # learning to reweight differentiates at a zero sample weight
    inputs = tuple(x.requires_grad_() for x in (fn, fp, sw))

    def loss(z, fn, fp, sw):
        return RW(
            z,
            t,
            fn,
            fp,
            sample_weight=sw,
            reduction=reduction,
            label_smoothing=smoothing,
            validate=False,  # finite differences step off FP's zero diagonal
        )

    assert torch.autograd.gradcheck(loss, (z, *inputs), fast_mode=True)
    assert torch.autograd.gradgradcheck(loss, (z, *inputs), fast_mode=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_every_input_soft_targets(reduction):
    k = 4
    z = torch.randn(5, k, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.randn(5, k, dtype=torch.float64), dim=1).requires_grad_()
    fn, fp = (w.requires_grad_() for w in _weights(k))
    sw = torch.rand(5, dtype=torch.float64, requires_grad=True)

    def loss(z, y, fn, fp, sw):
        return RW(z, y, fn, fp, sample_weight=sw, reduction=reduction, validate=False)

    assert torch.autograd.gradcheck(loss, (z, y, fn, fp, sw), fast_mode=True)
    assert torch.autograd.gradgradcheck(loss, (z, y, fn, fp, sw), fast_mode=True)


def test_learned_weights_get_gradients_not_none():
    """None of the four is silently detached (today's main leaves every .grad None)."""
    z = torch.randn(8, 3, requires_grad=True)
    y = torch.softmax(torch.randn(8, 3), dim=1).requires_grad_()
    fn = torch.ones(3, requires_grad=True)
    fp = torch.rand(3, 3).fill_diagonal_(0).requires_grad_()
    sw = torch.rand(8, requires_grad=True)
    RW(z, y, fn, fp, sample_weight=sw, reduction="weighted_mean").backward()
    for name, x in (("y", y), ("fn", fn), ("fp", fp), ("sample_weight", sw)):
        assert x.grad is not None and torch.isfinite(x.grad).all(), name


def test_fn_weight_gradient_matches_the_weighted_mean_formula():
    """With fp=None, 'weighted_mean' is F.cross_entropy(weight=) (which refuses a weight that
    requires grad): its gradient w.r.t. the weight, through the denominator too, is that of the
    formula sum_i valid_i (-y_i fn log p_i) / sum_i valid_i fn_{t_i}, by float64 autograd."""
    z = torch.randn(10, 5, dtype=torch.float64)
    t = torch.randint(0, 5, (10,))
    t[0] = -100
    w1 = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_()
    w2 = w1.detach().clone().requires_grad_()
    RW(z, t, w1, reduction="weighted_mean", label_smoothing=0.1).backward()
    valid = t != -100
    y = F.one_hot(t[valid], 5).double() * 0.9 + 0.1 / 5
    rows = rwwce_float64(z[valid], y, w2, None)
    (rows.sum() / w2[t[valid]].sum()).backward()
    torch.testing.assert_close(w1.grad, w2.grad)
    with torch.no_grad():  # and the value is PyTorch's
        torch.testing.assert_close(
            RW(z, t, w1, reduction="weighted_mean", label_smoothing=0.1),
            F.cross_entropy(z, t, weight=w1, label_smoothing=0.1),
        )


def test_binary_weights_are_differentiable():
    x = torch.randn(7, dtype=torch.float64)
    y = (torch.rand(7) < 0.5).double()
    fn = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    fp = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda fn, fp: rwwce.binary_real_world_weight_cross_entropy(
            x, y, fn, fp, reduction="weighted_mean"
        ),
        (fn, fp),
    )


# ------------------------------------------------------------------ 2. shift invariance
def test_minus_1e30_logits_give_log_k():
    loss = RW(torch.full((1, 4), -1e30), torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(4), rel=1e-6)
    fp = torch.ones(4, 4).fill_diagonal_(0)
    expected = math.log(4) + 3 * -math.log(0.75)
    assert RW(torch.full((1, 4), -1e30), torch.tensor([0]), fp_weight=fp).item() == pytest.approx(
        expected, rel=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [1e4, 1e6, 1e9, -1e30])
@pytest.mark.parametrize("with_fp", [False, True])
def test_common_shift_error_within_cross_entropys_own(dtype, offset, with_fp):
    """Against float64 autograd of the formula on the shifted logits (as they are after
    rounding to the dtype): the loss and gradient errors stay within a small multiple of
    F.cross_entropy's own, first and second order."""
    m, k = 256, 10
    base = torch.randn(m, k, dtype=torch.float64)
    shifted = (base + offset).to(dtype)
    t = torch.randint(0, k, (m,))
    fn, fp = _weights(k)
    fp = fp if with_fp else None
    # The oracle sees exactly the logits the loss sees, relative to their row's first entry.
    rel = (shifted.double() - shifted.double()[:, :1]).requires_grad_()
    truth = rwwce_float64(rel, F.one_hot(t, k), fn, fp).mean()
    (true_grad,) = torch.autograd.grad(truth, rel, create_graph=True)
    v = torch.randn(m, k, dtype=torch.float64)
    (true_hvp,) = torch.autograd.grad(true_grad, rel, v)

    x = shifted.clone().requires_grad_()
    loss = RW(x, t, fn.to(dtype), None if fp is None else fp.to(dtype))
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (hvp,) = torch.autograd.grad(g, x, v.to(dtype))

    x_ce = shifted.clone().requires_grad_()
    ce = F.cross_entropy(x_ce, t)
    (g_ce,) = torch.autograd.grad(ce, x_ce)
    rel_ce = rel.detach().clone().requires_grad_()
    ce64 = F.cross_entropy(rel_ce, t)
    (g_ce64,) = torch.autograd.grad(ce64, rel_ce)
    eps = torch.finfo(dtype).eps
    ce_loss_err = (ce.double() - ce64).abs().item() + eps * ce64.abs().item()
    ce_grad_err = (g_ce.double() - g_ce64).abs().max().item() + eps * g_ce64.abs().max().item()
    scale = 1.0 if fp is None else 1.0 + fp.sum(dim=1).max().item()

    assert (loss.double() - truth).abs().item() <= 8 * scale * ce_loss_err * max(1, truth.item())
    assert (g.double() - true_grad).abs().max().item() <= 8 * scale * ce_grad_err
    hvp_err = (hvp.double() - true_hvp).abs().max().item()
    assert hvp_err <= 8 * scale * (ce_grad_err + eps * true_hvp.abs().max().item())


# ------------------------------------------------------------------ 3. torch.func
@pytest.mark.parametrize("fp_kind", [None, "vector", "matrix"])
def test_func_grad_jacrev_hessian_equal_autograd(fp_kind):
    k = 4
    z = torch.randn(5, k, dtype=torch.float64)
    t = torch.randint(0, k, (5,))
    fn, fpm = _weights(k)
    fp = {None: None, "vector": torch.rand(k, dtype=torch.float64), "matrix": fpm}[fp_kind]

    def f(z):
        return RW(z, t, fn, fp, label_smoothing=0.1)

    x = z.clone().requires_grad_()
    (expected,) = torch.autograd.grad(f(x), x)
    torch.testing.assert_close(grad(f)(z), expected)
    torch.testing.assert_close(jacrev(f)(z), expected)
    torch.testing.assert_close(hessian(f)(z), torch.autograd.functional.hessian(f, z))


def test_func_grad_with_respect_to_weights():
    z = torch.randn(6, 3, dtype=torch.float64)
    t = torch.randint(0, 3, (6,))
    fn, fp = _weights(3)
    g = grad(lambda fn, fp: RW(z, t, fn, fp, reduction="weighted_mean"), argnums=(0, 1))(fn, fp)
    fn2, fp2 = fn.clone().requires_grad_(), fp.clone().requires_grad_()
    expected = torch.autograd.grad(RW(z, t, fn2, fp2, reduction="weighted_mean"), (fn2, fp2))
    torch.testing.assert_close(g, expected)


def test_vmap_per_sample_gradients_through_functional_call():
    model = torch.nn.Linear(3, 4).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    t = torch.randint(0, 4, (6,))
    fn, fp = _weights(4)
    criterion = rwwce.RWWCELoss(fn, fp)  # default data checks: must not break vmap
    params = {name: p.detach() for name, p in model.named_parameters()}

    def sample_loss(params, xi, ti):
        out = functional_call(model, params, (xi.unsqueeze(0),))
        return criterion(out, ti.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, t)
    for i in range(6):
        model.zero_grad()
        criterion(model(x[i : i + 1]), t[i : i + 1]).backward()
        torch.testing.assert_close(per_sample["weight"][i], model.weight.grad)
        torch.testing.assert_close(per_sample["bias"][i], model.bias.grad)


def test_vmap_of_the_loss_over_a_batch_of_problems():
    z = torch.randn(3, 5, 4)
    t = torch.randint(0, 4, (3, 5))
    fp = torch.rand(4)
    got = vmap(lambda z, t: RW(z, t, fp_weight=fp))(z, t)
    assert got.shape == (3,)
    expected = torch.stack([RW(z[i], t[i], fp_weight=fp) for i in range(3)])
    torch.testing.assert_close(got, expected)


def test_triton_backend_under_a_transform_names_the_torch_backend():
    z = torch.randn(4, 3)
    t = torch.randint(0, 3, (4,))
    with pytest.raises(ValueError, match="backend='torch'"):
        grad(lambda z: RW(z, t, backend="triton"))(z)


# ------------------------------------------------------------------ 4. torch.compile
def _criterion():
    fn, fp = _weights(5, torch.float32)
    return rwwce.RWWCELoss(fn, fp)  # default arguments: validate=None, backend='auto'


def test_no_graph_breaks_with_default_arguments():
    criterion = _criterion()
    functional_fp = torch.rand(5)

    def step(x, t):
        return criterion(x, t) + RW(x, t, fp_weight=functional_fp)

    explanation = torch._dynamo.explain(step)(
        torch.randn(8, 5, requires_grad=True), torch.randint(0, 5, (8,))
    )
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_equals_eager_across_batch_sizes_without_recompiling(backend):
    from torch._dynamo.utils import counters

    criterion = _criterion()
    eager_criterion = _criterion()
    eager_criterion.load_state_dict(criterion.state_dict())

    def step(x, t, w):
        return criterion(x, t, sample_weight=w)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend=backend)
    sizes = [6, 11]
    for n in sizes:
        x = torch.randn(n, 5, requires_grad=True)
        t = torch.randint(0, 5, (n,))
        t[0] = -100
        w = torch.rand(n)
        loss = compiled(x, t, w)
        loss.backward()
        x_eager = x.detach().clone().requires_grad_()
        expected = eager_criterion(x_eager, t, sample_weight=w)
        expected.backward()
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(x.grad, x_eager.grad)
    assert counters["stats"]["unique_graphs"] == 1  # no recompilation


def _hard_rows(num_classes, dtype):
    """Logits that stress the compiled form: random rows, an all-zero row (every class tied), a
    tied maximum pair, a logit gap of 1e4, a common offset of 1e6."""
    z = torch.randn(8, num_classes, dtype=torch.float64) * 3
    z[1] = 0.0
    z[2, :2] = z[2].max() + 1.0
    z[3, 0] += 1e4
    z[4] += 1e6
    return z.to(dtype)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("target_kind", ["index", "smoothed", "soft"])
@pytest.mark.parametrize("fp_kind", [None, "vector", "matrix"])
def test_forms_match_the_float64_definition(fp_kind, target_kind, dtype, compiled):
    """Only the logits need a gradient: eager, the chunked sweep (one arg-max per row, rows whose
    other classes underflow against it shifted anew); compiled, a form of its own (row
    statistics, ties handled as a set, no arg-max). Against the float64 definition, values and
    gradients, on tied, far-apart and offset logits, with a random upstream gradient."""
    _check_against_float64(fp_kind, target_kind, dtype, "aot_eager" if compiled else None)


@pytest.mark.parametrize("fp_kind", [None, "vector", "matrix"])
def test_inductor_form_matches_the_float64_definition(fp_kind):
    """The compiled form as inductor generates it (one loop over each row, row factors taken once
    per row), on the same rows as above."""
    _check_against_float64(fp_kind, "smoothed", torch.float32, "inductor")


def _check_against_float64(fp_kind, target_kind, dtype, backend):
    """The loss (``torch.compile``d with ``backend`` unless None) against the float64 definition
    on :func:`_hard_rows`."""
    k = 5
    z = _hard_rows(k, dtype)
    t = torch.randint(0, k, (8,))
    smoothing = 0.2 if target_kind == "smoothed" else 0.0
    target = torch.softmax(torch.randn(8, k), dim=1).to(dtype) if target_kind == "soft" else t
    fn = torch.rand(k, dtype=dtype) + 0.5
    fp = {None: None, "vector": torch.rand(k, dtype=dtype) * 3}.get(fp_kind)
    if fp_kind == "matrix":
        fp = (torch.rand(k, k, dtype=dtype) * 3).fill_diagonal_(0)

    def loss_fn(x):
        return RW(x, target, fn, fp, reduction="none", label_smoothing=smoothing)

    if backend is not None:
        torch._dynamo.reset()  # each case compiles anew (the same code object, other constants)
        loss_fn = torch.compile(loss_fn, backend=backend, fullgraph=True)
    x = z.clone().requires_grad_()
    got = loss_fn(x)
    upstream = torch.rand(8, dtype=dtype) + 0.5
    (got_grad,) = torch.autograd.grad(got, x, upstream)

    y = target.double() if target_kind == "soft" else F.one_hot(t, k).double()
    y = y * (1 - smoothing) + smoothing / k
    fp_matrix = None if fp is None else fp.double()
    if fp_kind == "vector":
        fp_matrix = fp.double().expand(k, k) * (1 - torch.eye(k, dtype=torch.float64))
    # The definition's own logsumexp loses digits at an offset of 1e6; the loss is invariant to
    # it, and subtracting the row maximum is exact, so the oracle sees shifted rows.
    x64 = (z.double() - z.double().amax(dim=1, keepdim=True)).requires_grad_()
    expected = rwwce_float64(x64, y, fn.double(), fp_matrix)
    (expected_grad,) = torch.autograd.grad(expected, x64, upstream.double())
    tol = dict(rtol=1e-12, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-6, atol=1e-5)
    torch.testing.assert_close(got.double(), expected.detach(), **tol)
    torch.testing.assert_close(got_grad.double(), expected_grad, **tol)


@pytest.mark.parametrize("fp_kind", [None, "matrix"])
@pytest.mark.parametrize("reduction", ["mean", "weighted_mean", "sum", "none"])
def test_eager_backward_upstream_and_retained_graph(fp_kind, reduction):
    """The eager form saves a row-scaled gradient and multiplies it by the upstream gradient (an
    upstream 1 on the CPU skips that): against the float64 definition for an upstream 1 and a
    random one, twice over a retained graph, and accumulated into ``.grad`` across calls."""
    k = 5
    z = torch.randn(6, k) * 3
    t = torch.tensor([0, 1, 2, -100, 4, 1])
    fn = torch.rand(k) + 0.5
    fp = None if fp_kind is None else (torch.rand(k, k) * 3).fill_diagonal_(0)
    kept = t != -100
    y = F.one_hot(t.clamp_min(0), k).double()
    x64 = z.double().requires_grad_()
    rows = rwwce_float64(x64, y, fn.double(), None if fp is None else fp.double())
    rows = torch.where(kept, rows, torch.zeros_like(rows))
    truth = {
        "mean": rows.sum() / kept.sum(),
        "weighted_mean": rows.sum() / fn.double()[t[kept]].sum(),
        "sum": rows.sum(),
        "none": rows,
    }[reduction]

    x = z.clone().requires_grad_()
    loss = RW(x, t, fn, fp, reduction=reduction)
    torch.testing.assert_close(loss.double(), truth.detach(), rtol=1e-5, atol=1e-6)
    for upstream in (torch.ones(loss.shape), torch.rand(loss.shape) + 0.5):
        (expected,) = torch.autograd.grad(truth, x64, upstream.double(), retain_graph=True)
        first = torch.autograd.grad(loss, x, upstream, retain_graph=True)[0].clone()
        second = torch.autograd.grad(loss, x, upstream, retain_graph=True)[0]
        torch.testing.assert_close(first.double(), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(second, first)
    upstream = torch.ones(loss.shape)
    (expected,) = torch.autograd.grad(truth, x64, upstream.double())
    for _ in range(2):  # .grad accumulates over two forward/backward passes
        RW(x, t, fn, fp, reduction=reduction).backward(upstream)
    torch.testing.assert_close(x.grad.double(), 2 * expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_form_with_sample_costs_and_masked_ignored_rows(backend):
    """Per-sample costs and ignored rows whose logits are -inf (a large FP cost must not turn
    their zero gradient into NaN), compiled, against the float64 definition of each kept row
    (fn = min_{j != t} c_j, FP_j = c_j - fn)."""
    k = 6
    z = _hard_rows(k, torch.float32)
    z[5, 1:] = float("-inf")
    z[6] = float("-inf")
    t = torch.randint(0, k, (8,))
    t[5] = t[6] = -100
    costs = torch.rand(8, k) * 1e4

    def loss_fn(x):
        return RW(x, t, sample_costs=costs)

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, backend=backend, fullgraph=True)
    x = z.clone().requires_grad_()
    got = compiled(x)
    (got_grad,) = torch.autograd.grad(got, x)

    kept = [i for i in range(8) if t[i] != -100]
    x64 = z[kept].double()
    x64 = (x64 - x64.amax(dim=1, keepdim=True)).requires_grad_()
    rows = []
    for r, i in enumerate(kept):
        c = costs[i].double()
        others = torch.arange(k) != t[i]
        fn = c[others].min()
        fp_matrix = torch.zeros(k, k, dtype=torch.float64)
        fp_matrix[t[i]] = torch.where(others, c - fn, 0.0)
        onehot = F.one_hot(t[i : i + 1], k).double()
        rows.append(rwwce_float64(x64[r : r + 1], onehot, fn.expand(k), fp_matrix))
    expected = torch.cat(rows).mean()
    (expected_grad,) = torch.autograd.grad(expected, x64)
    assert torch.isfinite(got_grad).all()
    assert (got_grad[5:7] == 0).all()
    torch.testing.assert_close(got.double(), expected.detach(), rtol=2e-6, atol=1e-3)
    torch.testing.assert_close(got_grad[kept].double(), expected_grad, rtol=2e-6, atol=1e-3)


def test_compiled_soft_targets_and_smoothing_aot_eager():
    fp = torch.rand(4)

    def step(x, y):
        return RW(x, y, fp_weight=fp, label_smoothing=0.1, reduction="sum")

    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend="aot_eager")
    x = torch.randn(7, 4, requires_grad=True)
    y = torch.softmax(torch.randn(7, 4), dim=1)
    loss = compiled(x, y)
    (g,) = torch.autograd.grad(loss, x)
    x2 = x.detach().clone().requires_grad_()
    (g2,) = torch.autograd.grad(step(x2, y), x2)
    torch.testing.assert_close(loss, step(x2, y).detach())
    torch.testing.assert_close(g, g2)


def test_data_checks_are_skipped_under_compile_and_kept_in_eager():
    """Compiled, a bad target is not read on the host (no graph break): the documented rule.
    Eager, the same call raises."""
    t = torch.tensor([0, 7])
    x = torch.randn(2, 3)
    with pytest.raises(IndexError, match="target"):
        RW(x, t, validate=True)
    explanation = torch._dynamo.explain(lambda x, t: RW(x, t, validate=True))(
        x, torch.tensor([0, 1])
    )
    assert explanation.graph_break_count == 0


# ------------------------------------------------------------------ 5. numbers are 0-dim
def test_numbers_and_0dim_tensors_as_binary_weights():
    loss = rwwce.binary_real_world_weight_cross_entropy(torch.tensor(0.3), torch.tensor(1.0))
    expected = F.binary_cross_entropy_with_logits(torch.tensor(0.3), torch.tensor(1.0))
    torch.testing.assert_close(loss, expected)
    got = rwwce.binary_real_world_weight_cross_entropy(
        torch.tensor(0.3), torch.tensor(1.0), 20.0, 2.0, reduction="none"
    )
    assert got.shape == ()
    for value in (2000.0, 3, torch.tensor(2.0)):
        assert V.as_tensor("fn_weight", value, device="cpu", dtype=torch.float32).dim() == 0


def test_weights_given_as_numbers_and_lists_compile_without_graph_breaks():
    """The binary function's weights as numbers (its defaults too) and the multi-class one's as a
    list, under torch.compile(fullgraph=True): no graph break, the values of PyTorch's BCE with
    pos_weight and of the same call with tensors."""
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8, 3)).float()
    z, t = torch.randn(8, 3), torch.randint(0, 3, (8,))

    def step(x, y, z, t):
        return (
            rwwce.binary_real_world_weight_cross_entropy(x, y),
            rwwce.binary_real_world_weight_cross_entropy(x, y, 20.0, 2),
            RW(z, t, [1.0, 2.0, 0.5], [[0, 1, 2], [3, 0, 1], [1, 1, 0]]),
        )

    explanation = torch._dynamo.explain(step)(x, y, z, t)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    plain, weighted, multiclass = torch.compile(step, fullgraph=True, backend="aot_eager")(
        x, y, z, t
    )
    torch.testing.assert_close(plain, F.binary_cross_entropy_with_logits(x, y))
    expected = F.binary_cross_entropy_with_logits(x, y, pos_weight=torch.tensor(10.0)) * 2
    torch.testing.assert_close(weighted, expected)
    fp = torch.tensor([[0.0, 1, 2], [3, 0, 1], [1, 1, 0]], dtype=torch.float64)
    fn = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    expected = rwwce_float64(z, F.one_hot(t, 3).double(), fn, fp).mean()
    torch.testing.assert_close(multiclass.double(), expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ sample_costs
def _elementwise_costs_loss(z, t, c, sw=None, reduction="mean", ignore_index=-100):
    """The per-sample cost definition element by element, in float64: a CostMatrix row each."""
    losses, fns = [], []
    for i in range(z.shape[0]):
        if t[i] == ignore_index:
            continue
        ti = int(t[i])
        row = c[i].double()
        fn_i = min(row[j].item() for j in range(len(row)) if j != ti)
        p = torch.softmax(z[i].double(), dim=0)
        loss = -fn_i * torch.log(p[ti])
        for j in range(len(row)):
            if j != ti:
                loss = loss - (row[j] - fn_i) * torch.log1p(-p[j])
        s = 1.0 if sw is None else float(sw[i])
        losses.append(s * loss)
        fns.append(s * fn_i)
    total = torch.stack(losses).sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / len(losses)
    return total / sum(fns)


@pytest.mark.parametrize("reduction", ["sum", "mean", "weighted_mean"])
def test_sample_costs_against_the_elementwise_definition(reduction):
    z = torch.randn(9, 4, dtype=torch.float64)
    t = torch.randint(0, 4, (9,))
    t[3] = -100
    c = torch.rand(9, 4, dtype=torch.float64) * 5
    sw = torch.rand(9, dtype=torch.float64)
    got = RW(z, t, sample_costs=c, sample_weight=sw, reduction=reduction)
    torch.testing.assert_close(got, _elementwise_costs_loss(z, t, c, sw, reduction))


def test_sample_costs_none_reduction_and_spatial_shape():
    z = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 4, 5))
    c = torch.rand(2, 3, 4, 5, dtype=torch.float64) * 3
    got = RW(z, t, sample_costs=c, reduction="none")
    assert got.shape == (2, 4, 5)
    flat_z = z.movedim(1, -1).reshape(-1, 3)
    flat_c = c.movedim(1, -1).reshape(-1, 3)
    expected = RW(flat_z, t.reshape(-1), sample_costs=flat_c, reduction="none")
    torch.testing.assert_close(got.reshape(-1), expected)
    one = _elementwise_costs_loss(flat_z[:1], t.reshape(-1)[:1], flat_c[:1], reduction="sum")
    torch.testing.assert_close(expected[0], one)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_rows_of_one_cost_matrix_equal_its_loss_weights(reduction):
    costs = rwwce.CostMatrix([[0, 1, 5, 2], [3, 0, 1, 1], [20, 4, 0, 7], [1, 1, 1, 0]])
    fn, fp = costs.loss_weights()
    z = torch.randn(12, 4)
    t = torch.randint(0, 4, (12,))
    t[5] = -100
    per_sample = costs.matrix.to(torch.float32)[t.clamp_min(0)]
    got = RW(z, t, sample_costs=per_sample, reduction=reduction)
    expected = RW(z, t, fn, fp, reduction=reduction)
    torch.testing.assert_close(got, expected)


def test_sample_costs_gradients_and_module():
    z = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (6,))
    c = (torch.rand(6, 3, dtype=torch.float64) * 4).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z, c: RW(z, t, sample_costs=c, reduction="weighted_mean"), (z, c)
    )
    criterion = rwwce.RWWCELoss(reduction="sum")
    torch.testing.assert_close(
        criterion(z, t, sample_costs=c), RW(z, t, sample_costs=c, reduction="sum")
    )


def test_sample_costs_bad_calls_raise_clear_errors():
    z, t = torch.randn(4, 3), torch.randint(0, 3, (4,))
    c = torch.rand(4, 3)
    with pytest.raises(ValueError, match="sample_costs replaces fn_weight"):
        RW(z, t, torch.ones(3), sample_costs=c)
    with pytest.raises(ValueError, match="label_smoothing"):
        RW(z, t, sample_costs=c, label_smoothing=0.1)
    with pytest.raises(ValueError, match="class-index targets"):
        RW(z, torch.softmax(z, 1), sample_costs=c)
    with pytest.raises(ValueError, match=r"input's shape \(4, 3\)"):
        RW(z, t, sample_costs=torch.rand(4, 2))
    with pytest.raises(ValueError, match="sample_costs must be non-negative"):
        RW(z, t, sample_costs=-c)
