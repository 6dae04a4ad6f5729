"""rwwce.functional against PyTorch's own losses, the paper's formula and float64 truth."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import rwwce
from oracles import fp_as_matrix, random_fp, rwwce_float64, smoothed_onehot

rwce = rwwce.real_world_weight_cross_entropy
brwce = rwwce.binary_real_world_weight_cross_entropy


def grads(loss_fn, x, upstream=None):
    x = x.detach().clone().requires_grad_()
    loss = loss_fn(x)
    if upstream is None:  # a fixed, non-unit upstream gradient
        upstream = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape).to(loss)
    (grad,) = torch.autograd.grad(loss, x, upstream)
    return loss.detach(), grad


# --- parity with F.cross_entropy (no FP term) -------------------------------------------------

SHAPES = [(7, 5), (4, 3, 6), (3, 5, 423), (2, 4, 3, 5), (6,)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_matches_cross_entropy_with_class_indices(device, shape, reduction, weighted, smoothing):
    num_classes = shape[1] if len(shape) > 1 else shape[0]
    x = torch.randn(shape, device=device) * 3
    target_shape = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    target = torch.randint(0, num_classes, target_shape, device=device)
    if target.dim() > 0:
        target.view(-1)[::4] = -100  # some ignored targets
    weight = torch.rand(num_classes, device=device) + 0.1 if weighted else None
    ours_reduction = "weighted_mean" if reduction == "mean" else reduction
    upstream = torch.randn(target_shape, device=device) if reduction == "none" else None

    ours, ours_grad = grads(
        lambda z: rce(z, target, weight, reduction=ours_reduction, label_smoothing=smoothing),
        x,
        upstream,
    )
    theirs, their_grad = grads(
        lambda z: F.cross_entropy(
            z, target, weight=weight, reduction=reduction, label_smoothing=smoothing
        ),
        x,
        upstream,
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_grad, their_grad, rtol=1e-5, atol=1e-6)


rce = rwce


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_matches_cross_entropy_with_probability_targets(device, reduction, smoothing):
    x = torch.randn(5, 4, 3, device=device)
    target = torch.softmax(torch.randn(5, 4, 3, device=device), dim=1)
    weight = torch.rand(4, device=device) + 0.5
    ours_reduction = "weighted_mean" if reduction == "mean" else reduction
    upstream = torch.randn(5, 3, device=device) if reduction == "none" else None
    ours, ours_grad = grads(
        lambda z: rce(z, target, weight, reduction=ours_reduction, label_smoothing=smoothing),
        x,
        upstream,
    )
    theirs, their_grad = grads(
        lambda z: F.cross_entropy(
            z, target, weight=weight, reduction=reduction, label_smoothing=smoothing
        ),
        x,
        upstream,
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_grad, their_grad, rtol=1e-5, atol=1e-6)


def test_mean_divides_by_non_ignored_count_not_weight_sum():
    x = torch.randn(10, 4)
    target = torch.randint(0, 4, (10,))
    target[:3] = -100
    weight = torch.tensor([1.0, 2.0, 5.0, 0.5])
    expected = F.cross_entropy(x, target, weight=weight, reduction="sum") / 7
    torch.testing.assert_close(rce(x, target, weight, reduction="mean"), expected)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 9),
    num_classes=st.integers(2, 12),
    spatial=st.lists(st.integers(1, 4), max_size=2),
    smoothing=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_cross_entropy_parity_over_random_shapes(batch, num_classes, spatial, smoothing, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, num_classes, *spatial, generator=gen) * 4
    target = torch.randint(0, num_classes, (batch, *spatial), generator=gen)
    weight = torch.rand(num_classes, generator=gen) + 0.05
    ours, ours_grad = grads(
        lambda z: rce(z, target, weight, reduction="weighted_mean", label_smoothing=smoothing), x
    )
    theirs, their_grad = grads(
        lambda z: F.cross_entropy(z, target, weight=weight, label_smoothing=smoothing), x
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_grad, their_grad, rtol=1e-5, atol=1e-6)


# --- the full loss against float64 truth and the paper's formula ------------------------------


@pytest.mark.parametrize("fp_kind", [None, "vector", "matrix"])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("soft", [False, True])
def test_full_loss_matches_float64_definition(fp_kind, smoothing, soft):
    num_rows, num_classes = 33, 6
    x = torch.randn(num_rows, num_classes, dtype=torch.float64) * 5
    fn = torch.rand(num_classes, dtype=torch.float64) * 2
    fp = random_fp(fp_kind, num_classes, torch.float64)
    if soft:
        target = torch.softmax(torch.randn(num_rows, num_classes, dtype=torch.float64), 1)
        y = target * (1 - smoothing) + smoothing / num_classes
    else:
        target = torch.randint(0, num_classes, (num_rows,))
        y = smoothed_onehot(target, num_classes, smoothing)
    ours, ours_grad = grads(
        lambda z: rce(z, target, fn, fp, reduction="none", label_smoothing=smoothing), x
    )
    truth, true_grad = grads(lambda z: rwwce_float64(z, y, fn, fp_as_matrix(fp, num_classes)), x)
    torch.testing.assert_close(ours, truth, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_grad, true_grad, rtol=1e-10, atol=1e-12)


def test_paper_formula_with_probabilities_and_one_hot_matrices():
    """The paper's notebook form, in float64 and without its clip."""
    num_rows, num_classes = 20, 4
    x = torch.randn(num_rows, num_classes, dtype=torch.float64)
    target = torch.randint(0, num_classes, (num_rows,))
    fn = torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=torch.float64)
    fp = torch.tensor([[0, 1, 2, 0], [4, 0, 1, 1], [0, 0, 0, 7], [1, 1, 1, 0]], dtype=torch.float64)
    p = torch.softmax(x, dim=1)
    onehot = F.one_hot(target, num_classes).double()
    paper = -(onehot * torch.log(p)) @ torch.diag(fn) - ((onehot @ fp) * torch.log(1 - p))
    expected = paper.sum(dim=1).mean()
    ours = rce(x, target, torch.diag(fn), fp)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fp_kind", [None, "vector", "matrix"])
