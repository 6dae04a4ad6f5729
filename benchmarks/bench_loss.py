"""Forward+backward time of the RWWCE loss against PyTorch's cross-entropy, eager and compiled;
and (``--memory``) peak extra memory against its baselines.

Time: every case of a shape runs in one process, interleaved round by round, and each case is
reported as the median over rounds of its time divided by the same round's eager
``F.cross_entropy(weight=)``: a machine whose load drifts affects both sides of a ratio alike.
Cases: PyTorch CE eager (the baseline) and compiled (``torch.compile`` around the call, compiled
afresh for each shape); rwwce with ``fp_weight=None``; rwwce with an FP matrix (an FP vector at
K >= 10000), eager and compiled.

Memory: each case runs in a fresh subprocess so that its peak resident memory (``ru_maxrss``) is
its own; reported as extra bytes over the inputs, and in units of one (N, K) buffer. Baselines
there include the paper's formulation (softmax, a clip to [1e-7, 1 - 1e-7], one-hot products).

    python benchmarks/bench_loss.py                  # CPU, 2 threads, the issue's shapes
    python benchmarks/bench_loss.py --quick          # small shapes, a smoke run
    python benchmarks/bench_loss.py --memory         # peak memory, one process per case

Writes JSON to ``benchmarks/results/bench_loss_<device>.json`` (``bench_loss_memory_<device>.json``
with ``--memory``) and prints a markdown table.
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
TIME_SHAPES = [(8192, 1000), (262144, 10), (1024, 32000)]
QUICK_TIME_SHAPES = [(512, 100), (4096, 10), (64, 20000)]
TIME_CASES = ["ce_eager", "ce_compiled", "rwwce_fp_none", "rwwce_fp", "rwwce_fp_compiled"]
FP_VECTOR_FROM = 10000  # an FP matrix of K x K float32 above this is 400 MB: use the vector form


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


def time_losses(num_classes: int):
    """The timed cases of one K: name -> loss(x, t)."""
    import torch
    import torch.nn.functional as F

    import rwwce

    gen = torch.Generator().manual_seed(0)
    fn = torch.rand(num_classes, generator=gen) + 0.5
    if num_classes >= FP_VECTOR_FROM:
        fp = torch.rand(num_classes, generator=gen)
    else:
        fp = torch.rand(num_classes, num_classes, generator=gen).fill_diagonal_(0)

    def ce(x, t):
        return F.cross_entropy(x, t, weight=fn)

    def rwwce_fp(x, t):
        return rwwce.real_world_weight_cross_entropy(x, t, fn, fp, validate=False)

    def rwwce_fp_none(x, t):
        return rwwce.real_world_weight_cross_entropy(
            x, t, fn, reduction="weighted_mean", validate=False
        )

    return {
        "ce_eager": ce,
        "ce_compiled": torch.compile(ce),
        "rwwce_fp_none": rwwce_fp_none,
        "rwwce_fp": rwwce_fp,
        "rwwce_fp_compiled": torch.compile(rwwce_fp),
    }


def time_shape(rows: int, num_classes: int, rounds: int) -> list[dict]:
    """Median over interleaved rounds of each case's fwd+bwd time and of its ratio to the same
    round's eager ``F.cross_entropy(weight=)``."""
    import torch

    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(rows, num_classes, generator=gen) * 3).requires_grad_()
    t = torch.randint(0, num_classes, (rows,), generator=gen)
    # Each shape compiles afresh, as in a training run with one model: otherwise the second shape
    # recompiles with the class count symbolic too, which no such run sees.
    torch._dynamo.reset()
    losses = time_losses(num_classes)

    def step(loss_fn) -> float:
        start = time.perf_counter()
        loss_fn(x, t).backward()
        elapsed = time.perf_counter() - start
        x.grad = None
        return elapsed

    for loss_fn in losses.values():  # compiles, and loads every code path
        for _ in range(2):
            step(loss_fn)
    times: dict[str, list[float]] = {name: [] for name in losses}
    for _ in range(rounds):
        for name, loss_fn in losses.items():
            times[name].append(step(loss_fn))
    baseline = times["ce_eager"]
    return [
        {
            "case": name,
            "rows": rows,
            "classes": num_classes,
            "fp": "vector" if num_classes >= FP_VECTOR_FROM else "matrix",
            "dtype": "float32",
            "forward_backward_ms": 1e3 * statistics.median(values),
            "vs_ce_eager": statistics.median(v / b for v, b in zip(values, baseline, strict=True)),
            "rounds": rounds,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
        for name, values in times.items()
    ]


def time_table(results: list[dict]) -> str:
    lines = [
        "| shape | case | fwd+bwd ms (median) | vs eager CE(weight=) (median of per-round ratios) |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']} x {r['classes']} | {r['case']}"
            f"{' (FP ' + r['fp'] + ')' if r['case'].startswith('rwwce_fp') and r['case'] != 'rwwce_fp_none' else ''}"
            f" | {r['forward_backward_ms']:.1f} | {r['vs_ce_eager']:.2f}x |"
        )
    return "\n".join(lines)


def _machine() -> dict:
    return {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
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
    parser.add_argument("--memory", action="store_true", help="peak memory, one process per case")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 15)")
    parser.add_argument("--case", nargs=4, metavar=("CASE", "ROWS", "K", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case:  # child process
        case, rows, classes, repeats = args.case
        print(json.dumps(run_case(case, int(rows), int(classes), args.device, int(repeats))))
        return 0

    if not args.memory:
        import torch

        torch.set_num_threads(args.threads)
        rounds = args.rounds or (3 if args.quick else 15)
        load_before = os.getloadavg()
        results = []
        for rows, classes in QUICK_TIME_SHAPES if args.quick else TIME_SHAPES:
            results.extend(time_shape(rows, classes, rounds))
        machine = {**_machine(), "load_average_before": load_before}
        out = args.out or Path(__file__).parent / "results" / f"bench_loss_{args.device}.json"
        _write(out, {"machine": machine, "results": results})
        print(time_table(results))
        print(f"\nload average (1, 5, 15 min) before {load_before}, after {os.getloadavg()}")
        print(f"wrote {out}")
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

    machine = _machine()
    if args.device == "cuda":
        import torch

        machine["gpu"] = torch.cuda.get_device_name()
    out = args.out or Path(__file__).parent / "results" / f"bench_loss_memory_{args.device}.json"
    _write(out, {"machine": machine, "results": results})
    print(table(results))
    print(f"\nwrote {out}")
    return 0


def _write(out: Path, data: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(data, indent=2))
    temporary.replace(out)


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
