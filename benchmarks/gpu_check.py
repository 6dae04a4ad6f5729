"""Verify the GPU paths on one CUDA machine in one command: CUDA tests, memory checker, benchmark.

    make gpu-check        # = python benchmarks/gpu_check.py --out gpu-check-results
    python benchmarks/gpu_check.py --out DIR [--stages tests,kernels,sanitizer,bench]

Needs a CUDA GPU, torch and triton, and no network. Four stages, each in its own process with
its own time limit; a stage that fails or runs out of time does not stop the next one, and each
prints its progress as it goes:

1. ``tests``: ``pytest -m cuda`` with ``RWWCE_REQUIRE_CUDA=1`` (JUnit XML; pytest-xdist workers
   when it is installed); it fails when a test fails, errors or skips (no CUDA test may skip on
   a GPU machine), or when none ran.
2. ``kernels``: ``benchmarks/sanitize_kernels.py``, a small forward+backward of every Triton
   kernel variant through the public functions, compared with the PyTorch backend in float64
   (and Triton's compilation cache filled for the next stage).
3. ``sanitizer``: the same variants under ``compute-sanitizer --tool memcheck``, with PyTorch's
   caching allocator off so that each tensor is its own allocation; it fails on any reported
   error.
4. ``bench``: ``benchmarks/bench_gpu.py`` (the public function against a device copy of the
   logits, PyTorch's CE, weighted CE and compiled CE, and Liger-Kernel's CE), with a time budget;
   it fails when a row of the Triton kernel has no measurement.

Writes into DIR (seven files): ``summary.json`` (each stage's status, time and detail; the
machine, with nvidia-smi, versions and pip list), ``tests.log``, ``tests-junit.xml``,
``kernels.log``, ``sanitizer.log``, ``bench.log`` (with the markdown table) and
``bench_gpu_<gpu>.json`` (the rows ``benchmarks/results/`` keeps). Exit status: 0 when every
stage passed, 1 when one did not, 2 when there is no CUDA GPU (or the arguments are wrong).

It installs nothing that is present. Liger-Kernel, when it cannot be imported, is installed from
a wheel in ``--wheels`` (default ``.whl/``, ignored by git) into a temporary folder with
``pip install --no-deps --no-index``; without a wheel its rows are left out, with a note. Fill that
folder on a machine with network access::

    python -m pip download liger-kernel --no-deps --only-binary=:all: -d .whl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("tests", "kernels", "sanitizer", "bench")
# Per-stage limits in seconds: together with the set-up they fit in 8 minutes.
DEFAULT_TIMEOUTS = {"tests": 210, "kernels": 45, "sanitizer": 75, "bench": 140}
NO_GPU_EXIT = 2


@dataclass
class Stage:
    """One step of the check: a command, its time limit, its log file and how to judge it.

    ``judge(returncode, out_dir)`` returns (passed, detail) once the command has ended by itself.
    """

    name: str
    command: list[str]
    timeout_s: float
    log: str
    env: dict[str, str | None] = field(default_factory=dict)  # None: removed
    judge: Callable[[int, Path], tuple[bool, str]] | None = None
    missing: str | None = None  # why the stage cannot run here (a tool not found)


@dataclass
class StageResult:
    name: str
    status: str  # passed | failed | timeout | missing
    seconds: float
    log: str
    detail: str = ""
    returncode: int | None = None


def say(message: str) -> None:
    print(message, flush=True)


def run_stage(stage: Stage, out_dir: Path) -> StageResult:
    """Run one stage: its output goes to the console (as it comes) and to its log file; past
    its time limit its whole process group is stopped. Never raises for the stage's failures."""
    log_path = out_dir / stage.log
    if stage.missing:
        log_path.write_text(stage.missing + "\n")
        say(f"[{stage.name}] cannot run: {stage.missing}")
        return StageResult(stage.name, "missing", 0.0, stage.log, stage.missing)
    say(f"[{stage.name}] {' '.join(stage.command)}  (limit {stage.timeout_s:.0f} s)")
    env = {**os.environ, **stage.env}
    env = {name: value for name, value in env.items() if value is not None}
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {' '.join(stage.command)}\n")
        log.flush()
        try:
            process = subprocess.Popen(
                stage.command,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,  # its own process group, to stop its children too
            )
        except OSError as error:
            detail = f"could not start {stage.command[0]}: {error}"
            log.write(detail + "\n")
            say(f"[{stage.name}] {detail}")
            return StageResult(stage.name, "failed", 0.0, stage.log, detail)

        def copy_output():
            for line in process.stdout:
                log.write(line)
                log.flush()
                sys.stdout.write(line)
                sys.stdout.flush()

        reader = threading.Thread(target=copy_output, daemon=True)
        reader.start()
        try:
            returncode = process.wait(timeout=stage.timeout_s)
        except KeyboardInterrupt:  # the check itself is being stopped: take the stage with it
            _stop_group(process)
            raise
        except subprocess.TimeoutExpired:
            _stop_group(process)
            reader.join(timeout=10)
            seconds = time.monotonic() - start
            detail = f"stopped after {seconds:.0f} s (limit {stage.timeout_s:.0f} s)"
            log.write(f"\n{detail}\n")
            say(f"[{stage.name}] {detail}")
            return StageResult(stage.name, "timeout", seconds, stage.log, detail)
        reader.join(timeout=10)
    seconds = time.monotonic() - start
    passed, detail = (returncode == 0, f"exit status {returncode}")
    if stage.judge is not None:
        try:
            passed, detail = stage.judge(returncode, out_dir)
        except Exception as error:  # noqa: BLE001 - a broken judge is a failed stage, not a crash
            passed, detail = False, f"could not judge the stage: {type(error).__name__}: {error}"
    status = "passed" if passed else "failed"
    say(f"[{stage.name}] {status} in {seconds:.0f} s: {detail}")
    return StageResult(stage.name, status, seconds, stage.log, detail, returncode)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


