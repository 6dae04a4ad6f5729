"""The set-up commands: which torch build `make install` asks for, and where it installs.

`make -n` prints the commands without running them, so these tests install nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


#: What an outer `make test` (CI exports TORCH_SPEC) would pass down to these dry runs.
INHERITED = {
    "MAKEFLAGS",
    "MAKELEVEL",
    "MFLAGS",
    "TORCH_SPEC",
    "TORCH_INDEX_URL",
    "VENV",
    "BASE_PYTHON",
}


def dry_run(target: str, *assignments: str, env: dict[str, str] | None = None) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in INHERITED}
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", "-C", str(ROOT), target, *assignments],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def torch_install(lines: list[str]) -> str:
    [line] = [x for x in lines if re.search(r"pip install .*\btorch[=<>]", x)]
    return line


def test_default_install_creates_the_venv_and_names_the_torch_requirement(tmp_path):
    venv = tmp_path / "env"
    lines = dry_run("install", f"VENV={venv}")
    assert lines[0] == f"python3 -m venv {venv}"
    line = torch_install(lines)
    assert line.startswith(f"{venv}/bin/python -m pip install")
    assert '"torch==2.13.0"' in line and "--index-url" not in line
    assert any(f"{venv}/bin/python -m pip install" in x and '-e ".[' in x for x in lines)


def test_torch_spec_and_index_url_override_the_choice(tmp_path):
    venv = tmp_path / "env"
    cpu = "https://download.pytorch.org/whl/cpu"
    lines = dry_run(
        "install", f"VENV={venv}", "BASE_PYTHON=python3.11", f"TORCH_INDEX_URL={cpu}",
        "TORCH_SPEC=torch==2.11.0",
    )  # fmt: skip
    assert lines[0] == f"python3.11 -m venv {venv}"
    assert f'--index-url {cpu} "torch==2.11.0"' in torch_install(lines)
    # CI sets the requirement through the environment, as .ci/run does
    lines = dry_run("install", f"VENV={venv}", env={"TORCH_SPEC": "torch==2.13.0+cpu"})
    assert '"torch==2.13.0+cpu"' in torch_install(lines)


def test_an_existing_venv_is_reused_and_test_runs_inside_it(tmp_path):
    venv = tmp_path / "env"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    lines = dry_run("test", f"VENV={venv}")
    assert not any("-m venv" in x for x in lines)
    assert f"{venv}/bin/python -m pytest -q" in lines
    assert (
        f"TRITON_INTERPRET=1 {venv}/bin/python -m pytest -q tests/test_kernels_triton.py" in lines
    )


def test_ci_runs_the_readme_test_command_on_the_cpu_build():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make test\b", readme, re.M)  # README's test command
    assert re.search(r"^make test$", ci, re.M)
    assert 'export TORCH_SPEC="torch==2.13.0+cpu"' in ci
    assert "download.pytorch.org" not in ci  # CI reaches the package registries only
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()
