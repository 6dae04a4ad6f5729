"""The one dispatch point: which backend solves a Problem, and why a requested one cannot."""

import pytest
import torch

from rwwce.kernels import Problem, reference
from rwwce.kernels.dispatch import backend_module, pick_backend


def _cpu_problem():
    logits = torch.randn(4, 3)
    return Problem(logits, torch.tensor([0, 1, 2, 0]), torch.ones(3), None, torch.full((4,), 0.25))


@pytest.fixture
def no_triton(monkeypatch):
    """Triton unavailable, whatever this machine has."""
    from rwwce.kernels import triton as triton_backend

    monkeypatch.setattr(triton_backend, "is_available", lambda: False)


def test_torch_and_auto_on_the_cpu_take_the_reference():
    problem = _cpu_problem()
    assert pick_backend("torch", problem) == "torch"
    assert pick_backend("auto", problem) == "torch"
    assert backend_module("torch") is reference
    loss = backend_module(pick_backend("auto", problem)).rwwce_loss(problem)
    expected = torch.nn.functional.cross_entropy(problem.logits, problem.target)
    torch.testing.assert_close(loss, expected)


def test_backend_module_of_triton_is_the_triton_backend():
    from rwwce.kernels import triton as triton_backend

    assert backend_module("triton") is triton_backend


def test_triton_requested_without_triton_names_the_reason(no_triton):
    with pytest.raises(ValueError, match="backend='triton' cannot run this call: triton is not "
                       "installed.*use backend='torch' or 'auto'"):  # fmt: skip
        pick_backend("triton", _cpu_problem())


def test_triton_requested_while_traced_names_the_tracer():
    problem = _cpu_problem()
    with pytest.raises(ValueError, match="does not run under torch.compile or torch.func"):
        pick_backend("triton", problem, traced=True)

    def loss(logits):  # under torch.func.grad: the dispatch asks is_traced() itself
        traced = Problem(logits, problem.target, problem.fn_weight, None, problem.row_scale)
        pick_backend("triton", traced)
        return logits.sum()

    with pytest.raises(ValueError, match="does not run under torch.compile or torch.func"):
        torch.func.grad(loss)(problem.logits)


def test_an_opaque_caller_is_not_refused_for_tracing(no_triton):
    # traced=False (the fused linear loss's operator): the reason is triton's absence, not tracing
    with pytest.raises(ValueError, match="triton is not installed"):
        pick_backend("triton", _cpu_problem(), traced=False)
