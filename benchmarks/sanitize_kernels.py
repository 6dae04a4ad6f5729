"""A small forward+backward of every Triton kernel variant, through the public functions: the
program that ``compute-sanitizer --tool memcheck`` watches for out-of-bounds and misaligned
accesses (``benchmarks/gpu_check.py`` runs it so).

Variants: a tile of many short rows (K = 37), one row per program in a single block (K = 5000),
several column blocks per row (K = 9001 > 8192, the largest single block); FP None / vector /
matrix; float32, bfloat16, float16; class-index and soft targets; label smoothing, ignored
targets, sample weights; every reduction (``none`` takes the per-row backward); a retained graph
(the out-of-place backward); a no-grad forward (no gradient buffer). Per-sample costs
(``sample_costs``) and the fused linear loss (``linear_real_world_weight_cross_entropy``) are
added when the public API has them. Each result is compared with the PyTorch backend on the
same inputs in float64 (so a variant that reads the wrong memory inside its buffers still fails),
unless ``--no-reference`` (under the sanitizer, after a plain run has compared).

    python benchmarks/sanitize_kernels.py              # every variant against float64
    compute-sanitizer --tool memcheck python benchmarks/sanitize_kernels.py --no-reference
    python benchmarks/sanitize_kernels.py --list
    TRITON_INTERPRET=1 python benchmarks/sanitize_kernels.py --device cpu --only 'tile'

Exit status: 0 when every case ran and matched, 1 otherwise, 2 when the device cannot run the
kernel.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import warnings
from dataclasses import dataclass

import torch

IGNORE = -100
# ||kernel - float64 reference|| / ||reference|| allowed, by the dtype of what is compared.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}


@dataclass(frozen=True)
class Case:
    """One call of the public loss: input ``shape`` (N, K, d1, ...) or, for ``linear``, (N, H)
    hidden states with a (K, H) weight and K = ``classes``."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    fp: str = "none"  # none | vector | matrix | sample_costs
    soft: bool = False
    smoothing: float = 0.0
    reduction: str = "mean"
    sample_weight: bool = False
    retain_graph: bool = False
    linear: bool = False
    classes: int | None = None

    @property
    def num_classes(self) -> int:
        return self.classes if self.linear else self.shape[1]


def _variants(prefix: str, shape: tuple[int, ...], specs: list[dict]) -> list[Case]:
    cases = []
    for spec in specs:
        parts = [prefix, f"fp={spec.get('fp', 'none')}", spec.get("dtype", "float32")]
        parts += [key for key in ("soft", "retain_graph", "sample_weight") if spec.get(key)]
        if spec.get("smoothing"):
            parts.append(f"smoothing={spec['smoothing']}")
        parts.append(spec.get("reduction", "mean"))
        cases.append(Case("/".join(parts), shape, **spec))
    return cases


def all_cases(with_sample_costs: bool, with_linear: bool) -> list[Case]:
    """Every case; the optional features only when the public API has them."""
    cases = _variants(
        "tile",  # K = 37: 32 rows per program, the last program partial
        (33, 37),
        [
            dict(fp="none"),
            dict(fp="vector", smoothing=0.1, reduction="none"),
            dict(fp="matrix", smoothing=0.1, reduction="weighted_mean", sample_weight=True),
            dict(fp="matrix", dtype="bfloat16", soft=True, reduction="sum"),
            dict(fp="vector", dtype="float16", soft=True),
            dict(fp="vector", retain_graph=True),
        ],
    )
    cases += _variants(
        "row",  # K = 5000: one row per program, the whole row in one block
        (5, 5000),
        [
            dict(fp="none", dtype="bfloat16"),
            dict(fp="vector", smoothing=0.1),
            dict(fp="matrix", dtype="float16", reduction="none"),
        ],
    )
    cases += _variants(
        "multi",  # K = 9001: two column blocks, the second one partial
        (3, 9001),
        [
            dict(fp="none"),
            dict(fp="none", dtype="bfloat16", smoothing=0.1, reduction="none"),
            dict(fp="vector", dtype="bfloat16"),
            dict(fp="vector", soft=True),
            dict(fp="matrix", smoothing=0.1),
            dict(fp="matrix", dtype="bfloat16", soft=True, reduction="none"),
        ],
    )
    cases += _variants(
        "spatial",  # (N, K, d1, d2): classes moved last before the kernel
        (2, 11, 3, 5),
        [dict(fp="matrix", reduction="none"), dict(fp="vector", dtype="bfloat16")],
    )
    if with_sample_costs:
        cases += _variants("tile", (33, 37), [dict(fp="sample_costs")])
        cases += _variants("multi", (3, 9001), [dict(fp="sample_costs", reduction="none")])
    if with_linear:
        for classes in (37, 9001):
            cases += [
                Case(
                    f"linear/K={classes}/fp={fp}/float32",
                    (24, 32),
                    fp=fp,
                    linear=True,
                    classes=classes,
                )
                for fp in ("none", "vector")
            ]
    return cases


