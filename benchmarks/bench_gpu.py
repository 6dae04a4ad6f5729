"""Speed and memory of the RWWCE loss on one CUDA GPU, through the public function, against its
baselines.

For every shape it times the forward alone and forward+backward (``triton.testing.do_bench``,
median in ms) of:

* ``rwwce.real_world_weight_cross_entropy(..., backend="triton")`` with ``fp_weight`` None /
  vector / matrix (matrix only for K <= 1000), ``reduction="mean"``,
* PyTorch ``F.cross_entropy`` and weighted cross-entropy (``weight=fn``),
* Liger-Kernel's cross-entropy (plain and weighted) when ``liger_kernel`` is importable,
* the PyTorch backend of rwwce (``backend="torch"``, FP vector), eagerly,

and, in two more passes over the shapes while the time budget lasts (compilation takes most of
it), ``F.cross_entropy`` and then rwwce's PyTorch backend under ``torch.compile``.

Each time is also given as a ratio to a device copy of the logits measured in the same run (a
memory-bound floor: one read and one write of the logits). ``peak_extra_bytes`` is the peak
memory of one forward+backward over what was allocated before it (the inputs), from
``torch.cuda.max_memory_allocated``; ``peak_extra_gradients`` is the same in units of one
(N, K) buffer of the logits' dtype (the gradient alone is 1.0).

Writes JSON rows (``library``, ``variant``, ``rows``, ``classes``, ``dtype``, times, ratios,
memory, GPU name, torch / triton / CUDA versions) after every shape, so a run stopped early
keeps what it measured, and prints a markdown table::

    python benchmarks/bench_gpu.py                          # the full set of shapes
    python benchmarks/bench_gpu.py --quick                  # a small smoke run
    python benchmarks/bench_gpu.py --output DIR_OR_FILE --time-budget 150 --no-compile

The default output is ``benchmarks/results/bench_gpu_<gpu>.json`` (``<gpu>``: the GPU's name in
lower case, e.g. ``nvidia-h200``); a directory as ``--output`` gets that file name inside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

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
# Three passes over the shapes, the most important first, so that a time budget cuts the
# least: rwwce and the eager baselines; compiled PyTorch CE; compiled rwwce (PyTorch backend).
PASSES = ("eager", "compiled CE", "compiled rwwce")
# The FP matrix is K x K: measured up to this many classes.
MATRIX_MAX_CLASSES = 1000
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    parser.add_argument(
        "--output",
        default=str(RESULTS_DIR),
        help="JSON file to write, or a directory to write bench_gpu_<gpu>.json into "
        "(default: benchmarks/results/)",
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile'd baselines"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop starting new measurements after this many seconds (their rows then say "
        "why they are missing); default: no limit",
    )
    return parser


def gpu_slug(name: str) -> str:
    """A GPU's name as a file-name part: 'NVIDIA H200' -> 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def output_path(output: str | Path, gpu_name: str) -> Path:
    """``output`` itself, or ``output/bench_gpu_<gpu>.json`` when it is a directory."""
    path = Path(output)
    if path.is_dir() or str(output).endswith(("/", "\\")):
        return path / f"bench_gpu_{gpu_slug(gpu_name)}.json"
    return path


def make_row(
    meta: dict,
    *,
    library: str,
    variant: str,
    rows: int,
    classes: int,
    dtype: str,
    copy_ms: float,
    fwd_ms: float | None = None,
    fwd_bwd_ms: float | None = None,
    peak_extra_bytes: int | None = None,
    error: str | None = None,
) -> dict:
    """One JSON row: the measurement, its ratios to the copy floor and the machine's ``meta``.

    A row with ``error`` (out of memory, a baseline that failed, the time budget spent) keeps
    the shape and the copy time but no time or memory of its own.
    """
    row = {
        "library": library,
        "variant": variant,
        "rows": int(rows),
        "classes": int(classes),
        "dtype": dtype,
        "copy_ms": float(copy_ms),
    }
    if error is not None:
        row["error"] = error
    else:
        element_size = torch.empty((), dtype=getattr(torch, dtype)).element_size()
        row.update(
            fwd_ms=float(fwd_ms),
            fwd_bwd_ms=float(fwd_bwd_ms),
            fwd_ratio_to_copy=float(fwd_ms) / copy_ms,
            fwd_bwd_ratio_to_copy=float(fwd_bwd_ms) / copy_ms,
            peak_extra_bytes=int(peak_extra_bytes),
            peak_extra_gradients=int(peak_extra_bytes) / (rows * classes * element_size),
        )
    return {**row, **meta}


def machine_meta() -> dict:
    import triton

    return {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def _bench(fn: Callable[[], object], grad_to_none=None) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, grad_to_none=grad_to_none, return_mode="median"))


def _peak_extra_bytes(step: Callable[[], object]) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - before)


def _fresh_compile_cache() -> None:
    """Empty torch.compile's caches, so that each shape gets its own static graphs instead of
    the recompile limit's eager fallback (``torch._dynamo.reset``, where this torch has it)."""
    reset = getattr(getattr(torch, "_dynamo", None), "reset", None)
    if reset is not None:
        reset()


