"""Forward+backward time and peak extra memory of the RWWCE loss against its baselines.

Baselines live here: PyTorch's ``F.cross_entropy(weight=)`` and the paper's formulation (softmax,
a clip to [1e-7, 1 - 1e-7], one-hot matrix products). Each case runs in a fresh subprocess so that
its peak resident memory (``ru_maxrss``) is its own; memory is reported as extra bytes over the
inputs, and in units of one (N, K) buffer of the input's dtype.

    python benchmarks/bench_loss.py                  # CPU, the issue's shapes
    python benchmarks/bench_loss.py --device cuda    # also on a GPU (peak from the allocator)
    python benchmarks/bench_loss.py --quick          # small shapes, a smoke run

Writes JSON (one row per case: device, dtype, shape, case, times, memory, versions) to
``benchmarks/results/bench_loss_<device>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = ["torch_ce_weighted", "rwwce_fp_none", "rwwce_fp_vector", "rwwce_fp_matrix", "paper_fp_matrix"]
SHAPES = [(8192, 1000), (262144, 10)]
QUICK_SHAPES = [(1024, 100), (16384, 10)]


def make_loss(case: str, num_classes: int, device):
    import torch
    import torch.nn.functional as F

    import rwwce

    gen = torch.Generator().manual_seed(0)
    fn = (torch.rand(num_classes, generator=gen) + 0.5).to(device)
    fp_vector = torch.rand(num_classes, generator=gen).to(device)
    fp_matrix = torch.rand(num_classes, num_classes, generator=gen)
    fp_matrix.fill_diagonal_(0)
    fp_matrix = fp_matrix.to(device)
    if case == "torch_ce_weighted":
        return lambda x, t: F.cross_entropy(x, t, weight=fn)
    if case.startswith("rwwce"):
        fp = {"rwwce_fp_none": None, "rwwce_fp_vector": fp_vector, "rwwce_fp_matrix": fp_matrix}[case]
        return lambda x, t: rwwce.real_world_weight_cross_entropy(
            x, t, fn, fp, reduction="weighted_mean" if fp is None else "mean", validate=False
        )
    if case == "paper_fp_matrix":
        fn_diag = torch.diag(fn)

        def paper(x, t):
            p = torch.softmax(x, dim=1).clamp(1e-7, 1 - 1e-7)
            onehot = F.one_hot(t, num_classes).to(x.dtype)
            loss = -(onehot * torch.log(p)) @ fn_diag - (onehot @ fp_matrix) * torch.log(1 - p)
            return loss.sum(dim=1).mean()

        return paper
    raise ValueError(case)


def run_case(case: str, rows: int, num_classes: int, device: str, repeats: int) -> dict:
    """Runs inside its own process; returns times and peak extra memory."""
    import torch

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(rows, num_classes, generator=gen) * 3).to(dev).requires_grad_()
    t = torch.randint(0, num_classes, (rows,), generator=gen).to(dev)
    loss_fn = make_loss(case, num_classes, dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # Load every code path once on a tiny input, so one-time allocations do not count as peak.
    warm = x[:2].detach().clone().requires_grad_()
    loss_fn(warm, t[:2]).backward()
    sync()
    rss_before = _current_rss()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    loss = loss_fn(x, t)
    loss.backward()
    sync()
    if dev.type == "cuda":
        peak_extra = torch.cuda.max_memory_allocated() - base
    else:
        peak_extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    x.grad = None

    forward, total = [], []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        loss = loss_fn(x, t)
        sync()
        middle = time.perf_counter()
        loss.backward()
        sync()
        end = time.perf_counter()
        x.grad = None
        forward.append(middle - start)
        total.append(end - start)
    buffer = rows * num_classes * x.element_size()
    return {
        "case": case,
        "rows": rows,
        "classes": num_classes,
        "device": device,
        "dtype": str(x.dtype).replace("torch.", ""),
        "forward_ms": 1e3 * statistics.median(forward),
        "forward_backward_ms": 1e3 * statistics.median(total),
        "peak_extra_bytes": int(peak_extra),
        "peak_extra_buffers": peak_extra / buffer,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    parser.add_argument("--case", nargs=4, metavar=("CASE", "ROWS", "K", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case:  # child process
        case, rows, classes, repeats = args.case
        print(json.dumps(run_case(case, int(rows), int(classes), args.device, int(repeats))))
        return 0

    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeats = args.repeats or (3 if args.quick else 10)
    results = []
    for rows, classes in shapes:
        for case in CASES:
            command = [sys.executable, __file__, "--device", args.device, "--case", case, str(rows), str(classes), str(repeats)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{case} {rows}x{classes} failed:\n{done.stderr}", file=sys.stderr)
                return 1
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))

    machine = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    if args.device == "cuda":
        import torch

        machine["gpu"] = torch.cuda.get_device_name()
    out = args.out or Path(__file__).parent / "results" / f"bench_loss_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(".json.tmp")
    temporary.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    temporary.replace(out)
    print(table(results))
    print(f"\nwrote {out}")
    return 0


def table(results: list[dict]) -> str:
    lines = [
        "| shape | case | forward ms | fwd+bwd ms | vs CE(weight=) | peak extra (N x K buffers) |",
        "|---|---|---|---|---|---|",
    ]
    baseline = {(r["rows"], r["classes"]): r["forward_backward_ms"] for r in results if r["case"] == "torch_ce_weighted"}
    for r in results:
        ratio = r["forward_backward_ms"] / baseline[(r["rows"], r["classes"])]
        lines.append(
            f"| {r['rows']} x {r['classes']} {r['dtype']} | {r['case']} | {r['forward_ms']:.1f} | "
            f"{r['forward_backward_ms']:.1f} | {ratio:.2f}x | {r['peak_extra_buffers']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