def _inputs(case: Case, device: torch.device) -> dict:
    """The case's tensors, drawn on the CPU from a seed (the same on every machine)."""
    gen = torch.Generator().manual_seed(len(case.name))
    k = case.num_classes

    def draw(*shape):
        return torch.rand(*shape, generator=gen)

    if case.linear:
        n, hidden = case.shape
        values = {"input": torch.randn(n, hidden, generator=gen)}
        values["linear_weight"] = torch.randn(k, hidden, generator=gen) / hidden**0.5
        values["linear_bias"] = torch.randn(k, generator=gen)
        element_shape = (n,)
    else:
        values = {"input": torch.randn(*case.shape, generator=gen) * 3}
        element_shape = (case.shape[0], *case.shape[2:])
    if case.soft:
        soft = torch.softmax(torch.randn(*values["input"].shape, generator=gen) * 2, dim=1)
        values["target"] = soft
    else:
        target = torch.randint(0, k, element_shape, generator=gen)
        target.view(-1)[::4] = IGNORE
        values["target"] = target
    if case.fp == "sample_costs":
        values["sample_costs"] = draw(*element_shape[:1], k, *element_shape[1:]) * 5
    else:
        values["fn_weight"] = draw(k) + 0.5
        if case.fp == "vector":
            values["fp_weight"] = draw(k) * 2
        elif case.fp == "matrix":
            values["fp_weight"] = (draw(k, k) * 2).fill_diagonal_(0)
    if case.sample_weight:
        values["sample_weight"] = draw(*element_shape) + 0.25
    dtype = getattr(torch, case.dtype)
    values["input"] = values["input"].to(dtype)
    return {name: value.to(device) for name, value in values.items()}


