"""The examples in docstrings and the README's quick start run and print what they say."""

import doctest
import importlib
import re
import runpy
from pathlib import Path

import numpy as np
import pytest

MODULES = [
    "rwwce.functional",
    "rwwce.modules",
    "rwwce.costs",
    "rwwce.weights",
    "rwwce.metrics",
    "rwwce._torchmetrics",
    "rwwce.calibration",
    "rwwce.sklearn",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_readme_quick_start_runs():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["loss"].item() > 0
    assert namespace["decision"].shape == (64,)


@pytest.mark.slow
def test_decide_by_cost_example_prints_its_numbers(capsys):
    """examples/decide_by_cost.py on two splits: calibration fixes the under-confident model and
    the calibrated Bayes decision costs less than the arg-max."""
    path = Path(__file__).parents[1] / "examples" / "decide_by_cost.py"
    results = runpy.run_path(str(path))["main"](splits=2)
    out = capsys.readouterr().out
    for arm in ("plain", "plain + Bayes, uncalibrated", "plain + Bayes", "RWWCE", "scikit-learn"):
        assert re.search(rf"^  {re.escape(arm)} +\d+\.\d ", out, re.M), out
    assert "test ECE" in out
    assert np.mean(results["ece_after"]) < 0.5 * np.mean(results["ece_before"])
    assert np.mean(results["plain + Bayes"]) < np.mean(results["plain"])
    assert np.mean(results["scikit-learn"]) < np.mean(results["plain"])
