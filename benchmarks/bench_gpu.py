"""Speed and memory of the fused RWWCE Triton kernel against its baselines, on one CUDA GPU.

For every shape it times the forward alone and forward+backward (``triton.testing.do_bench``,
median in ms) of:

* ``rwwce-triton`` with ``fp_weight`` None / vector / matrix (matrix only for K <= 1000),
* PyTorch ``F.cross_entropy`` and weighted cross-entropy (``weight=fn``),
* the torch reference backend (``rwwce.kernels.reference.rwwce_loss``, FP vector) under
  ``torch.compile`` and eagerly,
* Liger-Kernel's cross-entropy when ``liger_kernel`` is importable,

each as a ratio to a device copy of the logits measured in the same run (a memory-bound floor:
one read and one write of the logits), and the peak extra memory of one forward+backward
(``torch.cuda.max_memory_allocated`` minus what was allocated before: the inputs).

Writes JSON rows (GPU name, dtype, shape, library, variant, torch/triton versions) and prints a
markdown table::

    python benchmarks/bench_gpu.py                 # the full set of shapes
    python benchmarks/bench_gpu.py --quick         # a small smoke run
    python benchmarks/bench_gpu.py --output out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

FULL_SHAPES = [
    (32768, 1000, "float32"),
    (32768, 1000, "bfloat16"),
    (1048576, 10, "float32"),
    (8192, 32768, "bfloat16"),
    (8192, 131072, "bfloat16"),
]
QUICK_SHAPES = [
    (4096, 1000, "float32"),
    (4096, 1000, "bfloat16"),
    (65536, 10, "float32"),
    (1024, 32768, "bfloat16"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    parser.add_argument("--output", default="bench_gpu.json", help="JSON file to write")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile'd reference"
    )
    return parser


def _bench(fn: Callable[[], object], grad_to_none=None) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, grad_to_none=grad_to_none, return_mode="median"))


def _peak_extra_mib(step: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _cases(num_classes: int, fn: torch.Tensor, fp_vec, fp_mat, row_scale, compile_ref: bool):
    """(library, variant, loss(z, target)) triples."""
    from rwwce.kernels import Problem, reference
    from rwwce.kernels import triton as triton_backend

    cases = []
    for name, fp in [("fp=None", None), ("fp=vector", fp_vec), ("fp=matrix", fp_mat)]:
        if name == "fp=matrix" and fp is None:
            continue
        cases.append(
            (
                "rwwce-triton",
                name,
                lambda z, t, fp=fp: triton_backend.rwwce_loss(Problem(z, t, fn, fp, row_scale)),
            )
        )
    cases.append(("torch", "F.cross_entropy", lambda z, t: F.cross_entropy(z, t)))
    cases.append(
        ("torch", "weighted CE", lambda z, t: F.cross_entropy(z, t, weight=fn.to(z.dtype)))
    )

    def ref(z, t):
        return reference.rwwce_loss(z, t, fn, fp_vec, row_scale, 0.0, True)

    if compile_ref:
        cases.append(("rwwce-torch", "compiled, fp=vector", torch.compile(ref)))
    cases.append(("rwwce-torch", "eager, fp=vector", ref))
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except ImportError:
        pass
    else:
        # Liger writes its gradient into the logits' storage (the benchmark restores them).
        cases.append(("liger-kernel", "cross_entropy", LigerCrossEntropyLoss()))
        try:
            cases.append(("liger-kernel", "weighted CE", LigerCrossEntropyLoss(weight=fn)))
        except TypeError:  # older Liger without class weights
            pass
    return cases


def run_shape(
    num_rows: int, num_classes: int, dtype_name: str, compile_ref: bool, device: str = "cuda"
) -> list[dict]:
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    logits = torch.randn(num_rows, num_classes, device=device, dtype=dtype)
    target = torch.randint(0, num_classes, (num_rows,), device=device)
    fn = torch.rand(num_classes, device=device) + 0.5
    fp_vec = torch.rand(num_classes, device=device)
    fp_mat = None
    if num_classes <= 1000:
        fp_mat = torch.rand(num_classes, num_classes, device=device)
        fp_mat.fill_diagonal_(0)
    row_scale = torch.full((num_rows,), 1.0 / num_rows, device=device)

    copy_dst = torch.empty_like(logits)
    copy_ms = _bench(lambda: copy_dst.copy_(logits))
    copy_dst = None

    rows = []
    z = logits.clone().requires_grad_()
    for library, variant, loss_fn in _cases(
        num_classes, fn, fp_vec, fp_mat, row_scale, compile_ref
    ):
        row = {"library": library, "variant": variant}
        try:

            def forward(loss_fn=loss_fn):
                with torch.no_grad():
                    return loss_fn(z, target)

            def step(loss_fn=loss_fn):
                loss_fn(z, target).backward()

            for _ in range(2):  # warm up: compilation (with and without grad), caches
                forward()
                step()
            z.grad = None
            row["fwd_ms"] = _bench(forward)
            row["fwd_bwd_ms"] = _bench(step, grad_to_none=[z])
            z.grad = None
            row["peak_extra_mib"] = _peak_extra_mib(step)
            z.grad = None
            row["fwd_bwd_vs_copy"] = row["fwd_bwd_ms"] / copy_ms
            row["fwd_vs_copy"] = row["fwd_ms"] / copy_ms
        except torch.cuda.OutOfMemoryError:
            row["error"] = "out of memory"
        except Exception as error:  # noqa: BLE001 - a baseline failing must not stop the run
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        z.grad = None
        torch.cuda.empty_cache()
        with torch.no_grad():
            z.copy_(logits)  # Liger writes its gradient into the logits
        row["copy_ms"] = copy_ms
        rows.append(row)
    return rows


def _markdown(rows: list[dict]) -> str:
    head = (
        "| shape | dtype | library | variant | fwd ms | fwd+bwd ms | fwd+bwd / copy | "
        "peak extra MiB |\n|---|---|---|---|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        if "error" in r:
            lines.append(
                f"| {shape} | {r['dtype']} | {r['library']} | {r['variant']} | {r['error']} | | | |"
            )
            continue
        lines.append(
            f"| {shape} | {r['dtype']} | {r['library']} | {r['variant']} | {r['fwd_ms']:.3f} | "
            f"{r['fwd_bwd_ms']:.3f} | {r['fwd_bwd_vs_copy']:.2f} | {r['peak_extra_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    try:
        import triton
    except ImportError:
        print("bench_gpu.py needs triton (pip install 'rwwce[gpu]')", file=sys.stderr)
        return 2
    meta = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    rows = []
    for num_rows, num_classes, dtype_name in QUICK_SHAPES if args.quick else FULL_SHAPES:
        print(f"# {num_rows}x{num_classes} {dtype_name}", file=sys.stderr, flush=True)
        for row in run_shape(num_rows, num_classes, dtype_name, not args.no_compile):
            rows.append({**meta, "shape": [num_rows, num_classes], "dtype": dtype_name, **row})
    with open(args.output, "w") as handle:
        json.dump(rows, handle, indent=1)
    print(f"GPU: {meta['gpu']}, torch {meta['torch']}, triton {meta['triton']}")
    print("copy = one device copy of the logits (read + write), same run\n")
    print(_markdown(rows))
    print(f"\nwrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
