"""rwwce.linear (the fused linear + RWWCE loss) against the materialised path, PyTorch's own
F.linear_cross_entropy, a float64 oracle and finite differences."""

import doctest
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity

import oracles
import rwwce
from oracles import rwwce_float64, smoothed_onehot

lrce = rwwce.linear_real_world_weight_cross_entropy
rce = rwwce.real_world_weight_cross_entropy

NUM_CLASSES, HIDDEN = 9, 6


def random_fp(kind, num_classes=NUM_CLASSES, dtype=torch.float64):
    return oracles.random_fp(kind, num_classes, dtype)


def problem(rows=23, dtype=torch.float64, bias=True, leading=None):
    leading = leading or (rows,)
    x = torch.randn(*leading, HIDDEN, dtype=dtype) * 2
    weight = torch.randn(NUM_CLASSES, HIDDEN, dtype=dtype)
    b = torch.randn(NUM_CLASSES, dtype=dtype) if bias else None
    target = torch.randint(0, NUM_CLASSES, leading)
    target.view(-1)[::5] = -100  # some ignored rows
    return x, weight, b, target


def loss_and_grads(loss_fn, x, weight, bias, upstream_seed=1):
    """The loss and its gradients to (x, weight, bias) under a fixed, non-unit upstream gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias) if t is not None]
    x, weight = leaves[0], leaves[1]
    bias = leaves[2] if len(leaves) == 3 else None
    loss = loss_fn(x, weight, bias)
    gen = torch.Generator().manual_seed(upstream_seed)
    upstream = (torch.rand(loss.shape, generator=gen, dtype=torch.float64) + 0.5).to(loss.dtype)
    grads = torch.autograd.grad(loss, leaves, upstream)
    return loss.detach(), grads


def assert_same(ours, theirs, **tolerance):
    torch.testing.assert_close(ours[0], theirs[0], **tolerance)
    assert len(ours[1]) == len(theirs[1])
    for mine, reference in zip(ours[1], theirs[1], strict=True):
        torch.testing.assert_close(mine, reference, **tolerance)


# --- parity with the materialised path ---------------------------------------------------------


@pytest.mark.parametrize("fp_kind", [None, "vector", "matrix"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "weighted_mean"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("smoothed_and_weighted", [False, True])
def test_equals_the_materialised_loss(fp_kind, reduction, bias, smoothed_and_weighted):
    x, weight, b, target = problem(bias=bias)
    fn = torch.rand(NUM_CLASSES, dtype=torch.float64) + 0.5
    fp = random_fp(fp_kind)
    smoothing = 0.15 if smoothed_and_weighted else 0.0
    sample_weight = torch.rand(target.shape, dtype=torch.float64) if smoothed_and_weighted else None
    options = dict(sample_weight=sample_weight, reduction=reduction, label_smoothing=smoothing)

    ours = loss_and_grads(
        lambda x, w, b: lrce(x, w, target, fn, fp, linear_bias=b, chunk_size=4, **options),
        x,
        weight,
        b,
    )
    theirs = loss_and_grads(
        lambda x, w, b: rce(F.linear(x, w, b), target, fn, fp, **options), x, weight, b
    )
    assert_same(ours, theirs, rtol=1e-10, atol=1e-12)


def test_equals_a_float64_oracle_from_the_definition():
    x, weight, b, target = problem()
    fn = torch.rand(NUM_CLASSES, dtype=torch.float64) + 0.5
    fp = random_fp("matrix")
    sample_weight = torch.rand(target.shape, dtype=torch.float64)
    smoothing = 0.1

    def oracle(x, w, b):
        valid = target != -100
        logits = F.linear(x, w, b)[valid]
        y = smoothed_onehot(target[valid], NUM_CLASSES, smoothing)
        rows = rwwce_float64(logits, y, fn, fp)
        return (rows * sample_weight[valid]).sum() / valid.sum()

    ours = loss_and_grads(
        lambda x, w, b: lrce(
            x,
            w,
            target,
            fn,
            fp,
            linear_bias=b,
            sample_weight=sample_weight,
            label_smoothing=smoothing,
            chunk_size=5,
        ),
        x,
        weight,
        b,
    )
    assert_same(ours, loss_and_grads(oracle, x, weight, b), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fp_kind", [None, "vector", "matrix"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_gradcheck(fp_kind, reduction):
    x, weight, b, target = problem(rows=7)
    fp = random_fp(fp_kind)
    leaves = tuple(t.requires_grad_() for t in (x, weight, b))
    assert torch.autograd.gradcheck(
        lambda x, w, b: lrce(
            x, w, target, None, fp, linear_bias=b, reduction=reduction, chunk_size=3, validate=False
        ),
        leaves,
        fast_mode=True,
    )


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("fp_kind", [None, "vector"])
def test_float32_and_bfloat16_follow_the_materialised_path(dtype, tolerance, fp_kind):
    x, weight, b, target = problem(rows=40, dtype=dtype)
    fp = random_fp(fp_kind, dtype=torch.float32)
    ours = loss_and_grads(
        lambda x, w, b: lrce(x, w, target, None, fp, linear_bias=b, chunk_size=16), x, weight, b
    )
    theirs = loss_and_grads(lambda x, w, b: rce(F.linear(x, w, b), target, None, fp), x, weight, b)
    assert ours[0].dtype == torch.float32  # a reduced loss is float32 whatever the input
    assert all(g.dtype == dtype for g in ours[1])
    assert_same(ours, theirs, rtol=tolerance, atol=tolerance)


# --- parity with PyTorch's F.linear_cross_entropy (no FP term) --------------------------------


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_equals_torch_linear_cross_entropy(chunked, reduction):
    x, weight, b, target = problem(rows=50, dtype=torch.float32)
    fn = torch.rand(NUM_CLASSES) + 0.5
    torch_options = torch.nn.LinearCrossEntropyOptions() if chunked else None
    # PyTorch's 'mean' with a class weight divides by the weight total: our 'weighted_mean'.
    ours_reduction = "weighted_mean" if reduction == "mean" else reduction
    ours = loss_and_grads(
        lambda x, w, b: lrce(
            x, w, target, fn, linear_bias=b, reduction=ours_reduction, chunk_size=8
        ),
        x,
        weight,
        b,
    )
    theirs = loss_and_grads(
        lambda x, w, b: F.linear_cross_entropy(
            x, w, target, linear_bias=b, weight=fn, reduction=reduction, options=torch_options
        ),
        x,
        weight,
        b,
    )
    assert_same(ours, theirs, rtol=1e-5, atol=1e-6)


def test_equals_torch_linear_cross_entropy_with_label_smoothing():
    x, weight, b, target = problem(rows=30, dtype=torch.float32)
    ours = loss_and_grads(
        lambda x, w, b: lrce(x, w, target, linear_bias=b, label_smoothing=0.2, chunk_size=7),
        x,
        weight,
        b,
    )
    theirs = loss_and_grads(
        lambda x, w, b: F.linear_cross_entropy(x, w, target, linear_bias=b, label_smoothing=0.2),
        x,
        weight,
        b,
    )
    assert_same(ours, theirs, rtol=1e-5, atol=1e-6)


# --- chunks --------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    rows=st.integers(1, 40),
    chunk=st.integers(1, 45),
    fp_kind=st.sampled_from([None, "vector", "matrix"]),
    reduction=st.sampled_from(["none", "sum", "mean", "weighted_mean"]),
)
def test_result_does_not_depend_on_the_chunk_size(rows, chunk, fp_kind, reduction):
    x, weight, b, target = problem(rows=rows)
    fp = random_fp(fp_kind)

    def run(chunk_size):
        return loss_and_grads(
            lambda x, w, b: lrce(
                x, w, target, None, fp, linear_bias=b, reduction=reduction, chunk_size=chunk_size
            ),
            x,
            weight,
            b,
        )

    assert_same(run(chunk), run(rows), rtol=1e-12, atol=1e-13)


# --- per-sample costs ----------------------------------------------------------------------------


def random_costs(leading, dtype=torch.float64):
    """(..., K) cost rows, with ties in the off-target minimum in some rows."""
    costs = torch.rand(*leading, NUM_CLASSES, dtype=dtype) * 4
    costs.view(-1, NUM_CLASSES)[::4, :3] = 0.5
    return costs


@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "weighted_mean"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_sample_costs_equal_the_materialised_loss(reduction, bias, weighted):
    x, weight, b, target = problem(bias=bias)
    costs = random_costs(target.shape)
    sample_weight = torch.rand(target.shape, dtype=torch.float64) if weighted else None
    options = dict(sample_costs=costs, sample_weight=sample_weight, reduction=reduction)
    ours = loss_and_grads(
        lambda x, w, b: lrce(x, w, target, linear_bias=b, chunk_size=4, **options), x, weight, b
    )
    theirs = loss_and_grads(lambda x, w, b: rce(F.linear(x, w, b), target, **options), x, weight, b)
    assert_same(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "weighted_mean"])
def test_sample_costs_of_a_batch_time_input_are_rows(reduction):
    x, weight, b, target = problem(leading=(3, 5))
    costs = random_costs((3, 5))
    ours = loss_and_grads(
        lambda x, w, b: lrce(
            x, w, target, linear_bias=b, sample_costs=costs, reduction=reduction, chunk_size=4
        ),
        x,
        weight,
        b,
    )
    theirs = loss_and_grads(
        lambda x, w, b: rce(
            F.linear(x, w, b).reshape(-1, NUM_CLASSES),
            target.reshape(-1),
            sample_costs=costs.reshape(-1, NUM_CLASSES),
            reduction=reduction,
        ).reshape(ours_shape(reduction)),
        x,
        weight,
        b,
    )
    assert ours[0].shape == ours_shape(reduction)
    assert_same(ours, theirs, rtol=1e-10, atol=1e-12)


def test_sample_costs_rows_of_one_matrix_equal_its_class_weights():
    x, weight, b, target = problem()
    matrix = torch.rand(NUM_CLASSES, NUM_CLASSES, dtype=torch.float64) * 5
    matrix.fill_diagonal_(0)
    fn, fp = rwwce.CostMatrix(matrix).loss_weights(dtype=torch.float64)
    per_row = matrix[target.clamp_min(0)]  # the matrix's row of each row's true class
    for reduction in ("sum", "weighted_mean"):
        by_rows = lrce(x, weight, target, sample_costs=per_row, reduction=reduction, chunk_size=5)
        by_class = lrce(x, weight, target, fn, fp, reduction=reduction, chunk_size=5)
        torch.testing.assert_close(by_rows, by_class, rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(
    rows=st.integers(1, 30),
    chunk=st.integers(1, 35),
    reduction=st.sampled_from(["none", "sum", "mean", "weighted_mean"]),
)
def test_sample_costs_result_does_not_depend_on_the_chunk_size(rows, chunk, reduction):
    x, weight, b, target = problem(rows=rows)
    costs = random_costs(target.shape)

    def run(chunk_size):
        return loss_and_grads(
            lambda x, w, b: lrce(
                x,
                w,
                target,
                linear_bias=b,
                sample_costs=costs,
                reduction=reduction,
                chunk_size=chunk_size,
            ),
            x,
            weight,
            b,
        )

    assert_same(run(chunk), run(rows), rtol=1e-12, atol=1e-13)


def test_bad_sample_costs_name_themselves():
    x, weight, b, target = problem()
    costs = random_costs(target.shape)
    with pytest.raises(ValueError, match="sample_costs replaces fn_weight and fp_weight"):
        lrce(x, weight, target, None, random_fp("vector"), sample_costs=costs)
    with pytest.raises(ValueError, match="sample_costs cannot be combined with label_smoothing"):
        lrce(x, weight, target, sample_costs=costs, label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"sample_costs must have shape \(23, 9\)"):
        lrce(x, weight, target, sample_costs=costs[:, :4])
    with pytest.raises(ValueError, match="sample_costs.*non-negative"):
        lrce(x, weight, target, sample_costs=-costs)
    with pytest.raises(RuntimeError, match="sample_costs requires grad"):
        lrce(x, weight, target, sample_costs=costs.requires_grad_())


def largest_allocation(run) -> int:
    """Bytes of the largest single CPU allocation made while ``run()`` executes."""
    with torch.profiler.profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    return max(event.cpu_memory_usage for event in prof.events())


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_never_holds_the_logits(reduction):
    rows, classes, hidden, chunk = 64, 50, 4, 8
    x = torch.randn(rows, hidden, requires_grad=True)
    weight = torch.randn(classes, hidden, requires_grad=True)
    target = torch.randint(0, classes, (rows,))
    fp = torch.rand(classes)
    logits_bytes = rows * classes * 4

    def fused():
        lrce(x, weight, target, None, fp, reduction=reduction, chunk_size=chunk).sum().backward()

    def unfused():
        rce(F.linear(x, weight), target, None, fp, reduction=reduction).sum().backward()

    assert largest_allocation(unfused) >= logits_bytes  # the probe sees the materialised logits
    assert largest_allocation(fused) < logits_bytes / 4  # one chunk of 8 rows: 1/8 of them


def test_automatic_chunk_size_bounds_the_logits():
    from rwwce.linear import _chunk_rows

    cpu = torch.device("cpu")
    assert _chunk_rows(8192, 512, 32768, cpu) == 256  # 2**23 logit elements at most
    assert _chunk_rows(8192, 512, 1000, cpu) == 512  # about H rows
    assert _chunk_rows(8192, 16, 1000, cpu) == 64  # enough rows for the matrix products
    assert _chunk_rows(5, 512, 32768, cpu) == 5  # never more than the batch
    assert _chunk_rows(4, 8, 300_000_000, cpu) == 1  # at least one row


# --- shapes, edge cases, options -------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_batch_time_shape_equals_flattened_rows(reduction):
    x, weight, b, target = problem(leading=(3, 5))
    fp = random_fp("vector")
    per_sequence = torch.rand(3, dtype=torch.float64)
    ours = loss_and_grads(
        lambda x, w, b: lrce(
            x, w, target, None, fp, linear_bias=b, sample_weight=per_sequence, reduction=reduction
        ),
        x,
        weight,
        b,
    )
    theirs = loss_and_grads(
        lambda x, w, b: rce(
            F.linear(x, w, b).reshape(-1, NUM_CLASSES),
            target.reshape(-1),
            None,
            fp,
            sample_weight=per_sequence.repeat_interleave(5),
            reduction=reduction,
        ).reshape(ours_shape(reduction)),
        x,
        weight,
        b,
    )
    assert ours[0].shape == ours_shape(reduction)
    assert_same(ours, theirs, rtol=1e-10, atol=1e-12)


def ours_shape(reduction):
    return (3, 5) if reduction == "none" else ()


def test_unbatched_input():
    x, weight, b, target = problem(rows=1)
    ours = lrce(x[0], weight, target[0].clamp_min(0), None, random_fp("vector"), linear_bias=b)
    assert ours.shape == ()
    none = lrce(x[0], weight, target[0].clamp_min(0), reduction="none")
    assert none.shape == ()


def test_all_ignored_and_empty_batches_give_zero():
    x, weight, b, target = problem(rows=6)
    x.requires_grad_()
    loss = lrce(x, weight, torch.full_like(target, -100), None, random_fp("vector"))
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(x.grad) == 0
    empty = torch.empty(0, HIDDEN, dtype=torch.float64, requires_grad=True)
    loss = lrce(empty, weight, torch.empty(0, dtype=torch.long), reduction="weighted_mean")
    loss.backward()
    assert loss.item() == 0 and empty.grad.shape == (0, HIDDEN)


def test_zero_hidden_features_give_the_bias_logits_loss():
    """nn.Linear(0, K) is valid (the logits are the bias): the loss and gradients of the unfused
    layer, the weight's and the input's gradients empty."""
    x, weight = torch.randn(6, 0, dtype=torch.float64), torch.randn(5, 0, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    target = torch.tensor([0, 1, 4, -100, 2, 3])
    fp = oracles.random_fp("matrix", 5, torch.float64)
    ours = loss_and_grads(lambda x, w, b: lrce(x, w, target, None, fp, linear_bias=b), x, weight, b)
    theirs = loss_and_grads(lambda x, w, b: rce(F.linear(x, w, b), target, None, fp), x, weight, b)
    assert_same(ours, theirs)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_func_transforms_equal_autograd(reduction):
    """torch.func.grad, jacrev and per-sample gradients (vmap of grad over the head's parameters)
    of the fused loss (computed unfused under a transform) equal autograd through the fused
    operator."""
    from torch.func import grad, jacrev, vmap

    x, weight, b, target = problem(rows=7)
    fp = random_fp("matrix")

    def loss(x, w, b, t=target):
        out = lrce(x, w, t, None, fp, linear_bias=b, reduction=reduction, label_smoothing=0.1)
        return out.sum()

    leaves = [v.clone().requires_grad_() for v in (x, weight, b)]
    expected = torch.autograd.grad(loss(*leaves), leaves)
    got = grad(loss, argnums=(0, 1, 2))(x, weight, b)
    for mine, theirs in zip(got, expected, strict=True):
        torch.testing.assert_close(mine, theirs)
    torch.testing.assert_close(jacrev(loss, argnums=1)(x, weight, b), expected[1])

    params = {"weight": weight, "bias": b}
    kept = target != -100
    xs, ts = x[kept], target[kept]

    def sample_loss(params, x, t):
        return lrce(x, params["weight"], t, None, fp, linear_bias=params["bias"])

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, xs, ts)
    for i in range(xs.shape[0]):
        one = {k: v.clone().requires_grad_() for k, v in params.items()}
        expected_i = torch.autograd.grad(sample_loss(one, xs[i], ts[i]), list(one.values()))
        for name, theirs in zip(one, expected_i, strict=True):
            torch.testing.assert_close(per_sample[name][i], theirs)


def test_no_gradient_wanted_computes_the_loss_only():
    x, weight, b, target = problem()
    fp = random_fp("matrix")
    with torch.no_grad():
        loss = lrce(x.requires_grad_(), weight, target, None, fp, linear_bias=b, chunk_size=4)
    torch.testing.assert_close(loss, rce(F.linear(x, weight, b), target, None, fp).detach())
    assert not loss.requires_grad


def test_gradient_only_to_what_requires_it():
    x, weight, b, target = problem()
    weight.requires_grad_()
    lrce(x, weight, target, None, random_fp("vector"), linear_bias=b, chunk_size=4).backward()
    assert weight.grad is not None and x.grad is None and b.grad is None


def test_retain_graph_gives_the_same_gradient_twice():
    x, weight, b, target = problem()
    x.requires_grad_()
    loss = lrce(x, weight, target, None, random_fp("vector"), chunk_size=4)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    (second,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_double_backward_raises():
    x, weight, b, target = problem()
    x.requires_grad_()
    loss = lrce(x, weight, target, None, random_fp("vector"))
    with pytest.raises(RuntimeError, match="differentiated twice"):
        torch.autograd.grad(loss, x, create_graph=True)


# --- errors ------------------------------------------------------------------------------------


def test_bad_arguments_name_themselves():
    x, weight, b, target = problem()
    cases = [
        (dict(linear_weight=weight[0]), ValueError, "linear_weight must have shape"),
        (dict(linear_weight=weight[:, :4]), ValueError, "linear_weight has shape"),
        (dict(linear_weight=weight.float()), ValueError, "linear_weight is torch.float32"),
        (dict(linear_bias=b[:4]), ValueError, "linear_bias must have shape"),
        (dict(target=target[:5]), ValueError, "target must have the input's leading shape"),
        (dict(target=target.double()), TypeError, "target must hold class indices"),
        (dict(fp_weight=torch.ones(4)), ValueError, "fp_weight must be None"),
        (dict(fn_weight=torch.ones(3)), ValueError, "fn_weight must have shape"),
        (dict(sample_weight=torch.ones(4)), ValueError, "sample_weight must have the target's"),
        (dict(chunk_size=0), ValueError, "chunk_size must be None or a positive int"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(input=x.long()), TypeError, "input must be float16"),
    ]
    for override, error, message in cases:
        arguments = dict(input=x, linear_weight=weight, target=target, linear_bias=b) | override
        with pytest.raises(error, match=message):
            lrce(**arguments)


def test_ignore_index_and_chunk_size_follow_the_package_rules():
    # The plain loss's ignore_index rule (any integral number; a bool is refused as in PyTorch),
    # and the module's chunk_size check.
    x, weight, b, target = problem()
    target = torch.where(target == -100, 4, target)  # class 4 is the one ignored here
    target[3] = 4
    expected = rwwce.real_world_weight_cross_entropy(F.linear(x, weight, b), target, ignore_index=4)
    for ignore_index in (4, torch.tensor(4).numpy()[()]):
        got = lrce(x, weight, target, linear_bias=b, ignore_index=ignore_index)
        torch.testing.assert_close(got, expected)
    for bad in (True, 4.0, None):
        with pytest.raises(TypeError, match=f"ignore_index is {bad!r}; expected an int"):
            lrce(x, weight, target, ignore_index=bad)
        with pytest.raises(TypeError, match=f"ignore_index is {bad!r}; expected an int"):
            rwwce.real_world_weight_cross_entropy(F.linear(x, weight), target, ignore_index=bad)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(
            ValueError, match=f"chunk_size must be None or a positive int; got {bad!r}"
        ):
            rwwce.LinearRWWCELoss(chunk_size=bad)


def test_data_checks_run_once_up_front():
    x, weight, b, target = problem()
    bad = target.clone()
    bad[1] = NUM_CLASSES
    with pytest.raises(IndexError, match=r"target holds class indices in \[0, 9\)"):
        lrce(x, weight, bad)
    fp = random_fp("matrix")
    fp[2, 2] = 1.0
    with pytest.raises(ValueError, match="zero diagonal"):
        lrce(x, weight, target, None, fp)
    with pytest.raises(ValueError, match="non-negative"):
        lrce(x, weight, target, None, -random_fp("vector"))


def test_cost_weights_that_require_grad_are_refused():
    x, weight, b, target = problem()
    fp = random_fp("vector").requires_grad_()
    with pytest.raises(RuntimeError, match="fp_weight requires grad"):
        lrce(x, weight, target, None, fp)


def test_backend_triton_without_triton_says_why():
    from rwwce.kernels import triton as triton_backend

    if triton_backend.is_available():
        pytest.skip("triton runs here (a GPU, or TRITON_INTERPRET=1)")
    x, weight, b, target = problem()
    with pytest.raises(ValueError, match="backend='triton' cannot run this call"):
        lrce(x, weight, target, backend="triton")


@pytest.mark.parametrize(
    "options, reductions",
    [
        ("None, torch.rand(7), label_smoothing=0.1", ("mean", "none")),
        ("sample_costs=torch.rand(10, 7) * 4", ("weighted_mean", "none")),
    ],
    ids=["fp_vector_smoothed", "sample_costs"],
)
def test_triton_backend_matches_torch_backend_in_the_interpreter(options, reductions):
    """The chunks' loss and gradient from the Triton kernel (interpreted on the CPU); with
    ``sample_costs``, each chunk's rows of fn_rows / fp_rows reach the kernel."""
    pytest.importorskip("triton")
    script = textwrap.dedent(
        f"""
        import torch, rwwce
        torch.manual_seed(0)
        x = torch.randn(10, 6, requires_grad=True)
        w = torch.randn(7, 6, requires_grad=True)
        b = torch.randn(7, requires_grad=True)
        t = torch.randint(0, 7, (10,)); t[3] = -100
        out = {{}}
        for backend in ("torch", "triton"):
            torch.manual_seed(1)
            for reduction in {reductions!r}:
                loss = rwwce.linear_real_world_weight_cross_entropy(
                    x, w, t, {options}, linear_bias=b, reduction=reduction, chunk_size=4,
                    backend=backend)
                out[backend, reduction] = (loss, *torch.autograd.grad(loss.sum(), (x, w, b)))
        for reduction in {reductions!r}:
            for a, c in zip(out["torch", reduction], out["triton", reduction]):
                torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
        print("same")
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0 and "same" in done.stdout, done.stderr[-3000:]


def test_docstring_example_runs():
    import rwwce.linear

    result = doctest.testmod(rwwce.linear, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --- the module ----------------------------------------------------------------------------------


def test_module_equals_the_function():
    x, weight, b, target = problem(leading=(2, 7))
    fn = torch.rand(NUM_CLASSES, dtype=torch.float64) + 0.5
    fp = random_fp("matrix")
    criterion = rwwce.LinearRWWCELoss(fn, fp, reduction="weighted_mean", chunk_size=3)
    assert criterion.fp_weight.dtype == torch.float64 and "fp_weight" in criterion.state_dict()
    assert "chunk_size=3" in repr(criterion)
    ours = loss_and_grads(lambda x, w, b: criterion(x, w, target, b), x, weight, b)
    theirs = loss_and_grads(
        lambda x, w, b: lrce(x, w, target, fn, fp, linear_bias=b, reduction="weighted_mean"),
        x,
        weight,
        b,
    )
    assert_same(ours, theirs, rtol=1e-12, atol=1e-13)


def test_module_takes_sample_costs():
    x, weight, b, target = problem(leading=(2, 7))
    costs = random_costs(target.shape)
    criterion = rwwce.LinearRWWCELoss(reduction="weighted_mean", chunk_size=3)
    ours = loss_and_grads(
        lambda x, w, b: criterion(x, w, target, b, sample_costs=costs), x, weight, b
    )
    theirs = loss_and_grads(
        lambda x, w, b: rce(
            F.linear(x, w, b).reshape(-1, NUM_CLASSES),
            target.reshape(-1),
            sample_costs=costs.reshape(-1, NUM_CLASSES),
            reduction="weighted_mean",
        ),
        x,
        weight,
        b,
    )
    assert_same(ours, theirs, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="sample_costs replaces fn_weight and fp_weight"):
        rwwce.LinearRWWCELoss(fp_weight=random_fp("vector"))(x, weight, target, sample_costs=costs)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda x, w, t: lrce(x, w, t, weight=torch.ones(NUM_CLASSES)),
            r"linear_real_world_weight_cross_entropy\(\) got PyTorch's keyword argument weight=; "
            r"in rwwce write fn_weight=w",
        ),
        (
            lambda x, w, t: lrce(x, w, t, reduce=False),
            r"keyword argument reduce=; in rwwce write reduction=",
        ),
        (
            lambda x, w, t: rwwce.LinearRWWCELoss(weight=torch.ones(NUM_CLASSES)),
            r"LinearRWWCELoss\(\) got PyTorch's keyword argument weight=; in rwwce write "
            r"fn_weight=w",
        ),
    ],
    ids=["function_weight", "function_reduce", "module_weight"],
)
def test_pytorch_keyword_names_name_the_rwwce_argument(call, match):
    x, weight, b, target = problem()
    with pytest.raises(TypeError, match=match):
        call(x, weight, target)


@pytest.mark.parametrize("cast", ["half", "bfloat16"])
def test_module_cost_buffers_keep_their_dtype_under_a_parents_cast(cast):
    fn = torch.full((NUM_CLASSES,), 2001.0)  # bfloat16 rounds 2001 to 2000
    fp = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    fp[:2] = 1e5  # float16 turns 1e5 into inf
    criterion = rwwce.LinearRWWCELoss(fn, fp)
    model = torch.nn.ModuleDict({"head": torch.nn.Linear(HIDDEN, NUM_CLASSES), "loss": criterion})
    getattr(model, cast)()
    low = model["head"].weight.dtype
    assert low == getattr(torch, cast)
    assert criterion.fn_weight.dtype == torch.float32 and criterion.fp_weight.dtype == torch.float64
    assert torch.equal(criterion.fn_weight, fn) and torch.equal(criterion.fp_weight, fp)
    x, _, _, target = problem(dtype=low)
    loss = criterion(x, model["head"].weight, target, model["head"].bias)
    expected = lrce(
        x, model["head"].weight, target, fn, fp, linear_bias=model["head"].bias
    )  # the function with the original costs
    assert torch.isfinite(loss) and torch.equal(loss, expected)


def test_module_checks_its_weights_once():
    fp = torch.ones(4, 4)
    with pytest.raises(ValueError, match="zero diagonal"):
        rwwce.LinearRWWCELoss(fp_weight=fp)
    with pytest.raises(ValueError, match="chunk_size"):
        rwwce.LinearRWWCELoss(chunk_size=-1)


# --- torch.compile ------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_fullgraph_without_graph_breaks(reduction):
    x, weight, b, target = problem(dtype=torch.float32)
    fp = random_fp("vector", dtype=torch.float32)
    layer = torch.nn.Linear(HIDDEN, HIDDEN)

    def step(x, w, b):  # a hidden layer, then the fused head
        loss = lrce(layer(x).tanh(), w, target, None, fp, linear_bias=b, reduction=reduction)
        return loss.sum()

    assert_compiles_like_eager(step, x, weight, b)


def assert_compiles_like_eager(step, *args):
    """One graph, no break, and ``torch.compile(fullgraph=True)`` gives eager's loss and grads."""
    explanation = torch._dynamo.explain(step)(*args)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert_same(loss_and_grads(compiled, *args), loss_and_grads(step, *args), rtol=1e-6, atol=1e-7)


def test_torch_compile_fullgraph_with_sample_costs():
    x, weight, b, target = problem(dtype=torch.float32)
    costs = random_costs(target.shape, dtype=torch.float32)

    def step(x, w, b):
        return lrce(
            x, w, target, linear_bias=b, sample_costs=costs, reduction="weighted_mean", chunk_size=5
        )

    assert_compiles_like_eager(step, x, weight, b)


def test_compiled_across_batch_sizes_without_recompiling():
    # Dynamic shapes: no check may specialise the batch size (e.g. by formatting it eagerly).
    from torch._dynamo.utils import counters

    fp = random_fp("vector", dtype=torch.float32)

    def step(x, w, t, s):
        return lrce(x, w, t, None, fp, sample_weight=s, reduction="weighted_mean", chunk_size=4)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend="aot_eager")
    for rows in (7, 12):
        x, weight, _, target = problem(rows=rows, dtype=torch.float32)
        s = torch.rand(rows)
        torch.testing.assert_close(compiled(x, weight, target, s), step(x, weight, target, s))
    assert counters["stats"]["unique_graphs"] == 1


# --- the worked example ---------------------------------------------------------------------------


def test_token_costs_example_runs_and_prints_its_table():
    """examples/token_costs_lm.py with tiny settings: both arms trained, measured and tabled."""
    pytest.importorskip("transformers")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tiny = "--seeds 1 --steps 2 --vocab 128 --penalised 4 --batch 4 --seq-len 12 --train-seqs 20 "
    tiny += "--test-seqs 8 --hidden 16 --layers 1"
    done = subprocess.run(
        [sys.executable, os.path.join(root, "examples", "token_costs_lm.py"), *tiny.split()],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=os.path.join(root, "src"), OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "%" not in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| plain CE",
        "| RWWCE, FP on penalised tokens",
    ]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        argmax, sampled, ce, ce_other, peak = map(float, cells[1:])
        assert 0 <= argmax <= 100 and 0 < sampled < 100 and peak >= 0
        assert 0 < ce < 10 and 0 < ce_other < 10  # ln(128) = 4.85 at the start


def test_module_compiles_without_graph_breaks_after_its_first_call():
    x, weight, b, target = problem(dtype=torch.float32)
    criterion = rwwce.LinearRWWCELoss(fp_weight=random_fp("vector", dtype=torch.float32))
    criterion(x, weight, target, b)  # the first call checks the data (reads values)
    explanation = torch._dynamo.explain(lambda x: criterion(x.tanh(), weight, target, b))(x)
    assert explanation.graph_break_count == 0