@pytest.mark.parametrize("soft", [False, True])
def test_gradcheck_float64(fp_kind, soft):
    x = torch.randn(5, 4, 2, dtype=torch.float64, requires_grad=True)
    fn = torch.rand(4, dtype=torch.float64) + 0.5
    fp = random_fp(fp_kind, 4, torch.float64)
    if soft:
        target = torch.softmax(torch.randn(5, 4, 2, dtype=torch.float64), dim=1)
    else:
        target = torch.randint(0, 4, (5, 2))
        target[0, 0] = -100
    for reduction in ("none", "mean", "weighted_mean"):
        assert torch.autograd.gradcheck(
            lambda z, r=reduction: rce(z, target, fn, fp, reduction=r, label_smoothing=0.1), (x,)
        )


# --- numerics at the extremes ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_confidently_wrong_prediction_is_exact_and_keeps_its_gradient(dtype):
    """Logit gap 1e4 on the wrong class: finite, exact loss and a non-vanishing gradient."""
    big = 5e3 if dtype == torch.float16 else 1e4  # 7 x 1e4 would overflow float16's 65504
    x = torch.tensor([[0.0, big, -3.0], [big, 0.0, 2.0]], dtype=dtype)
    target = torch.tensor([0, 2])
    fn = torch.tensor([2.0, 1.0, 3.0])
    fp = torch.tensor([[0.0, 5.0, 1.0], [1.0, 0.0, 1.0], [4.0, 1.0, 0.0]])
    ones = torch.ones(2)
    loss, grad = grads(lambda z: rce(z, target, fn, fp, reduction="none"), x, ones)
    y = smoothed_onehot(target, 3)
    truth, true_grad = grads(lambda z: rwwce_float64(z, y, fn, fp), x.double(), ones.double())
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    # Row 0: fn 2 * gap + FP 5 * gap (+ a tiny FP term on class 2), the gap being 1e4 rounded.
    gap = x[0, 1].double().item()
    assert abs(truth[0].item() - 7 * gap) < 1
    tolerance = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(loss.double(), truth, rtol=tolerance, atol=0)
    # The gradient pushes the wrong class down and the true class up with weight fn + FP = 7.
    torch.testing.assert_close(grad.double(), true_grad, rtol=tolerance, atol=tolerance)
    assert grad[0, 1].item() == pytest.approx(7.0, rel=tolerance)