# --- judges -----------------------------------------------------------------------------------


def junit_counts(path: Path) -> dict:
    """From a JUnit XML file: ``tests`` (how many) and the failed, errored and skipped tests as
    lists of 'name (first line of the reason)' under ``failures``, ``errors``, ``skipped``."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    found: dict = {"tests": 0, "failures": [], "errors": [], "skipped": []}
    for suite in suites:
        for case in suite.iter("testcase"):
            found["tests"] += 1
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            for tag, key in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
                outcome = case.find(tag)
                if outcome is not None:
                    reason = (outcome.get("message") or "").splitlines()[:1]
                    found[key].append(f"{name} ({reason[0][:120]})" if reason else name)
    return found


def judge_tests(junit_name: str) -> Callable[[int, Path], tuple[bool, str]]:
    def judge(returncode: int, out_dir: Path) -> tuple[bool, str]:
        path = out_dir / junit_name
        if not path.exists():
            return False, f"pytest exited with {returncode} and wrote no JUnit XML"
        c = junit_counts(path)
        failed, errors, skipped = c["failures"], c["errors"], c["skipped"]
        passed = c["tests"] - len(failed) - len(errors) - len(skipped)
        detail = (
            f"{passed} passed, {len(failed)} failed, {len(errors)} errors, "
            f"{len(skipped)} skipped (pytest exit status {returncode})"
        )
        for key, names in (("failed", failed), ("errors", errors), ("skipped", skipped)):
            if names:
                more = [f"... {len(names) - 10} more"] if len(names) > 10 else []
                detail += f"\n  {key}: " + "\n    ".join(names[:10] + more)
        ok = returncode == 0 and c["tests"] > 0 and passed == c["tests"]
        return ok, detail

    return judge


def _cases_line(text: str) -> list[str]:
    """sanitize_kernels.py's last line ('N cases, M failed'), if it got that far."""
    lines = [line for line in text.splitlines() if " cases, " in line and line.endswith(" failed")]
    return lines[-1:]


