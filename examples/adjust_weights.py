"""Adjusting class weights from validation results, round by round: does it lower the cost?

scikit-learn's 8x8 digits, made imbalanced: digits 3, 5 and 8 keep 15 % of their training samples.
Missing one of those rare digits (predicting anything else when the truth is 3, 5 or 8) costs 10,
every other mistake costs 1. A logistic-regression model starts from plain cross-entropy (all FN
weights 1). After each round, ``rwwce.adjust_class_weights`` proposes new FN weights from the
validation confusion matrix and the costs; the model is retrained from scratch with them. Every
round reports the validation cost (what the adjustment looks at) and the test cost (held out: the
honest number), averaged over several seeds; the round with the lowest validation cost is the one
you would keep, and its test cost is the answer. Two fixed-weight baselines put it in context:
the FN weights the cost matrix implies (``RWWCELoss.from_costs``) and "balanced" class weights.

Run::

    python examples/adjust_weights.py                     # 5 rounds, 3 seeds, a few seconds
    python examples/adjust_weights.py --rounds 8 --damping 1.0

Needs scikit-learn (``pip install rwwce[experiments]``).
"""

from __future__ import annotations

import argparse
import warnings

import torch

import rwwce
from rwwce.metrics import confusion_matrix, real_world_cost

RARE = (3, 5, 8)


def load_data(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Standardised digits split 50 / 25 / 25 into train / validation / test; the rare digits
    keep 15 % of their training samples (validation and test keep the natural mix)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    x = torch.tensor(x, dtype=torch.float32)[perm]
    y = torch.tensor(y, dtype=torch.long)[perm]
    n = len(y)
    train, val, test = slice(0, n // 2), slice(n // 2, 3 * n // 4), slice(3 * n // 4, n)
    x_train, y_train = x[train], y[train]
    keep = ~torch.isin(y_train, torch.tensor(RARE)) | (torch.rand(len(y_train), generator=g) < 0.15)
    x_train, y_train = x_train[keep], y_train[keep]
    mean, std = x_train.mean(0), x_train.std(0) + 1e-3
    return {
        "train": ((x_train - mean) / std, y_train),
        "val": ((x[val] - mean) / std, y[val]),
        "test": ((x[test] - mean) / std, y[test]),
    }


def costs() -> rwwce.CostMatrix:
    c = torch.ones(10, 10) - torch.eye(10)
    c[list(RARE)] *= 10.0  # rows are the truth: missing a rare digit costs 10
    return rwwce.CostMatrix(c, classes=[str(d) for d in range(10)])


def train(x: torch.Tensor, y: torch.Tensor, fn: torch.Tensor, seed: int, steps: int = 150):
    """Full-batch Adam on a linear model with class-weighted RWWCE (no FP term)."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-3)
    criterion = rwwce.RWWCELoss(fn, reduction="weighted_mean")
    for _ in range(steps):
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.step()
    return model


def run(rounds: int = 5, seeds: int = 3, damping: float = 0.5) -> dict:
    """Per seed and round: the FN weights used, and the validation and test costs."""
    cm = costs()
    results = {"val": torch.zeros(seeds, rounds), "test": torch.zeros(seeds, rounds)}
    results["weights"] = torch.zeros(seeds, rounds, 10)
    for seed in range(seeds):
        data = load_data(seed)
        fn = torch.ones(10)
        for r in range(rounds):
            model = train(*data["train"], fn, seed)
            with torch.no_grad():
                pred = {k: model(x).argmax(1) for k, (x, _) in data.items()}
            for split in ("val", "test"):
                y = data[split][1]
                results[split][seed, r] = float(real_world_cost(y, pred[split], cm))
            results["weights"][seed, r] = fn
            confusion = confusion_matrix(data["val"][1], pred["val"], 10)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fn = rwwce.adjust_class_weights(confusion, cm, fn, damping=damping).fn_weight
            for w in caught:
                print(f"  seed {seed}, after round {r}: {w.message}")
    # Baselines, fixed weights without any adjustment: the FN weights the cost matrix implies
    # (what RWWCELoss.from_costs uses) and scikit-learn's "balanced" class weights.
    results["baselines"] = {}
    for name in ("cost-derived", "balanced"):
        test_costs = []
        for seed in range(seeds):
            data = load_data(seed)
            y_train = data["train"][1]
            fn = cm.loss_weights()[0] if name == "cost-derived" else rwwce.class_weights(y_train)
            model = train(*data["train"], fn, seed)
            with torch.no_grad():
                pred = model(data["test"][0]).argmax(1)
            test_costs.append(float(real_world_cost(data["test"][1], pred, cm)))
        results["baselines"][name] = sum(test_costs) / seeds
    val, test = results["val"].mean(0), results["test"].mean(0)
    results["chosen_round"] = int(val.argmin())
    results["mean_val"], results["mean_test"] = val, test
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--damping", type=float, default=0.5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a tiny model: threads only add overhead
    res = run(args.rounds, args.seeds, args.damping)
    rare = list(RARE)
    print(f"Real World Cost per sample, mean over {args.seeds} seeds (round 0: plain CE)")
    print("round  val cost  test cost  mean FN weight of digits 3, 5, 8 / of the others")
    for r in range(args.rounds):
        w = res["weights"][:, r].mean(0)
        others = [d for d in range(10) if d not in RARE]
        print(
            f"{r:>5}  {res['mean_val'][r]:8.4f}  {res['mean_test'][r]:9.4f}  "
            f"{w[rare].mean():.2f} / {w[others].mean():.2f}"
        )
    c = res["chosen_round"]
    base, chosen = float(res["mean_test"][0]), float(res["mean_test"][c])
    print(
        f"lowest validation cost: round {c}; its test cost {chosen:.4f} vs {base:.4f} for plain "
        f"CE ({100 * (chosen - base) / base:+.1f}%)"
    )
    for name, value in res["baselines"].items():
        print(f"fixed {name} FN weights, no adjustment: test cost {value:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