def test_confident_correct_prediction_costs_nothing():
    x = torch.tensor([[1e4, 0.0, 0.0]])
    fp = torch.ones(3, 3) - torch.eye(3)
    loss, grad = grads(lambda z: rce(z, torch.tensor([0]), None, fp), x, torch.tensor(1.0))
    assert loss.item() == 0.0
    assert torch.all(grad == 0)


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    values=st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=16), min_size=8, max_size=8),
    target=st.lists(st.integers(0, 3), min_size=2, max_size=2),
    fp_kind=st.sampled_from([None, "vector", "matrix"]),
)
def test_loss_and_gradient_finite_for_extreme_logits(dtype, values, target, fp_kind):
    x = torch.tensor(values, dtype=dtype).reshape(2, 4)
    fp = random_fp(fp_kind, 4)
    loss, grad = grads(
        lambda z: rce(z, torch.tensor(target), torch.rand(4) + 0.1, fp, label_smoothing=0.05), x
    )
    assert torch.isfinite(loss).all()
    assert torch.isfinite(grad).all()
    assert grad.dtype == dtype


def test_half_precision_inputs_are_computed_in_float32():
    x32 = torch.randn(64, 10) * 8
    target = torch.randint(0, 10, (64,))
    fp = random_fp("matrix", 10)
    for dtype in (torch.float16, torch.bfloat16):
        x = x32.to(dtype)
        loss, grad = grads(
            lambda z: rce(z, target, None, fp, reduction="sum"), x, torch.tensor(1.0)
        )
        expected, expected_grad = grads(
            lambda z: rce(z, target, None, fp, reduction="sum"), x.float(), torch.tensor(1.0)
        )
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        torch.testing.assert_close(loss, expected)
        # Only the final rounding to the half dtype differs from the float32 computation.
        none = rce(x, target, None, fp, reduction="none")
        assert none.dtype == dtype
        torch.testing.assert_close(
            none, rce(x.float(), target, None, fp, reduction="none").to(dtype)
        )
        torch.testing.assert_close(grad, expected_grad.to(dtype))


# --- options -----------------------------------------------------------------------------------


def test_all_ignored_batch_gives_zero_loss_and_zero_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    target = torch.full((4,), -100)
    for reduction in ("mean", "weighted_mean"):
        loss = rce(x, target, torch.ones(3), torch.ones(3), reduction=reduction)
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0.0
        assert torch.all(grad == 0)
    # The deliberate difference: PyTorch gives NaN here.
    assert torch.isnan(F.cross_entropy(x, target))


def test_sample_weight_scales_each_element():
    x = torch.randn(6, 4, 3)
    target = torch.randint(0, 4, (6, 3))
    target[0, 0] = -100
    fp = random_fp("matrix", 4)
    per_sample = torch.rand(6)
    per_element = torch.rand(6, 3)
    unweighted = rce(x, target, None, fp, reduction="none")
    for weight, expanded in (
        (per_sample, per_sample[:, None].expand(6, 3)),
        (per_element, per_element),
    ):
        weighted = rce(x, target, None, fp, sample_weight=weight, reduction="none")
        torch.testing.assert_close(weighted, unweighted * expanded)
        mean = rce(x, target, None, fp, sample_weight=weight, reduction="mean")
        torch.testing.assert_close(mean, (unweighted * expanded).sum() / 17)
        weighted_mean = rce(x, target, None, fp, sample_weight=weight, reduction="weighted_mean")
        denominator = (expanded * (target != -100)).sum()
        torch.testing.assert_close(weighted_mean, (unweighted * expanded).sum() / denominator)


def test_probability_input_matches_logits():
    x = torch.randn(8, 5, dtype=torch.float64)
    target = torch.randint(0, 5, (8,))
    fp = random_fp("matrix", 5, torch.float64)
    from_logits = rce(x, target, None, fp)
    from_probs = rce(torch.softmax(x, 1), target, None, fp, input_type="probs")
    torch.testing.assert_close(from_probs, from_logits, rtol=1e-10, atol=1e-12)
    # An exact zero probability on the truth gives a large finite loss, not inf.
    probs = torch.tensor([[0.0, 1.0]])
    loss, grad = grads(lambda p: rce(p, torch.tensor([0]), input_type="probs"), probs)
    assert math.isfinite(loss.item()) and loss.item() > 80
    assert torch.isfinite(grad).all()


