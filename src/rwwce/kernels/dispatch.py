"""The one dispatch point: which backend solves a :class:`~rwwce.kernels.Problem`.

``backend='torch'`` is :mod:`rwwce.kernels.reference`. ``'auto'`` takes the Triton kernel
(:mod:`rwwce.kernels.triton`) only for CUDA problems it supports, when triton is importable, and
falls back to PyTorch silently otherwise; ``'triton'`` asked for explicitly and unable to run
raises a ValueError that names the reason. The Triton module is imported on the first call that
may use it, so ``import rwwce`` never imports triton.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

from rwwce.kernels import Problem, reference

__all__ = ["pick_backend", "backend_module"]


def pick_backend(
    backend: str, problem: Problem, *, traced: bool | None = None
) -> Literal["torch", "triton"]:
    """The backend that solves ``problem`` for the user's ``backend`` choice.

    Args:
        backend: ``'auto'``, ``'torch'`` or ``'triton'`` (already checked).
        problem: the flat problem, or an empty stand-in with the call's metadata: the Triton
            kernel's ``supports`` reads only dtypes, devices, shapes and ``requires_grad``.
        traced: whether the call is being traced by ``torch.compile`` or a ``torch.func``
            transform, where the Triton kernel cannot run (``None``: ask
            :func:`~rwwce.kernels.reference.is_traced`). A caller whose own operator is opaque
            to the tracer, and launches the kernel when the graph runs, passes ``False``.

    Returns:
        ``'torch'`` or ``'triton'``; see :func:`backend_module` for the module.
    """
    if backend == "torch" or (backend == "auto" and not problem.logits.is_cuda):
        return "torch"
    if reference.is_traced() if traced is None else traced:
        reason = (
            "the Triton kernel does not run under torch.compile or torch.func transforms "
            "(grad, vmap, jacrev, hessian)"
        )
    else:
        from rwwce.kernels import triton as triton_backend

        if triton_backend.is_available():
            reason = triton_backend.supports(problem)
            if reason is None:
                return "triton"
        else:
            reason = (
                "triton is not installed, or there is no CUDA device and TRITON_INTERPRET=1 "
                "is not set"
            )
    if backend == "triton":
        raise ValueError(
            f"backend='triton' cannot run this call: {reason}; use backend='torch' or 'auto'"
        )
    return "torch"


def backend_module(name: str) -> ModuleType:
    """The module of a backend that :func:`pick_backend` named: it exposes
    ``rwwce_loss(problem)`` and ``rwwce_loss_and_grad(problem)``."""
    if name == "triton":
        from rwwce.kernels import triton as triton_backend

        return triton_backend
    return reference
