"""What the default data checks cost: forward+backward with ``validate=None`` (the default, which
checks CPU tensors on every call) as a ratio to ``validate=False``.

    python benchmarks/bench_checks.py            # 4096 x 1000 float32, FP None / vector / matrix
    python benchmarks/bench_checks.py --quick    # a smoke run

Each (case, validate) pair is timed as the median of ``--repeat`` interleaved rounds, so a machine
whose load drifts affects both sides alike. Writes ``benchmarks/results/bench_checks_cpu.json``
and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import rwwce

CASES = ("fp_none", "fp_vector", "fp_matrix")


def _weights(case: str, num_classes: int):
    gen = torch.Generator().manual_seed(0)
    fn = torch.rand(num_classes, generator=gen) + 0.5
    if case == "fp_none":
        return fn, None
    if case == "fp_vector":
        return fn, torch.rand(num_classes, generator=gen)
    fp = torch.rand(num_classes, num_classes, generator=gen)
    return fn, fp.fill_diagonal_(0)


def _step(x, target, fn, fp, validate) -> None:
    reduction = "weighted_mean" if fp is None else "mean"
    loss = rwwce.real_world_weight_cross_entropy(
        x, target, fn, fp, reduction=reduction, validate=validate, backend="torch"
    )
    loss.backward()
    x.grad = None


def measure(rows: int, num_classes: int, repeat: int) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(rows, num_classes, generator=gen).requires_grad_()
    target = torch.randint(0, num_classes, (rows,), generator=gen)
    results = []
    for case in CASES:
        fn, fp = _weights(case, num_classes)
        times: dict[str, list[float]] = {"checked": [], "unchecked": []}
        for _ in range(3):  # warm-up
            _step(x, target, fn, fp, None)
            _step(x, target, fn, fp, False)
        for _ in range(repeat):
            for label, validate in (("checked", None), ("unchecked", False)):
                start = time.perf_counter()
                _step(x, target, fn, fp, validate)
                times[label].append(time.perf_counter() - start)
        checked = statistics.median(times["checked"]) * 1e3
        unchecked = statistics.median(times["unchecked"]) * 1e3
        results.append(
            {
                "case": case,
                "rows": rows,
                "classes": num_classes,
                "dtype": "float32",
                "device": "cpu",
                "default_checks_ms": round(checked, 3),
                "validate_false_ms": round(unchecked, 3),
                "ratio": round(checked / unchecked, 3),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.machine(),
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shape, few repeats")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "bench_checks_cpu.json")
    )
    args = parser.parse_args()
    rows, classes, repeat = (512, 100, 5) if args.quick else (4096, 1000, args.repeat)
    results = measure(rows, classes, repeat)
    print("| case | default checks ms | validate=False ms | ratio |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['case']} | {r['default_checks_ms']:.2f} | {r['validate_false_ms']:.2f} | {r['ratio']:.2f}x |")
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