def _cases(
    dtype: torch.dtype, fn: torch.Tensor, fp_vec: torch.Tensor, fp_mat, group: str
) -> list[tuple[str, str, Callable]]:
    """(library, variant, loss(z, target)) triples of one of ``PASSES``."""
    import rwwce

    rwce = rwwce.real_world_weight_cross_entropy
    fn_in_dtype = fn.to(dtype)  # F.cross_entropy wants the weight in the logits' dtype

    def rwwce_torch(z, t):
        return rwce(z, t, fn, fp_vec, backend="torch")

    if group != "eager":
        _fresh_compile_cache()
        # dynamic=False: static shapes, the compiler's best case (an option of every torch 2.x)
        if group == "compiled CE":
            ce = torch.compile(lambda z, t: F.cross_entropy(z, t), dynamic=False)
            return [("torch", "compiled F.cross_entropy", ce)]
        return [("rwwce-torch", "compiled, fp=vector", torch.compile(rwwce_torch, dynamic=False))]
    cases = []
    for name, fp in [("fp=None", None), ("fp=vector", fp_vec), ("fp=matrix", fp_mat)]:
        if fp is None and name == "fp=matrix":
            continue
        cases.append(
            ("rwwce-triton", name, lambda z, t, fp=fp: rwce(z, t, fn, fp, backend="triton"))
        )
    cases.append(("torch", "F.cross_entropy", lambda z, t: F.cross_entropy(z, t)))
    cases.append(("torch", "weighted CE", lambda z, t: F.cross_entropy(z, t, weight=fn_in_dtype)))
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except ImportError:
        pass
    else:
        # Liger writes its gradient into the logits' storage (run_shape restores them).
        cases.append(("liger-kernel", "cross_entropy", LigerCrossEntropyLoss()))
        try:
            cases.append(("liger-kernel", "weighted CE", LigerCrossEntropyLoss(weight=fn)))
        except TypeError:  # a Liger without class weights
            pass
    cases.append(("rwwce-torch", "eager, fp=vector", rwwce_torch))
    return cases


def run_shape(
    num_rows: int,
    num_classes: int,
    dtype_name: str,
    meta: dict,
    *,
    group: str = "eager",
    deadline: float | None = None,
    device: str = "cuda",
) -> list[dict]:
    """Rows for one shape and one of ``PASSES``."""
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    logits = torch.randn(num_rows, num_classes, device=device, dtype=dtype) * 3
    target = torch.randint(0, num_classes, (num_rows,), device=device)
    fn = torch.rand(num_classes, device=device) + 0.5
    fp_vec = torch.rand(num_classes, device=device)
    fp_mat = None
    if num_classes <= MATRIX_MAX_CLASSES:
        fp_mat = torch.rand(num_classes, num_classes, device=device)
        fp_mat.fill_diagonal_(0)

    copy_dst = torch.empty_like(logits)
    copy_ms = _bench(lambda: copy_dst.copy_(logits))
    copy_dst = None  # free it before the measurements
    shape = dict(rows=num_rows, classes=num_classes, dtype=dtype_name, copy_ms=copy_ms)

    rows = []
    z = logits.clone().requires_grad_()
    for library, variant, loss_fn in _cases(dtype, fn, fp_vec, fp_mat, group):
        if deadline is not None and time.monotonic() > deadline:
            spent = "time budget spent"
            rows.append(make_row(meta, library=library, variant=variant, error=spent, **shape))
            continue
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
            fwd_ms = _bench(forward)
            fwd_bwd_ms = _bench(step, grad_to_none=[z])
            z.grad = None
            peak = _peak_extra_bytes(step)
            row = make_row(
                meta,
                library=library,
                variant=variant,
                fwd_ms=fwd_ms,
                fwd_bwd_ms=fwd_bwd_ms,
                peak_extra_bytes=peak,
                **shape,
            )
        except torch.cuda.OutOfMemoryError:
            row = make_row(meta, library=library, variant=variant, error="out of memory", **shape)
        except Exception as error:  # noqa: BLE001 - a baseline failing must not stop the run
            first_line = (str(error).splitlines() or [""])[0][:200]
            message = f"{type(error).__name__}: {first_line}"
            row = make_row(meta, library=library, variant=variant, error=message, **shape)
        z.grad = None
        torch.cuda.empty_cache()
        with torch.no_grad():
            z.copy_(logits)  # Liger writes its gradient into the logits
        rows.append(row)
        print(f"  {library:13s} {variant:26s} {_cell(row)}", file=sys.stderr, flush=True)
    return rows


def _cell(row: dict) -> str:
    if "error" in row:
        return row["error"]
    return f"{row['fwd_bwd_ms']:.3f} ms = {row['fwd_bwd_ratio_to_copy']:.2f} x copy"


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table (errors in the time column)."""
    lines = [
        "| shape | dtype | library | variant | fwd ms | fwd+bwd ms | fwd+bwd / copy | "
        "peak extra (N x K buffers) |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['rows']} x {r['classes']} | {r['dtype']} | {r['library']} | {r['variant']} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | |")
            continue
        lines.append(
            f"{head} {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | "
            f"{r['fwd_bwd_ratio_to_copy']:.2f} | {r['peak_extra_gradients']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    try:
        import triton  # noqa: F401
    except ImportError:
        print("bench_gpu.py needs triton (pip install 'rwwce[gpu]')", file=sys.stderr)
        return 2
    start = time.monotonic()
    deadline = None if args.time_budget is None else start + args.time_budget
    meta = machine_meta()
    path = output_path(args.output, meta["gpu"])
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    passes = PASSES[:1] if args.no_compile else PASSES
    rows: list[dict] = []
    for group in passes:
        for num_rows, num_classes, dtype_name in shapes:
            print(
                f"# {num_rows} x {num_classes} {dtype_name}, {group} "
                f"({time.monotonic() - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            rows += run_shape(
                num_rows, num_classes, dtype_name, meta, group=group, deadline=deadline
            )
            path.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"GPU: {meta['gpu']}, torch {meta['torch']}, triton {meta['triton']}")
    print("copy = one device copy of the logits (read + write), same run\n")
    print(markdown(rows))
    print(f"\nwrote {path} ({time.monotonic() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
