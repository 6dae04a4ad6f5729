"""``python -m rwwce``: the module runs the CLI only as a script, never on import."""

import importlib
import subprocess
import sys


def test_importing_main_does_not_run_the_cli():
    sys.modules.pop("rwwce.__main__", None)
    importlib.import_module("rwwce.__main__")  # would raise SystemExit without the guard


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "rwwce", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "experiment" in done.stdout