def judge_kernels(log_name: str) -> Callable[[int, Path], tuple[bool, str]]:
    def judge(returncode: int, out_dir: Path) -> tuple[bool, str]:
        text = (out_dir / log_name).read_text(errors="replace")
        failed = [line for line in text.splitlines() if line.startswith("FAIL ")]
        detail = "; ".join(_cases_line(text)) or "no summary line"
        detail += f" (exit status {returncode})" + "".join(f"\n  {line}" for line in failed[:10])
        return returncode == 0 and bool(_cases_line(text)), detail

    return judge


def judge_sanitizer(log_name: str) -> Callable[[int, Path], tuple[bool, str]]:
    def judge(returncode: int, out_dir: Path) -> tuple[bool, str]:
        text = (out_dir / log_name).read_text(errors="replace")
        summaries = [line for line in text.splitlines() if "ERROR SUMMARY:" in line]
        cases = _cases_line(text)
        detail = "; ".join(s.strip("= ") for s in summaries[-1:] + cases) or "no summary"
        errors = summaries[-1].split("ERROR SUMMARY:")[1].strip() if summaries else "?"
        clean = errors.startswith("0 ")  # "0 errors"
        return returncode == 0 and clean, f"{detail} (exit status {returncode})"

    return judge


def judge_bench(out_dir_glob: str) -> Callable[[int, Path], tuple[bool, str]]:
    def judge(returncode: int, out_dir: Path) -> tuple[bool, str]:
        files = sorted(out_dir.glob(out_dir_glob))
        if not files:
            return False, f"bench_gpu.py exited with {returncode} and wrote no JSON"
        rows = json.loads(files[-1].read_text())
        errors = [r for r in rows if "error" in r]
        ours = [r for r in errors if r["library"].startswith("rwwce-triton")]
        detail = f"{len(rows)} rows, {len(errors)} without a measurement (exit status {returncode})"
        for r in errors[:12]:
            detail += f"\n  {r['rows']}x{r['classes']} {r['dtype']} {r['library']} {r['variant']}: {r['error']}"
        return returncode == 0 and not ours, detail

    return judge


# --- set-up -----------------------------------------------------------------------------------


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH, else in the usual CUDA install folders."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    patterns = [
        "/usr/local/cuda/bin/compute-sanitizer",
        "/usr/local/cuda/compute-sanitizer/compute-sanitizer",
        "/usr/local/cuda-*/bin/compute-sanitizer",
        "/opt/nvidia/*/compute-sanitizer",
        "/opt/nvidia/*/*/compute-sanitizer",
    ]
    for pattern in patterns:
        matches = sorted(Path("/").glob(pattern.lstrip("/")))
        if matches:
            return str(matches[-1])
    return None


def sanitizer_options(sanitizer: str | None) -> list[str]:
    """memcheck, failing on any error; padding after every allocation (so a read just past a
    tensor's end is caught) and no report of CUDA API return codes (libraries probe with calls
    that fail by design; a failing call of ours raises in Python) where this version has them."""
    options = ["--tool", "memcheck", "--error-exitcode", "1", "--print-limit", "50"]
    if sanitizer is None:
        return options
    try:
        usage = subprocess.run([sanitizer, "--help"], capture_output=True, text=True, timeout=60)
        text = usage.stdout + usage.stderr
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    if "--padding" in text:
        options += ["--padding", "512"]
    if "--report-api-errors" in text:
        options += ["--report-api-errors", "no"]
    return options


def ensure_liger(
    wheel_dir: Path,
    site_dir: Path,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> tuple[Path | None, str]:
    """Make Liger-Kernel importable for the benchmark without touching what is installed.

    Returns (a folder to put on PYTHONPATH or None, a note for the summary).
    """
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is not None:
        try:
            version = importlib.metadata.version("liger-kernel")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown version"
        return None, f"liger-kernel {version} already installed"
    wheels = sorted(wheel_dir.glob("liger_kernel-*.whl"))
    if not wheels:
        return None, (
            f"liger-kernel is not installed and {wheel_dir}/ holds no liger_kernel-*.whl: its "
            "rows are left out (on a machine with network access: python -m pip download "
            "liger-kernel --no-deps --only-binary=:all: -d .whl)"
        )
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
        "--no-compile", "--disable-pip-version-check", "--target", str(site_dir), str(wheels[-1]),
    ]  # fmt: skip
    result = run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        return None, f"installing {wheels[-1].name} failed: {tail[0]}; Liger rows are left out"
    return site_dir, f"{wheels[-1].name} installed into a temporary folder (--no-deps --no-index)"