def _call(case: Case, values: dict, backend: str, float64: bool) -> tuple[torch.Tensor, list]:
    """Loss and gradients (w.r.t. the input, and the linear layer's weight and bias)."""
    import rwwce

    def convert(name, value):
        if float64 and value.is_floating_point():
            value = value.double()
        if name in ("input", "linear_weight", "linear_bias"):
            value = value.detach().clone().requires_grad_()
        return value

    args = {name: convert(name, value) for name, value in values.items()}
    options = dict(reduction=case.reduction, backend=backend)
    if not case.soft:
        options.update(ignore_index=IGNORE)
    if case.smoothing:
        options.update(label_smoothing=case.smoothing)
    if case.linear:
        loss_fn = rwwce.linear_real_world_weight_cross_entropy
        leaves = [args["input"], args["linear_weight"], args["linear_bias"]]
    else:
        loss_fn = rwwce.real_world_weight_cross_entropy
        leaves = [args["input"]]
    loss = loss_fn(**args, **options)
    # multiples of 1/8 in [0.5, 1.5): exact in every dtype, so both backends get the same factors
    gen = torch.Generator().manual_seed(7)
    upstream = (torch.randint(4, 12, loss.shape, generator=gen) / 8).to(loss)
    grads = torch.autograd.grad(loss, leaves, upstream, retain_graph=case.retain_graph)
    if case.retain_graph:  # a second backward through the same graph: the same gradient
        again = torch.autograd.grad(loss, leaves, upstream)
        if not all(torch.equal(a, b) for a, b in zip(grads, again, strict=True)):
            raise AssertionError("a second backward through the retained graph differs")
    with torch.no_grad():  # the forward alone: no gradient buffer
        args_no_grad = {
            k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in args.items()
        }
        again = loss_fn(**args_no_grad, **options)
    if backend == "triton" and not torch.equal(again, loss.detach()):
        raise AssertionError("the no-grad forward differs from the forward with a gradient")
    return loss.detach(), [g.detach() for g in grads]


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64 (inf when ``got`` holds NaN or inf)."""
    got, ref = got.double(), ref.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


def check(
    case: Case, device: torch.device, reference: bool = True
) -> list[tuple[str, float, float]]:
    """(what, relative error, tolerance) of the loss and each gradient against float64; only
    finiteness (error 0 or inf) without ``reference``."""
    values = _inputs(case, device)
    loss, grads = _call(case, values, "triton", float64=False)
    if reference:
        ref_loss, ref_grads = _call(case, values, "torch", float64=True)
    else:
        ref_loss, ref_grads = loss, grads
    names = ["grad input", "grad weight", "grad bias"] if case.linear else ["grad"]
    # float32 matrix products may run in TF32 on the GPU (about 3e-4)
    floor = 1e-3 if case.linear else 0.0
    out = [("loss", relative_error(loss, ref_loss), max(floor, TOLERANCE[loss.dtype]))]
    for name, got, ref in zip(names, grads, ref_grads, strict=True):
        out.append((name, relative_error(got, ref), max(floor, TOLERANCE[got.dtype])))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", default="cuda", help="cuda (default), or cpu with TRITON_INTERPRET=1"
    )
    parser.add_argument("--only", metavar="REGEX", help="run the cases whose name matches")
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the float64 comparison (under the sanitizer, after a plain run compared)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import rwwce

    params = inspect.signature(rwwce.real_world_weight_cross_entropy).parameters
    with_sample_costs = "sample_costs" in params
    with_linear = hasattr(rwwce, "linear_real_world_weight_cross_entropy")
    cases = all_cases(with_sample_costs, with_linear)
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.name)]
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    if not with_sample_costs:
        print("note: the loss has no sample_costs argument yet; its variants are not run")
    if not with_linear:
        print("note: rwwce has no linear_real_world_weight_cross_entropy yet; not run")

    device = torch.device(args.device)
    if device.type == "cpu":  # the interpreter computes masked-off lanes too: numpy warns
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton")
    try:  # the smallest call: does the Triton backend take this device at all?
        probe = torch.zeros(1, 2, device=device)
        rwwce.real_world_weight_cross_entropy(
            probe, torch.zeros(1, dtype=torch.long, device=device), backend="triton"
        )
    except ValueError as error:
        print(f"the Triton kernel cannot run on {device}: {error}", file=sys.stderr)
        return 2

    failed = 0
    for case in cases:
        try:
            results = check(case, device, not args.no_reference)
        except Exception as error:  # noqa: BLE001 - report every case, then fail
            failed += 1
            first_line = (str(error).splitlines() or [""])[0][:300]
            print(f"FAIL {case.name}: {type(error).__name__}: {first_line}", flush=True)
            continue
        bad = [r for r in results if not r[1] <= r[2]]
        failed += bool(bad)
        summary = "  ".join(f"{what} {err:.1e}" for what, err, _ in results)
        print(f"{'FAIL' if bad else 'ok  '} {case.name}  {summary}", flush=True)
    print(f"{len(cases)} cases, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