def test_integer_target_dtypes_are_accepted():
    x = torch.randn(5, 3)
    target = torch.tensor([0, 2, 1, 1, 0])
    expected = rce(x, target)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        torch.testing.assert_close(rce(x, target.to(dtype)), expected)


def test_fn_weight_diagonal_matrix_form_equals_vector():
    x = torch.randn(5, 3)
    target = torch.randint(0, 3, (5,))
    fn = torch.tensor([1.0, 4.0, 2.0])
    torch.testing.assert_close(rce(x, target, torch.diag(fn)), rce(x, target, fn))


def test_fp_vector_equals_its_matrix():
    x = torch.randn(9, 4)
    target = torch.randint(0, 4, (9,))
    v = torch.tensor([1.0, 2.0, 0.0, 3.0])
    torch.testing.assert_close(rce(x, target, None, v), rce(x, target, None, fp_as_matrix(v, 4)))


def test_global_normalize_without_process_group_is_a_no_op():
    x = torch.randn(6, 3)
    target = torch.tensor([0, 1, -100, 2, 1, 0])
    fp = random_fp("vector", 3)
    torch.testing.assert_close(
        rce(x, target, None, fp, global_normalize=True), rce(x, target, None, fp)
    )


def test_weights_as_lists_and_arrays():
    import numpy as np

    x = torch.randn(4, 3)
    target = torch.tensor([0, 1, 2, 0])
    expected = rce(x, target, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.5, 1.0]))
    torch.testing.assert_close(rce(x, target, [1, 2, 3], np.array([0.5, 0.5, 1.0])), expected)


def test_torch_compile_parity():
    x = torch.randn(8, 5)
    target = torch.randint(0, 5, (8,))
    fp = random_fp("matrix", 5)

    def loss_fn(z):
        return rce(z, target, None, fp, validate=False)

    eager, eager_grad = grads(loss_fn, x, torch.tensor(1.0))
    compiled, compiled_grad = grads(
        torch.compile(loss_fn, backend="aot_eager"), x, torch.tensor(1.0)
    )
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_grad, eager_grad)


def test_caller_logits_are_not_modified():
    x = torch.randn(6, 4, requires_grad=True)
    before = x.detach().clone()
    rce(x, torch.randint(0, 4, (6,)), None, random_fp("matrix", 4)).backward()
    assert torch.equal(x.detach(), before)


# --- binary ------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_binary_matches_bce_with_logits(device, reduction):
    x = torch.randn(16, 3, device=device) * 4
    target = torch.randint(0, 2, (16, 3), device=device).float()
    weight = torch.rand(16, 3, device=device)
    pos_weight = torch.rand(3, device=device) * 5
    upstream = torch.randn(16, 3, device=device) if reduction == "none" else None
    ours, ours_grad = grads(
        lambda z: brwce(z, target, weight * pos_weight, weight, reduction=reduction), x, upstream
    )
    theirs, their_grad = grads(
        lambda z: F.binary_cross_entropy_with_logits(
            z, target, weight=weight, pos_weight=pos_weight, reduction=reduction
        ),
        x,
        upstream,
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_grad, their_grad, rtol=1e-5, atol=1e-6)


def test_binary_weighted_mean_and_probs():
    x = torch.randn(10, dtype=torch.float64)
    target = (torch.rand(10) > 0.5).double()
    per_element = 20.0 * target * F.softplus(-x) + 3.0 * (1 - target) * F.softplus(x)
    total_weight = (20.0 * target + 3.0 * (1 - target)).sum()
    torch.testing.assert_close(
        brwce(x, target, 20.0, 3.0, reduction="weighted_mean"), per_element.sum() / total_weight
    )
    torch.testing.assert_close(
        brwce(torch.sigmoid(x), target, 20.0, 3.0, input_type="probs"), per_element.mean()
    )


def test_binary_extreme_logits_are_exact():
    x = torch.tensor([-1e4, 1e4], requires_grad=True)
    loss = brwce(x, torch.tensor([1.0, 0.0]), 2.0, 3.0, reduction="none")
    loss.sum().backward()
    assert loss.tolist() == [2e4, 3e4]
    assert x.grad.tolist() == [-2.0, 3.0]


# --- bad input ---------------------------------------------------------------------------------

