"""rwwce against PyTorch's own test samples, taken from the installed torch wheel.

PyTorch's OpInfo database (``torch.testing._internal.common_methods_invocations.op_db``) holds the
sample inputs PyTorch tests ``F.cross_entropy`` and ``F.binary_cross_entropy_with_logits`` with,
and ``module_db`` (``common_modules``) the constructor and forward inputs of
``nn.CrossEntropyLoss``. Each sample is mapped onto rwwce and its value and input gradient (with a
random upstream gradient) compared with PyTorch's on the same sample, in float64 and float32.

Mapping (the documented correspondence, DESIGN.md):
- ``weight`` -> ``fn_weight``, ``fp_weight=None``; ``reduction='mean'`` -> ``'weighted_mean'``
  (rwwce's ``'mean'`` is the paper's per-sample mean); ``ignore_index`` and ``label_smoothing``
  pass through.
- binary: ``fn = weight * pos_weight``, ``fp = weight`` (broadcast), reductions unchanged.
- PyTorch draws weights from [-9, 9]; rwwce rejects negative weights, so both sides get ``abs``.
- PyTorch's random "probability" targets need not sum to 1; those calls pass ``validate=False``
  (rwwce's check would reject them; the formula is the same for any non-negative targets).
- A class-index batch whose targets are all ignored: PyTorch gives NaN under ``'mean'``, rwwce
  deliberately gives 0 with a zero gradient. Such samples are checked for exactly that.

``torch.testing._internal`` changes global state when imported (it loads its own hypothesis
profile, freezes ``torch.backends`` flags and patches TorchScript calls), so the samples are made
in a child process and shipped here with ``torch.save``: this test session stays untouched.
Importing it needs the ``expecttest`` package (in the ``dev`` extra).
"""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import rwwce

DTYPES = (torch.float64, torch.float32)
TOLERANCES = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=2e-5, atol=2e-5)}

# Keyword arguments of PyTorch's losses that rwwce deliberately lacks (STYLE.md: no legacy
# arguments). A sample using one is skipped and counted; any other unknown keyword fails the test,
# so a new PyTorch feature cannot be skipped silently.
UNSUPPORTED_KWARGS = {"size_average", "reduce"}
CROSS_ENTROPY_KWARGS = {"weight", "reduction", "ignore_index", "label_smoothing"}
BCE_KWARGS = {"weight", "pos_weight", "reduction"}


def _plain(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _dump_samples(path):
    """Child process: write PyTorch's samples as plain tensors and dicts to ``path``."""
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_modules import module_db

    ops = {op.name: op for op in op_db if op.name in _OPS}
    module_info = next(m for m in module_db if m.module_cls is torch.nn.CrossEntropyLoss)
    out = {}
    for dtype in DTYPES:
        for name in _OPS:
            torch.manual_seed(0)
            out[name, dtype] = [
                dict(
                    input=_plain(s.input),
                    args=[_plain(a) for a in s.args],
                    kwargs={k: _plain(v) for k, v in s.kwargs.items()},
                    name=s.name,
                )
                for s in ops[name].sample_inputs("cpu", dtype, requires_grad=False)
            ]
        torch.manual_seed(0)
        module_inputs = module_info.module_inputs_func(
            module_info, device="cpu", dtype=dtype, requires_grad=False, training=True
        )
        out["nn.CrossEntropyLoss", dtype] = [
            dict(
                constructor_args=[_plain(a) for a in m.constructor_input.args],
                constructor_kwargs={k: _plain(v) for k, v in m.constructor_input.kwargs.items()},
                forward_args=[_plain(a) for a in m.forward_input.args],
                forward_kwargs={k: _plain(v) for k, v in m.forward_input.kwargs.items()},
                name=m.desc,
            )
            for m in module_inputs
        ]
    torch.save(out, path)


_OPS = ("nn.functional.cross_entropy", "nn.functional.binary_cross_entropy_with_logits")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    path = tmp_path_factory.mktemp("pytorch_samples") / "samples.pt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, __file__, str(path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, f"making PyTorch's samples failed:\n{done.stderr[-4000:]}"
    return torch.load(path, weights_only=False)


def _abs(value):
    return value.abs() if isinstance(value, torch.Tensor) else value


def _value_and_grad(fn, x, seed):
    """fn(x) and d(fn(x) . g)/dx for a random upstream gradient g (the same g for both sides)."""
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    generator = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.dtype)
    (grad,) = torch.autograd.grad(out, x, upstream)
    return out.detach(), grad


def _sums_to_one(target):
    sums = target.sum(dim=1 if target.dim() > 1 else 0, dtype=torch.float64)
    return bool(((sums - 1).abs() <= 1e-3).all())


def _all_ignored(target, ignore_index):
    return not target.is_floating_point() and bool((target == ignore_index).all())


def _compare(name, ours, theirs, dtype, *, all_ignored_mean):
    """One sample: equal values and gradients, or rwwce's documented 0 for an all-ignored mean."""
    (value, grad), (their_value, their_grad) = ours, theirs
    if all_ignored_mean:
        assert torch.isnan(their_value).all(), f"{name}: PyTorch no longer gives NaN here"
        assert value.item() == 0.0 and not grad.any(), f"{name}: all ignored: want 0, zero grad"
        return
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(value, their_value, **tol, msg=name)
    torch.testing.assert_close(grad, their_grad, **tol, msg=name)


def _skip_reason(kwargs, known):
    unsupported = UNSUPPORTED_KWARGS & set(kwargs)
    if unsupported:
        return f"legacy {sorted(unsupported)}"
    unknown = set(kwargs) - known
    assert not unknown, f"a PyTorch sample uses {sorted(unknown)}: map it onto rwwce"
    return None


