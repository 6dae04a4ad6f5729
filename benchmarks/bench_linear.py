"""Fused linear + loss: forward+backward time and peak extra memory against the materialised path.

Cases, all on hidden states x (N, H) and a classifier weight W (K, H), gradients to both:

* ``materialised_ce``: ``F.cross_entropy(F.linear(x, W), t)``, the baseline (logits and their
  gradient held whole);
* ``materialised_rwwce_fp_vector``: ``real_world_weight_cross_entropy(F.linear(x, W), t, fp)``;
* ``fused_rwwce_fp_vector``: ``linear_real_world_weight_cross_entropy(x, W, t, fp_weight=fp)``;
* ``fused_rwwce_fp_none``: the same without an FP term (plain cross-entropy);
* ``torch_chunked_ce``: PyTorch's ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())``.

Memory: each case runs once in a fresh process; its peak resident memory (``ru_maxrss``) minus the
resident memory before the call is its peak extra memory (the gradients of x and W included, as
in training). Time: one process runs every case in interleaved rounds (the machine may be shared:
a ratio within a round is robust to load that drifts between rounds); the table shows medians.

    python benchmarks/bench_linear.py               # CPU, N=8192, H=512, K=32768, float32
    python benchmarks/bench_linear.py --quick       # small shapes, a smoke run
    python benchmarks/bench_linear.py --device cuda # peak memory from the CUDA allocator

Writes ``benchmarks/results/bench_linear_<device>.json`` and prints a markdown table.
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

CASES = [
    "materialised_ce",
    "materialised_rwwce_fp_vector",
    "fused_rwwce_fp_vector",
    "fused_rwwce_fp_none",
    "torch_chunked_ce",
]
SHAPE = (8192, 512, 32768)
QUICK_SHAPE = (1024, 128, 4096)


def make_loss(case: str, num_classes: int, device):
    """loss(x, W, t) for a case; the FP vector penalises 1% of the classes."""
    import torch
    import torch.nn.functional as F

    import rwwce

    gen = torch.Generator().manual_seed(0)
    fp = torch.zeros(num_classes)
    fp[torch.randperm(num_classes, generator=gen)[: max(1, num_classes // 100)]] = 5.0
    fp = fp.to(device)
    if case == "materialised_ce":
        return lambda x, w, t: F.cross_entropy(F.linear(x, w), t)
    if case == "materialised_rwwce_fp_vector":
        return lambda x, w, t: rwwce.real_world_weight_cross_entropy(
            F.linear(x, w), t, None, fp, validate=False
        )
    if case == "fused_rwwce_fp_vector":
        return lambda x, w, t: rwwce.linear_real_world_weight_cross_entropy(
            x, w, t, None, fp, validate=False
        )
    if case == "fused_rwwce_fp_none":
        return lambda x, w, t: rwwce.linear_real_world_weight_cross_entropy(x, w, t, validate=False)
    if case == "torch_chunked_ce":
        options = torch.nn.LinearCrossEntropyOptions()
        return lambda x, w, t: F.linear_cross_entropy(x, w, t, options=options)
    raise ValueError(f"unknown case {case!r}")


def make_inputs(rows: int, hidden: int, num_classes: int, device):
    import torch

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(rows, hidden, generator=gen).to(device).requires_grad_()
    w = (torch.randn(num_classes, hidden, generator=gen) / hidden**0.5).to(device).requires_grad_()
    t = torch.randint(0, num_classes, (rows,), generator=gen).to(device)
    return x, w, t


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _warm_up(case: str, hidden: int, device) -> None:
    """Every code path once on a tiny problem, so that one-time allocations are not the peak."""
    x, w, t = make_inputs(16, hidden, 64, device)
    make_loss(case, 64, device)(x, w, t).backward()
    _sync(device)


def measure_memory(case: str, rows: int, hidden: int, num_classes: int, device_name: str) -> dict:
    """Runs in a fresh process: peak extra memory of one forward+backward."""
    import torch

    device = torch.device(device_name)
    _warm_up(case, hidden, device)
    x, w, t = make_inputs(rows, hidden, num_classes, device)
    loss_fn = make_loss(case, num_classes, device)
    rss_before = _current_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    loss_fn(x, w, t).backward()
    _sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return {"case": case, "peak_extra_bytes": int(peak)}


def measure_time(rows: int, hidden: int, num_classes: int, device_name: str, rounds: int) -> dict:
    """Interleaved rounds: every case once per round; seconds per case per round."""
    import torch

    device = torch.device(device_name)
    x, w, t = make_inputs(rows, hidden, num_classes, device)
    losses = {case: make_loss(case, num_classes, device) for case in CASES}
    for case in CASES:
        _warm_up(case, hidden, device)
    seconds = {case: [] for case in CASES}
    for _ in range(rounds):
        for case in CASES:
            _sync(device)
            start = time.perf_counter()
            losses[case](x, w, t).backward()
            _sync(device)
            seconds[case].append(time.perf_counter() - start)
            x.grad = w.grad = None
    return seconds


def _current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _machine(device: str, threads: int | None) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    machine = {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    return machine


def _child(arguments: list[str]) -> dict:
    command = [sys.executable, __file__, *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small shapes, a smoke run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per process (default: torch's choice; 1 on a machine shared with "
        "other work, where waiting threads would measure the other work)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    parser.add_argument("--memory-case", nargs=4, help=argparse.SUPPRESS)  # CASE N H K
    parser.add_argument("--time-cases", nargs=4, type=int, help=argparse.SUPPRESS)  # N H K ROUNDS
    args = parser.parse_args(argv)

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.memory_case:  # child process
        case, *shape = args.memory_case
        print(json.dumps(measure_memory(case, *map(int, shape), args.device)))
        return 0
    if args.time_cases:  # child process
        print(json.dumps(measure_time(*args.time_cases[:3], args.device, args.time_cases[3])))
        return 0

    rows, hidden, num_classes = QUICK_SHAPE if args.quick else SHAPE
    shape = [str(rows), str(hidden), str(num_classes)]
    common = ["--device", args.device]
    if args.threads is not None:
        common += ["--threads", str(args.threads)]
    load_before = os.getloadavg()
    try:
        memory = {
            case: _child([*common, "--memory-case", case, *shape])["peak_extra_bytes"]
            for case in CASES
        }
        seconds = _child([*common, "--time-cases", *shape, str(args.rounds)])
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    load_after = os.getloadavg()

    baseline = "materialised_ce"
    results = []
    for case in CASES:
        ratios = [mine / base for mine, base in zip(seconds[case], seconds[baseline], strict=True)]
        ratios_chunked = [
            mine / theirs
            for mine, theirs in zip(seconds[case], seconds["torch_chunked_ce"], strict=True)
        ]
        results.append(
            {
                "case": case,
                "rows": rows,
                "hidden": hidden,
                "classes": num_classes,
                "dtype": "float32",
                "device": args.device,
                "peak_extra_bytes": memory[case],
                "memory_vs_materialised_ce": memory[case] / memory[baseline],
                "memory_vs_torch_chunked": memory[case] / memory["torch_chunked_ce"],
                "forward_backward_s": statistics.median(seconds[case]),
                "seconds_per_round": seconds[case],
                "time_vs_materialised_ce": statistics.median(ratios),
                "time_vs_torch_chunked": statistics.median(ratios_chunked),
            }
        )
    report = {
        "machine": _machine(args.device, args.threads),
        "load_average_1_5_15_min": {"before": load_before, "after": load_after},
        "rounds": args.rounds,
        "results": results,
    }
    out = args.out or Path(__file__).parent / "results" / f"bench_linear_{args.device}.json"
    if args.quick and args.out is None:
        out = out.with_name(out.stem + "_quick.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(report, indent=2))
    temporary.replace(out)
    print(table(report))
    print(f"\nwrote {out}")
    return 0


def table(report: dict) -> str:
    first = report["results"][0]
    load = report["load_average_1_5_15_min"]
    lines = [
        f"N={first['rows']}, H={first['hidden']}, K={first['classes']}, {first['dtype']}, "
        f"{first['device']} ({report['machine']['cpu']}, {report['machine']['torch_threads']} "
        f"threads), forward+backward; load average {load['before'][0]:.1f} before, "
        f"{load['after'][0]:.1f} after; time: median of {report['rounds']} interleaved rounds",
        "",
        "| case | peak extra MiB | vs materialised CE | vs torch chunked | fwd+bwd s "
        "| time vs materialised CE | time vs torch chunked |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['case']} | {r['peak_extra_bytes'] / 2**20:.0f} | "
            f"{r['memory_vs_materialised_ce']:.3f} | {r['memory_vs_torch_chunked']:.2f} | "
            f"{r['forward_backward_s']:.2f} | {r['time_vs_materialised_ce']:.2f}x | "
            f"{r['time_vs_torch_chunked']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