def environment_report(sanitizer: str | None) -> str:
    """nvidia-smi, the sanitizer's version and pip list, as text (each best effort)."""
    parts = []
    commands = [
        ["nvidia-smi"],
        [sys.executable, "-m", "pip", "list", "--disable-pip-version-check"],
    ]
    if sanitizer:
        commands.insert(1, [sanitizer, "--version"])
    for command in commands:
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60)
            text = result.stdout + result.stderr
        except (OSError, subprocess.TimeoutExpired) as error:
            text = f"{type(error).__name__}: {error}"
        parts.append(f"$ {' '.join(command)}\n{text}")
    return "\n".join(parts)


def gpu_info() -> dict | str:
    """The GPU and library versions, or why there is no CUDA device to check."""
    try:
        import torch
    except ImportError as error:
        return f"torch cannot be imported by {sys.executable} ({error})"
    if not torch.cuda.is_available():
        return "no CUDA GPU is present (torch.cuda.is_available() is False)"
    info = {
        "gpu": torch.cuda.get_device_name(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def pythonpath(*folders: Path) -> str:
    """The repository's src/ (rwwce without an install), the given folders, then the caller's."""
    parts = [str(REPO / "src"), *map(str, folders)]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def make_stages(args: argparse.Namespace, liger_site: Path | None) -> list[Stage]:
    import importlib.util

    python = sys.executable
    # a Triton interpreter flag left in the environment would interpret the CUDA launches too
    base_env = {"PYTHONPATH": pythonpath(), "PYTHONUNBUFFERED": "1", "TRITON_INTERPRET": None}
    # CI=true: the same hypothesis examples on every run (tests/conftest.py)
    tests_env = {**base_env, "RWWCE_REQUIRE_CUDA": "1", "CI": "true"}
    stages = []
    pytest_command = [
        python, "-m", "pytest", "-m", "cuda", "-q", "-rfEs", "-p", "no:cacheprovider",
        "--durations=15", f"--junitxml={args.out / 'tests-junit.xml'}", "tests",
    ]  # fmt: skip
    if importlib.util.find_spec("xdist") is not None:
        pytest_command[3:3] = ["-n", str(args.workers)]
    if importlib.util.find_spec("pytest_timeout") is not None:
        pytest_command[3:3] = ["--timeout", "120"]
    stages.append(
        Stage(
            "tests",
            pytest_command,
            args.timeouts["tests"],
            "tests.log",
            env=tests_env,
            judge=judge_tests("tests-junit.xml"),
        )
    )
    stages.append(
        Stage(
            "kernels",  # compared with float64, and Triton's cache filled for the sanitizer
            [python, "benchmarks/sanitize_kernels.py"],
            args.timeouts["kernels"],
            "kernels.log",
            env=base_env,
            judge=judge_kernels("kernels.log"),
        )
    )
    sanitizer = find_sanitizer()
    stages.append(
        Stage(
            "sanitizer",
            [sanitizer or "compute-sanitizer", *sanitizer_options(sanitizer)]
            + [python, "benchmarks/sanitize_kernels.py", "--no-reference"],
            args.timeouts["sanitizer"],
            "sanitizer.log",
            env={**base_env, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"},
            judge=judge_sanitizer("sanitizer.log"),
            missing=None if sanitizer else "compute-sanitizer not found (PATH, /usr/local/cuda)",
        )
    )
    budget = max(30.0, args.timeouts["bench"] - 25)  # leaves time to write the table
    bench_env = dict(base_env)
    if liger_site is not None:
        bench_env["PYTHONPATH"] = pythonpath(liger_site)
    stages.append(
        Stage(
            "bench",
            [
                python,
                "benchmarks/bench_gpu.py",
                "--output",
                f"{args.out}{os.sep}",
                "--time-budget",
                f"{budget:.0f}",
            ]
            + (["--quick"] if args.quick_bench else []),  # fmt: skip
            args.timeouts["bench"],
            "bench.log",
            env=bench_env,
            judge=judge_bench("bench_gpu_*.json"),
        )
    )
    return [s for s in stages if s.name in args.stages]


# --- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("gpu-check-results"), help="output folder (created)"
    )
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated subset of {','.join(STAGES)} (default: all, in that order)",
    )
    parser.add_argument(
        "--wheels", type=Path, default=REPO / ".whl", help="folder of carried wheels (.whl/)"
    )
    for name, seconds in DEFAULT_TIMEOUTS.items():
        parser.add_argument(
            f"--{name}-timeout",
            type=float,
            default=seconds,
            metavar="S",
            help=f"time limit of the {name} stage in seconds (default {seconds})",
        )
    parser.add_argument(
        "--workers",
        type=int,
        # Triton compiles each kernel variant on one core: many workers shorten the first run
        default=max(1, min(12, (os.cpu_count() or 1) - 2)),
        help="pytest-xdist workers (default: the cores less two, at most 12)",
    )
    parser.add_argument(
        "--quick-bench", action="store_true", help="the benchmark's small shapes (a smoke run)"
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        parser.error(f"--stages takes names from {','.join(STAGES)}; got {args.stages!r}")
    args.stages = stages
    args.timeouts = {name: getattr(args, f"{name}_timeout") for name in STAGES}
    args.out = args.out.resolve()
    return args


def write_summary(out_dir: Path, summary: dict) -> None:
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if threading.current_thread() is not threading.main_thread():
        return run_check(args)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a stopped check stops its stage
    try:
        return run_check(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_check(args: argparse.Namespace) -> int:
    """The check itself: set-up, every stage, the summary; the exit status."""
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    say(f"gpu_check: writing into {args.out}")
    info = gpu_info()
    if isinstance(info, str):
        message = (
            f"gpu_check: {info}; this check runs on a machine with an NVIDIA GPU, torch and "
            "triton. Nothing was run."
        )
        print(message, file=sys.stderr, flush=True)
        write_summary(args.out, {"machine": None, "stages": [], "result": "no GPU", "why": info})
        return NO_GPU_EXIT
    summary: dict = {"machine": info, "stages": [], "notes": []}
    say(f"gpu_check: {info['gpu']} (sm {info['capability']}), torch {info['torch']}, "
        f"triton {info['triton']}, CUDA {info['cuda']}, Python {info['python']}")  # fmt: skip
    summary["environment"] = environment_report(find_sanitizer())

    results = []
    with tempfile.TemporaryDirectory(prefix="rwwce-gpu-check-") as scratch:
        liger_site = None
        if "bench" in args.stages:
            liger_site, note = ensure_liger(args.wheels, Path(scratch) / "site")
            summary["notes"].append(note)
            say(f"gpu_check: {note}")
        for stage in make_stages(args, liger_site):
            results.append(run_stage(stage, args.out))
            summary["stages"] = [asdict(r) for r in results]
            write_summary(args.out, summary)  # after each stage: a cut-off run keeps what it did
    ok = all(r.status == "passed" for r in results)
    summary["result"] = "passed" if ok else "failed"
    summary["seconds"] = round(time.monotonic() - start, 1)
    write_summary(args.out, summary)
    say(f"\ngpu_check on {info['gpu']}: {summary['result']} in {summary['seconds']:.0f} s")
    for r in results:
        say(f"  {r.name:10s} {r.status:8s} {r.seconds:6.0f} s  {r.detail}")
    for note in summary["notes"]:
        say(f"  note: {note}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
