"""Train plainly, calibrate on validation, decide by cost; compare with training by RWWCE.

scikit-learn's 8x8 digits, where missing an 8 or a 9 (reading it as any other digit) costs 10 and
any other mistake costs 1. The model is a softmax regression trained briefly (100 full-batch Adam
steps), as models stopped early are: its probabilities are under-confident. For each of several
random train / validation / test splits (60 / 20 / 20, stratified):

1. **plain**: train with cross-entropy, decide by arg-max;
2. **plain + Bayes, uncalibrated**: the cost-optimal decision ``argmin_j sum_i p_i C[i, j]``
   (:func:`rwwce.metrics.bayes_decision`) on the raw softmax;
3. **plain + Bayes**: the same after temperature scaling fitted on the validation split
   (:class:`rwwce.calibration.TemperatureScaling`);
4. **RWWCE**: train with ``RWWCELoss.from_costs(costs)`` for as long, decide by arg-max;
5. **scikit-learn**: ``CostSensitiveClassifier(LogisticRegression(), costs,
   calibration="temperature")``, the same decision layer without a training loop.

It prints the test set's Real World Cost per 1,000 digits (mean over splits, and in how many
splits each arm costs less than plain), the calibration error before and after temperature
scaling, and the temperatures. Run::

    python examples/decide_by_cost.py              # 10 splits
    python examples/decide_by_cost.py --splits 30

Needs scikit-learn (``pip install 'rwwce[experiments]'``).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import rwwce
from rwwce.calibration import TemperatureScaling, expected_calibration_error
from rwwce.metrics import bayes_decision, real_world_cost
from rwwce.sklearn import CostSensitiveClassifier

ARMS = ("plain", "plain + Bayes, uncalibrated", "plain + Bayes", "RWWCE", "scikit-learn")


def digit_costs() -> rwwce.CostMatrix:
    """C[truth, prediction]: 10 for a missed 8 or 9, 1 for any other mistake."""
    c = np.ones((10, 10)) - np.eye(10)
    c[8] *= 10
    c[9] *= 10
    return rwwce.CostMatrix(c)


def train_linear(x: torch.Tensor, y: torch.Tensor, loss_fn: torch.nn.Module, seed: int):
    """Softmax regression, 100 full-batch Adam steps: stopped early, so under-confident."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model.eval()


def run_split(x, y, costs, seed: int) -> dict[str, float]:
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    per_1000 = lambda pred: 1000 * float(real_world_cost(yt[test], pred, costs))  # noqa: E731
    out: dict[str, float] = {}

    plain = train_linear(xt[train], yt[train], torch.nn.CrossEntropyLoss(), seed)
    with torch.no_grad():
        val_logits, test_logits = plain(xt[val]), plain(xt[test])
    out["plain"] = per_1000(test_logits.argmax(1))
    out["plain + Bayes, uncalibrated"] = per_1000(bayes_decision(test_logits.softmax(1), costs))
    scaler = TemperatureScaling().fit(val_logits, yt[val])
    probs = scaler.transform(test_logits).softmax(1)
    out["plain + Bayes"] = per_1000(bayes_decision(probs, costs))
    out["temperature"] = float(scaler.temperature)
    out["ece_before"] = float(expected_calibration_error(test_logits.softmax(1), yt[test]))
    out["ece_after"] = float(expected_calibration_error(probs, yt[test]))

    weighted = train_linear(xt[train], yt[train], rwwce.RWWCELoss.from_costs(costs), seed)
    with torch.no_grad():
        out["RWWCE"] = per_1000(weighted(xt[test]).argmax(1))

    fit_on = np.concatenate([train, val])
    clf = CostSensitiveClassifier(LogisticRegression(), costs, calibration="temperature", cv=3)
    clf.fit(x[fit_on], y[fit_on])
    out["scikit-learn"] = per_1000(torch.as_tensor(clf.predict(x[test])))
    return out


def main(splits: int = 10) -> dict[str, list[float]]:
    torch.set_num_threads(1)  # tiny models: threads only add overhead
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    costs = digit_costs()
    results: dict[str, list[float]] = {}
    for seed in range(splits):
        for key, value in run_split(x, y, costs, seed).items():
            results.setdefault(key, []).append(value)

    print(f"Real World Cost per 1,000 test digits, {splits} random splits (mean, min-max):")
    for arm in ARMS:
        v = np.array(results[arm])
        wins = int((v < np.array(results["plain"])).sum())
        vs = "" if arm == "plain" else f"  lower than plain in {wins}/{splits} splits"
        print(f"  {arm:<28} {v.mean():7.1f}  ({v.min():.1f}-{v.max():.1f}){vs}")
    t = np.array(results["temperature"])
    print(
        f"temperature fitted on validation: {t.mean():.2f} ({t.min():.2f}-{t.max():.2f}); "
        f"test ECE {np.mean(results['ece_before']):.3f} -> {np.mean(results['ece_after']):.3f}"
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=10, help="random splits (default 10)")
    main(parser.parse_args().splits)
