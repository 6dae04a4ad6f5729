"""The examples in docstrings and the README's quick start run and print what they say."""

import doctest
import importlib
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MODULES = [
    "rwwce.functional",
    "rwwce.modules",
    "rwwce.costs",
    "rwwce.weights",
    "rwwce.metrics",
    "rwwce.monitor",
    "rwwce._torchmetrics",
    "rwwce.calibration",
    "rwwce.sklearn",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_huggingface_docstring_examples():
    pytest.importorskip("transformers")
    test_docstring_examples("rwwce.integrations.huggingface")


def _run_example(name: str, *args: str) -> str:
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(root / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=root,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_adjust_weights_example_runs():
    """Three rounds on one seed: a table row per round and the chosen round's test cost."""
    pytest.importorskip("sklearn")
    stdout = _run_example("adjust_weights.py", "--rounds", "3", "--seeds", "1")
    rows = [line.split() for line in stdout.splitlines() if re.match(r"\s+\d+\s+\d", line)]
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    val = [float(r[1]) for r in rows]
    chosen = re.search(r"lowest validation cost: round (\d+)", stdout)
    assert chosen and int(chosen.group(1)) == val.index(min(val))
    assert "fixed cost-derived FN weights" in stdout


@pytest.mark.slow
def test_lightning_example_checkpoints_on_the_validation_cost(tmp_path):
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    stdout = _run_example("lightning_train.py", "--epochs", "3", "--out", str(tmp_path))
    (ckpt,) = tmp_path.glob("best-*.ckpt")
    best = float(re.search(r"best validation cost: ([\d.]+)", stdout).group(1))
    assert f"val_cost={best:.4f}" in ckpt.name  # the checkpoint kept is the cheapest epoch's
    assert 0 <= float(re.search(r"test cost of the best checkpoint: ([\d.]+)", stdout).group(1))


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


def test_costs_doc_reduction_claim_against_pytorch():
    """docs/costs_and_metrics.md: weighted_mean equals nn.CrossEntropyLoss(weight=w); the default
    mean differs from it by the batch's mean(w[y])."""
    import torch

    import rwwce

    doc = (Path(__file__).parents[1] / "docs" / "costs_and_metrics.md").read_text()
    assert 'reduction="weighted_mean"` is what equals `nn.CrossEntropyLoss(weight=w)`' in doc
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, generator=g), torch.randint(0, 3, (64,), generator=g)
    w = rwwce.class_weights(torch.tensor([0] * 50 + [1] * 10 + [2] * 4))
    pytorch = torch.nn.CrossEntropyLoss(weight=w)(x, y)
    weighted = rwwce.RWWCELoss(fn_weight=w, reduction="weighted_mean")(x, y)
    mean = rwwce.RWWCELoss(fn_weight=w)(x, y)
    torch.testing.assert_close(weighted, pytorch)
    torch.testing.assert_close(mean, pytorch * w[y].mean())
    assert abs(float(mean / pytorch) - 1) > 0.1  # the difference is not a rounding matter


def test_readme_quotes_every_arm_of_decide_by_cost():
    """The README's summary of examples/decide_by_cost.py gives the mean of every arm the example
    prints (the measured table lives in docs/decisions.md)."""
    root = Path(__file__).parents[1]
    arms = runpy.run_path(str(root / "examples" / "decide_by_cost.py"))["ARMS"]
    table = (root / "docs" / "decisions.md").read_text()
    means = re.findall(r"^\| [^|]+ \| \**(\d+\.\d)\** \(", table, re.M)
    assert len(means) == len(arms) == 5
    readme = (root / "README.md").read_text()
    summary = readme[readme.index("`python examples/decide_by_cost.py`") :].split("\n\n")[0]
    for mean in means:
        assert mean in summary, (mean, summary)


@pytest.mark.slow
def test_fraud_costs_example_prints_every_arm():
    """examples/fraud_costs.py on two small seeds: a row per arm with finite costs, the per-sample
    RWWCE arm as the reference, and deciding by per-sample cost beating the arg-max of plain CE."""
    pytest.importorskip("scipy")
    stdout = _run_example("fraud_costs.py", "--seeds", "2", "--samples", "3000", "--steps", "60")
    path = Path(__file__).parents[1] / "examples" / "fraud_costs.py"
    arms = runpy.run_path(str(path))["ARMS"]
    means, diffs = {}, {}
    for arm in arms:
        row = re.search(rf"^  {re.escape(arm)} +(\S+)  \[ *(\S+), +(\S+)\]  (.*)$", stdout, re.M)
        assert row, stdout
        mean, lo, hi = (float(v) for v in row.group(1, 2, 3))
        assert all(np.isfinite([mean, lo, hi])) and 0 <= lo <= mean <= hi, row.group(0)
        means[arm] = mean
        if arm == "RWWCE, per sample":
            assert row.group(4).strip() == "(reference)"
        else:  # paired difference, its interval, p and the per-sample arm's wins out of 2 seeds
            diff, dlo, dhi, p, wins = re.fullmatch(
                r" *([-+]\S+)  \[ *([-+]\S+), +([-+]\S+)\] +(\S+)  (\d)/2", row.group(4)
            ).groups()
            assert float(dlo) <= float(diff) <= float(dhi) and 0 <= float(p) <= 1
            diffs[arm] = float(diff)
    assert set(means) == set(arms) and "RWWCE, per sample" in means
    for arm, diff in diffs.items():  # the mean paired difference is the difference of the means
        assert abs(diff - (means["RWWCE, per sample"] - means[arm])) <= 2e-3, (arm, stdout)
    assert means["CE + Bayes"] < means["CE"]


def test_fraud_costs_example_loss_weighs_each_mistake_by_its_cost():
    """For two classes, RWWCE with the example's sample_costs rows (amount, 5) is cross-entropy
    weighted by the cost of the element's own mistake: its amount for a fraud, 5 otherwise
    (PyTorch's own cross-entropy as the oracle); the (N, 2, 2) matrices say the same."""
    import torch

    import rwwce

    ns = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "fraud_costs.py"))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 2, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 2, (64,), generator=g)
    amount = torch.exp(torch.randn(64, dtype=torch.float64, generator=g) * 1.5 + 4)
    rows = ns["per_sample_costs"](amount)
    loss = rwwce.RWWCELoss()(logits, y, sample_costs=rows)
    weight = torch.where(y == 1, amount, 5.0)
    expected = (weight * torch.nn.functional.cross_entropy(logits, y, reduction="none")).mean()
    torch.testing.assert_close(loss, expected)
    matrices = ns["cost_matrices"](amount)
    assert torch.equal(matrices[torch.arange(64), y, 1 - y], weight)
    assert torch.equal(matrices.diagonal(dim1=1, dim2=2), torch.zeros(64, 2, dtype=torch.float64))


def test_readme_quotes_every_arm_of_fraud_costs():
    """The README's summary of examples/fraud_costs.py gives every mean of the table in
    docs/decisions.md, and the table has one row per arm the example prints."""
    root = Path(__file__).parents[1]
    arms = runpy.run_path(str(root / "examples" / "fraud_costs.py"))["ARMS"]
    doc = (root / "docs" / "decisions.md").read_text()
    section = doc[doc.index("### Per-sample costs: in training or in the decision") :]
    means = re.findall(r"^\| [^|]+ \| \**(\d+\.\d{3})\** \(", section, re.M)
    assert len(means) == len(arms) == 5
    readme = (root / "README.md").read_text()
    summary = readme[readme.index("`python examples/fraud_costs.py`") :].split("\n\n")[0]
    assert all(m in summary for m in means), (means, summary)
