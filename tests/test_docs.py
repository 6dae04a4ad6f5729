"""The examples in docstrings and the README's quick start run and print what they say."""

import doctest
import importlib
import re
from pathlib import Path

import pytest

MODULES = ["rwwce.functional", "rwwce.modules", "rwwce.costs", "rwwce.weights", "rwwce.metrics"]


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
