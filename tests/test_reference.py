"""The pure-PyTorch backend against a float64 truth, with an error budget per dtype."""

import pytest
import torch

from oracles import fp_as_matrix, rwwce_float64, smoothed_onehot
from rwwce.kernels import Problem, reference


def run(logits, target, fn, fp, row_scale, smoothing=0.0, reduce=False, upstream=None):
    logits = logits.detach().clone().requires_grad_()
    loss = reference.rwwce_loss(
        Problem(logits, target, fn, fp, row_scale, None, None, smoothing, reduce)
    )
    upstream = torch.ones_like(loss) if upstream is None else upstream
    (grad,) = torch.autograd.grad(loss, logits, upstream)
    return loss.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fp_kind", [None, "vector", "matrix"])
def test_error_budget_against_float64_truth(dtype, fp_kind):
    """The backend's error at a dtype is no worse than rounding the inputs to that dtype allows."""
    num_rows, num_classes = 64, 37
    logits = (torch.randn(num_rows, num_classes) * 6).to(dtype)
    target = torch.randint(0, num_classes, (num_rows,))
    fn = torch.rand(num_classes) + 0.5
    fp = (
        None
        if fp_kind is None
        else (
            torch.rand(num_classes)
            if fp_kind == "vector"
            else torch.rand(num_classes, num_classes).fill_diagonal_(0)
        )
    )
    row_scale = torch.rand(num_rows)
    upstream = torch.randn(num_rows)
    loss, grad = run(logits, target, fn, fp, row_scale, 0.1, upstream=upstream)

    x64 = logits.double().requires_grad_()
    y = smoothed_onehot(target, num_classes, 0.1)
    truth = (
        rwwce_float64(
            x64, y, fn.double(), fp_as_matrix(fp.double(), num_classes) if fp is not None else None
        )
        * row_scale.double()
    )
    (true_grad,) = torch.autograd.grad(truth, x64, upstream.double())
    loss_error = (loss.double() - truth).abs().max().item()
    # The loss is computed in float32 from the (already rounded) inputs: float32-level error.
    assert loss_error <= 1e-5 * truth.abs().max().item(), loss_error
    # The gradient is returned in the input dtype: one rounding to it, plus float32 noise.
    grad_error = (grad.double() - true_grad).abs()
    budget = torch.finfo(dtype).eps * true_grad.abs() + 1e-6 * true_grad.abs().max()
    worst = torch.argmax(grad_error - budget)
    assert torch.all(grad_error <= budget), f"worst at {divmod(worst.item(), num_classes)}"


def test_chunked_rows_equal_one_chunk(monkeypatch):
    logits = torch.randn(50, 7)
    target = torch.randint(0, 7, (50,))
    fp = torch.rand(7, 7).fill_diagonal_(0)
    args = (target, torch.rand(7), fp, torch.rand(50), 0.2)
    whole = run(logits, *args)
    monkeypatch.setattr(reference, "_CPU_CHUNK_ELEMENTS", 7 * 6)  # chunks of 6 rows
    chunked = run(logits, *args)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-7)


def test_second_backward_with_retained_graph_gives_the_same_gradient():
    logits = torch.randn(8, 5, requires_grad=True)
    fp = torch.rand(5)
    loss = reference.rwwce_loss(
        Problem(logits, torch.randint(0, 5, (8,)), torch.ones(5), fp, torch.ones(8) / 8)
    )
    (first,) = torch.autograd.grad(loss * 3.0, logits, retain_graph=True)
    (second,) = torch.autograd.grad(loss * 3.0, logits)
    assert torch.equal(first, second)


def test_no_gradient_buffer_without_grad():
    logits = torch.randn(8, 5)
    with torch.no_grad():
        loss = reference.rwwce_loss(
            Problem(
                logits.requires_grad_(),
                torch.randint(0, 5, (8,)),
                torch.ones(5),
                None,
                torch.ones(8),
            )
        )
    assert loss.grad_fn is None


def test_masked_classes_with_minus_inf_logits():
    """-inf logits (masked classes) give zero probability, no NaN, also when only one is left."""
    inf = float("inf")
    logits = torch.tensor([[2.0, -inf, 0.5], [-inf, 1.0, -inf]])
    fp = torch.ones(3, 3).fill_diagonal_(0)
    fp[1, 0] = 0.0
    loss, grad = run(logits, torch.tensor([0, 1]), torch.ones(3), fp, torch.ones(2))
    assert torch.isfinite(loss).all() and not torch.isnan(grad).any()
    expected_row0 = rwwce_float64(
        logits[:1, [0, 2]].double(),
        torch.tensor([[1.0, 0.0]]).double(),
        torch.ones(2).double(),
        torch.ones(2, 2).double().fill_diagonal_(0),
    )
    torch.testing.assert_close(loss[0].double(), expected_row0[0])
    assert loss[1].item() == 0.0
