"""The plumbing of the one-command GPU check (benchmarks/gpu_check.py), of the benchmark's row
writer (benchmarks/bench_gpu.py) and of the kernel-variant script the memory checker runs
(benchmarks/sanitize_kernels.py), on a machine without a GPU.

Oracles: real processes (exit status, output, a process group stopped at its time limit), JUnit
XML written by pytest itself, and the arithmetic of the ratios.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check")
bench_gpu = _load("bench_gpu")
sanitize_kernels = _load("sanitize_kernels")

NO_GPU_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO / "src")}


def _python(code):
    return [sys.executable, "-c", code]


# --- without a GPU: a clear message and a non-zero exit ----------------------------------------


def test_without_a_gpu_it_says_so_and_exits_non_zero(tmp_path):
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--out", str(out)],
        env=NO_GPU_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "no CUDA GPU is present" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["result"] == "no GPU" and summary["stages"] == []


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_target_runs_the_check_into_the_out_folder(tmp_path):
    out = tmp_path / "from-make"
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "gpu-check",
            f"OUT={out}",
            f"GPU_CHECK_PYTHON={sys.executable}",
        ],
        cwd=REPO,
        env=NO_GPU_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "no CUDA GPU is present" in result.stderr
    assert json.loads((out / "summary.json").read_text())["result"] == "no GPU"


def test_without_torch_it_says_so_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "torch cannot be imported" in capsys.readouterr().err
    assert json.loads((tmp_path / "summary.json").read_text())["result"] == "no GPU"


def test_bench_without_a_gpu_exits_non_zero(monkeypatch, capsys):
    monkeypatch.setattr(bench_gpu.torch.cuda, "is_available", lambda: False)
    assert bench_gpu.main(["--quick"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_bad_stage_names_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--stages", "tests,benchmark"])
    assert exit_info.value.code == 2
    assert "--stages takes names from tests,kernels,sanitizer,bench; got" in capsys.readouterr().err


# --- one stage: output, log, exit status, time limit --------------------------------------------


def test_a_passing_stage_echoes_and_logs_its_output(tmp_path, capsys):
    stage = gpu_check.Stage("demo", _python("print('line one'); print('line two')"), 60, "demo.log")
    result = gpu_check.run_stage(stage, tmp_path)
    assert (result.status, result.returncode) == ("passed", 0)
    log = (tmp_path / "demo.log").read_text()
    assert "line one\nline two\n" in log
    assert "line two" in capsys.readouterr().out


def test_a_failing_stage_records_its_exit_status(tmp_path):
    stage = gpu_check.Stage("demo", _python("import sys; sys.exit(3)"), 60, "demo.log")
    result = gpu_check.run_stage(stage, tmp_path)
    assert (result.status, result.returncode, result.detail) == ("failed", 3, "exit status 3")


def test_a_stage_past_its_limit_is_stopped_with_its_children(tmp_path):
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print('child-pid', child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    stage = gpu_check.Stage("slow", _python(code), 3, "slow.log")
    start = time.monotonic()
    result = gpu_check.run_stage(stage, tmp_path)
    assert result.status == "timeout" and time.monotonic() - start < 30
    log = (tmp_path / "slow.log").read_text()
    assert "stopped after" in log and "limit 3 s" in result.detail
    child = int(log.split("child-pid ")[1].split()[0])
    for _ in range(50):  # the orphaned child is reaped by init shortly after its SIGTERM
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the stage's child process {child} is still running")


def test_a_missing_tool_and_a_broken_judge_fail_the_stage(tmp_path):
    missing = gpu_check.Stage("tool", ["no-such-tool"], 60, "tool.log", missing="not found")
    assert gpu_check.run_stage(missing, tmp_path).status == "missing"
    assert (tmp_path / "tool.log").read_text() == "not found\n"

    def judge(returncode, out_dir):
        raise KeyError("summary")

    broken = gpu_check.Stage("judged", _python("pass"), 60, "judged.log", judge=judge)
    result = gpu_check.run_stage(broken, tmp_path)
    assert result.status == "failed" and "could not judge the stage: KeyError" in result.detail


def test_a_stage_environment_can_remove_a_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("RWWCE_CHECK_PROBE", "inherited")
    code = "import os; print('probe=' + str(os.environ.get('RWWCE_CHECK_PROBE')))"
    stage = gpu_check.Stage("env", _python(code), 60, "env.log", env={"RWWCE_CHECK_PROBE": None})
    gpu_check.run_stage(stage, tmp_path)
    assert "probe=None" in (tmp_path / "env.log").read_text()


# --- the sequence: every stage runs, the summary keeps each result ------------------------------


@pytest.mark.parametrize("first_exit, expected", [(0, 0), (4, 1)])
def test_stages_run_in_order_past_a_failure(tmp_path, monkeypatch, first_exit, expected):
    ran = tmp_path / "ran.txt"
    append = "open({!r}, 'a').write({!r})".format(str(ran), "{}\n")
    stages = [
        gpu_check.Stage("one", _python(f"{append.format('one')}; raise SystemExit({first_exit})"), 60, "one.log"),
        gpu_check.Stage("two", _python(append.format("two")), 60, "two.log"),
    ]  # fmt: skip
    gpu = {"gpu": "Fake GPU", "capability": "9.0", "torch": "t", "cuda": "c", "python": "p"}
    monkeypatch.setattr(gpu_check, "gpu_info", lambda: {**gpu, "triton": "3.6"})
    monkeypatch.setattr(gpu_check, "environment_report", lambda sanitizer: "environment\n")
    monkeypatch.setattr(gpu_check, "ensure_liger", lambda wheels, site: (None, "no Liger here"))
    monkeypatch.setattr(gpu_check, "make_stages", lambda args, site: stages)
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == expected
    assert ran.read_text() == "one\ntwo\n"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["one", "two"]
    assert [s["status"] for s in summary["stages"]] == [
        "passed" if first_exit == 0 else "failed",
        "passed",
    ]
    assert summary["result"] == ("passed" if expected == 0 else "failed")
    assert summary["notes"] == ["no Liger here"]
    assert summary["machine"]["gpu"] == "Fake GPU"
    assert summary["environment"] == "environment\n"


def test_the_tests_stage_fails_when_cuda_is_required_but_missing(tmp_path):
    """The real tests stage on a machine without a GPU: RWWCE_REQUIRE_CUDA=1 stops pytest, so the
    CUDA tests fail instead of skipping."""
    args = gpu_check.parse_args(["--out", str(tmp_path), "--stages", "tests"])
    (stage,) = gpu_check.make_stages(args, None)
    stage.env["CUDA_VISIBLE_DEVICES"] = ""
    assert stage.env["RWWCE_REQUIRE_CUDA"] == "1" and "-m" in stage.command
    result = gpu_check.run_stage(stage, tmp_path)
    assert result.status == "failed"
    log = (tmp_path / "tests.log").read_text()
    assert "RWWCE_REQUIRE_CUDA=1 but torch.cuda.is_available() is False" in log


# --- judges -----------------------------------------------------------------------------------


def test_tests_judge_reads_pytest_junit_and_fails_on_a_skip(tmp_path):
    (tmp_path / "test_demo.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_skipped(): pytest.skip('no device here')\n"
        "def test_failed(): assert 1 == 2\n"
        "@pytest.fixture\n"
        "def broken(): raise RuntimeError('fixture')\n"
        "def test_errored(broken): pass\n"
    )
    xml = tmp_path / "junit.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    counts = gpu_check.junit_counts(xml)
    assert counts["tests"] == 4
    assert counts["failures"] == ["test_demo::test_failed (assert 1 == 2)"]
    assert counts["skipped"] == ["test_demo::test_skipped (no device here)"]
    assert len(counts["errors"]) == 1 and "RuntimeError: fixture" in counts["errors"][0]
    ok, detail = gpu_check.judge_tests("junit.xml")(result.returncode, tmp_path)
    assert not ok
    assert "1 passed, 1 failed, 1 errors, 1 skipped" in detail and "no device here" in detail

    (tmp_path / "test_demo.py").write_text("import pytest\ndef test_skipped(): pytest.skip('x')\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"],
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0  # pytest itself passes a run of skips
    ok, detail = gpu_check.judge_tests("junit.xml")(0, tmp_path)
    assert not ok and "0 passed" in detail and "1 skipped" in detail
    assert gpu_check.judge_tests("absent.xml")(4, tmp_path) == (
        False,
        "pytest exited with 4 and wrote no JUnit XML",
    )


@pytest.mark.parametrize(
    "log, returncode, passed",
    [
        ("ok   a\n2 cases, 0 failed\n========= ERROR SUMMARY: 0 errors\n", 0, True),
        ("ok   a\n2 cases, 0 failed\n========= ERROR SUMMARY: 3 errors\n", 1, False),
        ("FAIL a\n2 cases, 1 failed\n========= ERROR SUMMARY: 0 errors\n", 1, False),
        ("Traceback (most recent call last):\n", 1, False),
    ],
)
def test_sanitizer_judge(tmp_path, log, returncode, passed):
    (tmp_path / "sanitizer.log").write_text(log)
    ok, detail = gpu_check.judge_sanitizer("sanitizer.log")(returncode, tmp_path)
    assert ok == passed
    assert ("ERROR SUMMARY" in detail) == ("ERROR SUMMARY" in log)


@pytest.mark.parametrize(
    "log, returncode, passed",
    [
        ("ok   a  loss 1e-08\nok   b  loss 2e-08\n2 cases, 0 failed\n", 0, True),
        ("ok   a  loss 1e-08\nFAIL b: RuntimeError: x\n2 cases, 1 failed\n", 1, False),
        ("ok   a  loss 1e-08\n", 0, False),  # cut off before its summary line
    ],
)
def test_kernels_judge(tmp_path, log, returncode, passed):
    (tmp_path / "kernels.log").write_text(log)
    ok, detail = gpu_check.judge_kernels("kernels.log")(returncode, tmp_path)
    assert ok == passed
    assert ("FAIL b" in detail) == ("FAIL b" in log)


def _row(library, error=None):
    shape = dict(rows=8, classes=4, dtype="float32", copy_ms=0.5)
    if error:
        return bench_gpu.make_row({}, library=library, variant="v", error=error, **shape)
    return bench_gpu.make_row(
        {}, library=library, variant="v", fwd_ms=0.5, fwd_bwd_ms=1.0, peak_extra_bytes=128, **shape
    )


@pytest.mark.parametrize(
    "rows, passed",
    [
        ([_row("rwwce-triton"), _row("liger-kernel", "ImportError: x")], True),
        ([_row("rwwce-triton"), _row("rwwce-triton", "time budget spent")], False),
        ([], True),
    ],
)
def test_bench_judge_requires_every_kernel_row(tmp_path, rows, passed):
    (tmp_path / "bench_gpu_fake-gpu.json").write_text(json.dumps(rows))
    ok, detail = gpu_check.judge_bench("bench_gpu_*.json")(0, tmp_path)
    assert ok == passed and f"{len(rows)} rows" in detail
    assert gpu_check.judge_bench("bench_gpu_*.json")(1, tmp_path)[0] is False


# --- Liger-Kernel from carried wheels ----------------------------------------------------------


def test_liger_already_installed_is_left_alone(tmp_path, monkeypatch):
    import importlib.util as util

    real = util.find_spec
    monkeypatch.setattr(
        util, "find_spec", lambda name: object() if name == "liger_kernel" else real(name)
    )

    def no_run(*args, **kwargs):
        raise AssertionError("nothing may be installed")

    site, note = gpu_check.ensure_liger(tmp_path, tmp_path / "site", run=no_run)
    assert site is None and "already installed" in note


def test_liger_from_a_wheel_folder(tmp_path, monkeypatch):
    import importlib.util as util

    real = util.find_spec
    monkeypatch.setattr(
        util, "find_spec", lambda name: None if name == "liger_kernel" else real(name)
    )
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    site, note = gpu_check.ensure_liger(wheels, tmp_path / "site")
    assert site is None and "pip download liger-kernel --no-deps" in note

    (wheels / "liger_kernel-0.8.5-py3-none-any.whl").write_bytes(b"")
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    site, note = gpu_check.ensure_liger(wheels, tmp_path / "site", run=run)
    assert site == tmp_path / "site" and "liger_kernel-0.8.5-py3-none-any.whl installed" in note
    (command,) = calls
    assert {"--no-deps", "--no-index"} <= set(command)
    assert command[command.index("--target") + 1] == str(tmp_path / "site")

    def failing(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: not a zip file")

    site, note = gpu_check.ensure_liger(wheels, tmp_path / "site", run=failing)
    assert site is None and "not a zip file" in note


# --- the benchmark's rows -----------------------------------------------------------------------


def test_bench_rows_hold_the_ratios_to_the_copy_and_the_machine():
    meta = {"gpu": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0"}
    row = bench_gpu.make_row(
        meta,
        library="rwwce-triton",
        variant="fp=vector",
        rows=8192,
        classes=32768,
        dtype="bfloat16",
        copy_ms=0.25,
        fwd_ms=0.2,
        fwd_bwd_ms=0.3,
        peak_extra_bytes=8192 * 32768 * 2 + 4 * 8192,
    )
    for key in ("library", "variant", "rows", "classes", "dtype", "fwd_bwd_ms", "copy_ms"):
        assert key in row
    assert row["fwd_bwd_ratio_to_copy"] == pytest.approx(1.2)
    assert row["fwd_ratio_to_copy"] == pytest.approx(0.8)
    assert row["peak_extra_gradients"] == pytest.approx(1 + 4 / (32768 * 2))
    assert (row["gpu"], row["torch"], row["triton"]) == ("NVIDIA H200", "2.11.0", "3.6.0")
    json.dumps(row)  # plain JSON types

    tiny = dict(rows=1, classes=2, dtype="float32", copy_ms=1.0)
    failed = bench_gpu.make_row(meta, library="torch", variant="x", error="out of memory", **tiny)
    assert failed["error"] == "out of memory" and "fwd_bwd_ms" not in failed
    table = bench_gpu.markdown([row, failed])
    assert "| 8192 x 32768 | bfloat16 | rwwce-triton | fp=vector | 0.200 | 0.300 | 1.20 |" in table
    assert "out of memory" in table


def test_bench_output_names_the_gpu(tmp_path):
    assert bench_gpu.gpu_slug("NVIDIA H200") == "nvidia-h200"
    assert bench_gpu.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert bench_gpu.output_path(tmp_path, "NVIDIA H200") == tmp_path / "bench_gpu_nvidia-h200.json"
    assert bench_gpu.output_path(tmp_path / "x.json", "NVIDIA H200") == tmp_path / "x.json"
    default = bench_gpu.output_path(bench_gpu.build_parser().parse_args([]).output, "NVIDIA H200")
    assert default == BENCHMARKS / "results" / "bench_gpu_nvidia-h200.json"


# --- the kernel variants the memory checker runs ------------------------------------------------


def test_sanitizer_cases_cover_every_kernel_variant():
    names = [c.name for c in sanitize_kernels.all_cases(False, False)]
    assert len(names) == len(set(names))
    cases = sanitize_kernels.all_cases(False, False)
    widths = {c.shape[1] for c in cases}
    assert max(widths) > 8192 and min(widths) <= 64  # multi-block and many rows per program
    for prefix in ("tile", "row", "multi"):
        kinds = {(c.fp, c.dtype) for c in cases if c.name.startswith(prefix + "/")}
        assert {fp for fp, _ in kinds} == {"none", "vector", "matrix"}, prefix
    assert {c.dtype for c in cases} == {"float32", "bfloat16", "float16"}
    assert {c.reduction for c in cases} == {"none", "mean", "sum", "weighted_mean"}
    extra = sanitize_kernels.all_cases(True, True)
    assert {c.fp for c in extra if c.fp == "sample_costs"} and any(c.linear for c in extra)


def test_sanitizer_script_runs_the_kernels_in_the_interpreter():
    pytest.importorskip("triton")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "sanitize_kernels.py"), "--device", "cpu"]
        + ["--only", "^(tile/fp=(none|vector)|spatial)"],
        env={**NO_GPU_ENV, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "6 cases, 0 failed"
    assert sum(line.startswith("ok   ") for line in lines) == 6


def test_bench_shape_plumbing_on_the_cpu(monkeypatch):
    """run_shape with the GPU timers replaced: every case gives a row, a case that cannot run
    (the Triton kernel on CPU tensors without the interpreter) an error row, and a spent time
    budget rows that say so."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    calls = []

    def fake_bench(fn, grad_to_none=None):
        fn()
        calls.append(fn)
        return 2.0 if grad_to_none else 1.0

    monkeypatch.setattr(bench_gpu, "_bench", fake_bench)
    monkeypatch.setattr(bench_gpu, "_peak_extra_bytes", lambda step: step() or 4096)
    meta = {"gpu": "cpu"}
    rows = bench_gpu.run_shape(64, 10, "float32", meta, device="cpu")
    by_case = {(r["library"], r["variant"]): r for r in rows}
    assert ("torch", "F.cross_entropy") in by_case and (
        "rwwce-torch",
        "eager, fp=vector",
    ) in by_case
    assert {v for lib, v in by_case if lib == "rwwce-triton"} == {
        "fp=None",
        "fp=vector",
        "fp=matrix",
    }
    for (library, _), row in by_case.items():
        assert (row["rows"], row["classes"], row["dtype"], row["gpu"]) == (64, 10, "float32", "cpu")
        if library == "rwwce-triton":
            assert row["error"].startswith("ValueError: backend='triton' cannot run this call")
        else:
            assert "error" not in row, row
            assert row["fwd_bwd_ratio_to_copy"] == 2.0 and row["peak_extra_bytes"] == 4096
    spent = bench_gpu.run_shape(64, 10, "float32", meta, device="cpu", deadline=time.monotonic())
    assert spent and all(r["error"] == "time budget spent" for r in spent)