def _cross_entropy_sample(name, i, sample, dtype):
    kwargs = sample["kwargs"]
    x, (target,) = sample["input"], sample["args"]
    weight = _abs(kwargs.get("weight"))
    reduction = kwargs.get("reduction", "mean")
    ignore_index = kwargs.get("ignore_index", -100)
    smoothing = kwargs.get("label_smoothing", 0.0)
    soft = target.is_floating_point()
    ours = _value_and_grad(
        lambda z: rwwce.real_world_weight_cross_entropy(
            z,
            target,
            weight,
            ignore_index=ignore_index,
            reduction="weighted_mean" if reduction == "mean" else reduction,
            label_smoothing=smoothing,
            validate=False if soft and not _sums_to_one(target) else None,
        ),
        x,
        seed=i,
    )
    theirs = _value_and_grad(
        lambda z: F.cross_entropy(
            z,
            target,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=smoothing,
        ),
        x,
        seed=i,
    )
    everything_ignored = _all_ignored(target, ignore_index) and reduction == "mean"
    _compare(name, ours, theirs, dtype, all_ignored_mean=everything_ignored)


def _bce_sample(name, i, sample, dtype):
    kwargs = sample["kwargs"]
    x, (target,) = sample["input"], sample["args"]
    weight = _abs(kwargs.get("weight"))
    pos_weight = _abs(kwargs.get("pos_weight"))
    reduction = kwargs.get("reduction", "mean")
    one = torch.ones((), dtype=x.dtype)
    fp = weight if weight is not None else one
    fn = fp * (pos_weight if pos_weight is not None else one)
    ours = _value_and_grad(
        lambda z: rwwce.binary_real_world_weight_cross_entropy(
            z, target, fn, fp, reduction=reduction
        ),
        x,
        seed=i,
    )
    theirs = _value_and_grad(
        lambda z: F.binary_cross_entropy_with_logits(
            z, target, weight=weight, pos_weight=pos_weight, reduction=reduction
        ),
        x,
        seed=i,
    )
    _compare(name, ours, theirs, dtype, all_ignored_mean=False)


def _module_sample(name, i, sample, dtype):
    assert not sample["constructor_args"] and not sample["forward_kwargs"], name
    kwargs = sample["constructor_kwargs"]
    x, target = sample["forward_args"]
    their_kwargs = dict(kwargs, weight=_abs(kwargs.get("weight")))
    reduction = their_kwargs.get("reduction", "mean")
    ignore_index = their_kwargs.get("ignore_index", -100)
    soft = target.is_floating_point()
    criterion = rwwce.RWWCELoss(
        fn_weight=their_kwargs["weight"],
        reduction="weighted_mean" if reduction == "mean" else reduction,
        ignore_index=ignore_index,
        label_smoothing=their_kwargs.get("label_smoothing", 0.0),
        validate=False if soft and not _sums_to_one(target) else None,
    )
    ours = _value_and_grad(lambda z: criterion(z, target), x, seed=i)
    theirs = _value_and_grad(
        lambda z: torch.nn.CrossEntropyLoss(**their_kwargs)(z, target), x, seed=i
    )
    everything_ignored = _all_ignored(target, ignore_index) and reduction == "mean"
    _compare(name, ours, theirs, dtype, all_ignored_mean=everything_ignored)


def _run_samples(samples, check, known, kwargs_key):
    """Check every sample; returns the number compared. Skips only by ``_skip_reason``."""
    compared = 0
    skipped = []
    for i, sample in enumerate(samples):
        name = f"sample {i} {sample['name']!r}"
        if _skip_reason(sample[kwargs_key], known):
            skipped.append(name)
            continue
        check(name, i, sample)
        compared += 1
    # No sample of torch 2.13 needs a skip; a future one would be listed here, not lost.
    assert not skipped, skipped
    return compared


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cross_entropy_opinfo_samples(samples, dtype):
    compared = _run_samples(
        samples["nn.functional.cross_entropy", dtype],
        lambda name, i, sample: _cross_entropy_sample(name, i, sample, dtype),
        CROSS_ENTROPY_KWARGS,
        "kwargs",
    )
    assert compared >= 20, compared  # 21 in torch 2.13


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_binary_cross_entropy_with_logits_opinfo_samples(samples, dtype):
    compared = _run_samples(
        samples["nn.functional.binary_cross_entropy_with_logits", dtype],
        lambda name, i, sample: _bce_sample(name, i, sample, dtype),
        BCE_KWARGS,
        "kwargs",
    )
    assert compared >= 25, compared  # 26 in torch 2.13


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cross_entropy_loss_module_samples(samples, dtype):
    compared = _run_samples(
        samples["nn.CrossEntropyLoss", dtype],
        lambda name, i, sample: _module_sample(name, i, sample, dtype),
        CROSS_ENTROPY_KWARGS,
        "constructor_kwargs",
    )
    assert compared >= 100, compared  # 105 in torch 2.13


def test_all_ignored_batch_is_zero_where_pytorch_gives_nan():
    """The one deliberate difference, on its own (the samples above may not draw such a batch)."""
    x = torch.randn(3, 4, dtype=torch.float64)
    target = torch.full((3,), 2)
    weight = torch.rand(4, dtype=torch.float64) + 0.5
    ours = _value_and_grad(
        lambda z: rwwce.real_world_weight_cross_entropy(
            z, target, weight, ignore_index=2, reduction="weighted_mean"
        ),
        x,
        seed=0,
    )
    theirs = _value_and_grad(
        lambda z: F.cross_entropy(z, target, weight=weight, ignore_index=2), x, seed=0
    )
    _compare("all ignored", ours, theirs, torch.float64, all_ignored_mean=True)
    assert math.isnan(theirs[0].item())


if __name__ == "__main__":
    _dump_samples(sys.argv[1])