X = torch.randn(4, 3)
T = torch.tensor([0, 1, 2, 1])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(fn_weight=torch.ones(4)),
            ValueError,
            r"fn_weight must have shape \(3,\).*got shape \(4,\)",
        ),
        (dict(fn_weight=torch.ones(3, 3) + 1), ValueError, "must be diagonal"),
        (
            dict(fp_weight=torch.ones(2, 3)),
            ValueError,
            r"fp_weight must be None.*got shape \(2, 3\)",
        ),
        (dict(fp_weight=torch.ones(3, 3)), ValueError, r"zero diagonal.*fp_weight\[0, 0\] = 1"),
        (
            dict(fn_weight=torch.tensor([1.0, -1.0, 1.0])),
            ValueError,
            "non-negative.*-1.0 at index 1",
        ),
        (
            dict(fp_weight=torch.tensor([1.0, float("nan"), 1.0])),
            ValueError,
            "fp_weight must be finite",
        ),
        (
            dict(fn_weight=torch.tensor([1.0, float("inf"), 1.0])),
            ValueError,
            "fn_weight must be finite",
        ),
        (dict(sample_weight=torch.ones(5)), ValueError, r"sample_weight must have shape \(4,\)"),
        (dict(sample_weight=-torch.ones(4)), ValueError, "sample_weight must be non-negative"),
        (dict(reduction="average"), ValueError, "reduction must be one of.*'average'"),
        (dict(input_type="softmax"), ValueError, "input_type must be one of"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
        (dict(label_smoothing=1.5), ValueError, r"label_smoothing must be a float in \[0, 1\]"),
        (dict(fn_weight="heavy"), TypeError, "fn_weight has dtype <U5; expected numbers"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        rce(X, T, **kwargs)


def test_bad_targets_raise_clear_errors():
    with pytest.raises(IndexError, match=r"\[0, 3\) or ignore_index=-100; got 3 at index 1"):
        rce(X, torch.tensor([0, 3, 1, 1]))
    with pytest.raises(IndexError, match="got -1 at index 0"):
        rce(X, torch.tensor([-1, 0, 1, 1]))
    with pytest.raises(TypeError, match="integer dtype"):
        rce(X, T.float())
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        rce(X, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="sum to 1"):
        rce(X, torch.ones(4, 3))
    with pytest.raises(ValueError, match="non-negative"):
        rce(X, torch.tensor([[1.5, -0.5, 0.0]] * 4))
    with pytest.raises(TypeError, match="target must hold class indices"):
        rce(X, T.bool())
    with pytest.raises(TypeError, match="input must be float16"):
        rce(T, T)
    with pytest.raises(ValueError, match="NaN"):
        rce(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="needs values in"):
        rce(X, T, input_type="probs")


def test_fp_term_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        rce(torch.randn(3, 1), torch.zeros(3, dtype=torch.long), None, torch.zeros(1))


def test_softmax_output_as_logits_warns_and_validate_false_is_silent():
    probs = torch.softmax(torch.randn(6, 4), dim=1)
    with pytest.warns(UserWarning, match="looks like probabilities"):
        rce(probs, torch.randint(0, 4, (6,)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rce(probs, torch.randint(0, 4, (6,)), validate=False)
        rce(torch.randn(6, 4), torch.randint(0, 4, (6,)))


@pytest.fixture
def fresh_triton_probe():
    """Clear the cached availability probe before and after (the environment changes)."""
    try:
        from rwwce.kernels import triton as triton_backend
    except ImportError:
        yield
        return
    triton_backend.is_available.cache_clear()
    yield
    triton_backend.is_available.cache_clear()


def test_unavailable_triton_backend_is_a_clear_error(monkeypatch, fresh_triton_probe):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device may make Triton available")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' cannot run this call"):
        rce(X, T, backend="triton")


def test_binary_bad_input():
    x = torch.randn(5)
    with pytest.raises(ValueError, match=r"target must have the input's shape \(5,\)"):
        brwce(x, torch.ones(4))
    with pytest.raises(ValueError, match=r"target must be in \[0, 1\]"):
        brwce(x, torch.full((5,), 2.0))
    with pytest.raises(ValueError, match="fn_weight must be a number or broadcastable"):
        brwce(x, torch.ones(5), torch.ones(3))
    with pytest.raises(ValueError, match="fp_weight must be non-negative"):
        brwce(x, torch.ones(5), 1.0, -2.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        brwce(x, torch.ones(5), reduction="avg")
