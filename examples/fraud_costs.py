"""Per-sample costs: train with each transaction's own cost, or decide with it, on fraud-like data.

Synthetic card transactions, about 2% fraud. Each has five anonymous features (frauds shifted on
three of them) and an amount from a log-normal distribution, heavy-tailed, that frauds draw a
little higher: the amount is informative but noisy. Missing a fraud costs its amount; a false
alarm costs a fixed review cost (5). As per-sample cost matrices, ``C[n, 1, 0] = amount_n`` and
``C[n, 0, 1] = 5``; as the ``sample_costs`` rows of the loss, ``c[n] = (amount_n, 5)`` (the cost of
predicting "legitimate", then "fraud"). The costs are known before the label, as in practice.

A logistic regression (2-class softmax over the five features and the standardised log amount)
is trained with full-batch Adam for a fixed number of steps by each arm:

* **CE**: plain cross-entropy, decide by arg-max;
* **CE + Bayes**: the same model, decide by :func:`rwwce.metrics.bayes_decision` with the
  per-sample costs (flag a transaction when ``p_fraud > 5 / (5 + amount)``);
* **class-weighted CE**: ``fn_weight = rwwce.class_weights(y_train)`` ("balanced"), arg-max;
* **RWWCE, one matrix**: ``RWWCELoss.from_costs`` of the average costs (a missed fraud costs the
  mean training fraud amount), arg-max;
* **RWWCE, per sample**: ``RWWCELoss()(logits, y, sample_costs=c)``, arg-max (the reference arm).

For binary classes each element's loss is then its cross-entropy weighted by the cost of its own
mistake (the amount for a fraud, 5 for a legitimate transaction): there is no false-positive term
left. Each seed draws new data and a new initialisation, shared by all arms (a paired design). It
prints the test set's Real World Cost per transaction (mean and range over seeds; that of flagging
nothing for scale) and each arm's paired difference against the per-sample RWWCE arm: mean, 95% t
interval, two-sided paired t-test (:func:`rwwce.experiments.report.compare`), and in how many
seeds the per-sample arm costs less. Run::

    python examples/fraud_costs.py                      # 10 seeds, 10,000 train / 10,000 test
    python examples/fraud_costs.py --seeds 2 --samples 4000 --steps 50

Needs scipy (for the paired test).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import rwwce
from rwwce.experiments.report import compare
from rwwce.metrics import bayes_decision, real_world_cost

REVIEW_COST = 5.0
FRAUD_RATE = 0.02
MIN_SAMPLES = 500  # enough that every split holds frauds (none in 500 draws: p = 0.98^500 < 1e-4)
REFERENCE = "RWWCE, per sample"
ARMS = ("CE", "CE + Bayes", "class-weighted CE", "RWWCE, one matrix", REFERENCE)


def make_transactions(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, 5) float32, amounts (n,) float64) and labels (n,) int64, 1 = fraud.

    Legitimate log-amounts ~ N(3.5, 1.2) (median 33), fraudulent ~ N(4.3, 1.5) (median 74, a
    heavier tail); features ~ N(0, I) shifted by (0.9, -0.7, 0.5, 0, 0) for frauds."""
    y = (rng.random(n) < FRAUD_RATE).astype(np.int64)
    shift = np.array([0.9, -0.7, 0.5, 0.0, 0.0])
    x = rng.standard_normal((n, 5)) + y[:, None] * shift
    log_amount = np.where(y == 1, rng.normal(4.3, 1.5, n), rng.normal(3.5, 1.2, n))
    return (x.astype(np.float32), np.exp(log_amount)), y


def per_sample_costs(amount: torch.Tensor) -> torch.Tensor:
    """(N, 2) rows ``(amount, REVIEW_COST)``: the cost of predicting legitimate, then fraud."""
    return torch.stack([amount, torch.full_like(amount, REVIEW_COST)], dim=1)


def cost_matrices(amount: torch.Tensor) -> torch.Tensor:
    """(N, 2, 2) matrices C[n, truth, prediction]: the same costs for the metrics."""
    c = torch.zeros(len(amount), 2, 2, dtype=torch.float64)
    c[:, 1, 0], c[:, 0, 1] = amount, REVIEW_COST
    return c


def train(x, y, loss_fn, seed: int, steps: int, sample_costs=None) -> torch.nn.Linear:
    """Logistic regression (a 2-class softmax), ``steps`` full-batch Adam steps at lr 0.05."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    kwargs = {} if sample_costs is None else {"sample_costs": sample_costs}
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y, **kwargs).backward()
        opt.step()
    return model.eval().requires_grad_(False)


def run_seed(seed: int, samples: int, steps: int) -> dict[str, float]:
    """Every arm's test Real World Cost per transaction for one seed."""
    rng = np.random.default_rng(seed)
    (x_tr, a_tr), y_tr = make_transactions(samples, rng)
    (x_te, a_te), y_te = make_transactions(samples, rng)
    log_tr, log_te = np.log(a_tr), np.log(a_te)
    mu, sd = log_tr.mean(), log_tr.std()
    feats = lambda x, la: torch.as_tensor(  # noqa: E731
        np.column_stack([x, (la - mu) / sd]).astype(np.float32)
    )
    xt, xe = feats(x_tr, log_tr), feats(x_te, log_te)
    yt, ye = torch.as_tensor(y_tr), torch.as_tensor(y_te)
    if not (y_tr.any() and y_te.any()):
        raise ValueError(f"seed {seed} drew no fraud in {samples} transactions; use more samples")
    amount_tr = torch.as_tensor(a_tr, dtype=torch.float32)
    test_costs = cost_matrices(torch.as_tensor(a_te))
    cost = lambda pred: float(real_world_cost(ye, pred, test_costs))  # noqa: E731

    mean_fraud = float(amount_tr[yt == 1].mean())
    average = rwwce.CostMatrix([[0.0, REVIEW_COST], [mean_fraud, 0.0]])
    losses = {
        "CE": rwwce.RWWCELoss(),
        "class-weighted CE": rwwce.RWWCELoss(fn_weight=rwwce.class_weights(yt, num_classes=2)),
        "RWWCE, one matrix": rwwce.RWWCELoss.from_costs(average),
    }
    out: dict[str, float] = {}
    for arm, loss_fn in losses.items():
        logits = train(xt, yt, loss_fn, seed, steps)(xe)
        out[arm] = cost(logits.argmax(1))
        if arm == "CE":
            out["CE + Bayes"] = cost(bayes_decision(logits.softmax(1), test_costs))
    model = train(xt, yt, rwwce.RWWCELoss(), seed, steps, per_sample_costs(amount_tr))
    out[REFERENCE] = cost(model(xe).argmax(1))
    out["fraud rate"] = float(ye.double().mean())
    out["flag nothing"] = cost(torch.zeros_like(ye))
    return out


def main(seeds: int = 10, samples: int = 10_000, steps: int = 200) -> dict[str, list[float]]:
    torch.set_num_threads(1)  # a tiny model: threads only add overhead
    results: dict[str, list[float]] = {}
    for seed in range(seeds):
        for key, value in run_seed(seed, samples, steps).items():
            results.setdefault(key, []).append(value)

    print(
        f"Real World Cost per test transaction, {seeds} seeds x {samples:,} test transactions "
        f"(fraud rate {np.mean(results['fraud rate']):.2%}; a missed fraud costs its amount, "
        f"a false alarm {REVIEW_COST:g}; flagging nothing costs "
        f"{np.mean(results['flag nothing']):.3f}):"
    )
    print(
        f"  {'arm':<20} {'mean':>7}  {'min-max':>15}  {'per-sample - arm':>16}  "
        f"{'95% interval':>17}  {'p':>7}  per-sample cheaper"
    )
    ref = {s: {"": v} for s, v in enumerate(results[REFERENCE])}
    for arm in ARMS:
        v = np.array(results[arm])
        row = f"  {arm:<20} {v.mean():7.3f}  [{v.min():6.3f}, {v.max():6.3f}]"
        if arm == REFERENCE:
            print(row + f"  {'(reference)':>16}")
            continue
        c = compare(ref, {s: {"": x} for s, x in enumerate(v)})
        mean, lo, hi = c.diff
        wins = int((np.array(results[REFERENCE]) < v).sum())
        print(row + f"  {mean:+16.3f}  [{lo:+7.3f}, {hi:+7.3f}]  {c.p:7.2g}  {wins}/{seeds}")
    return results


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r}; expected an integer >= {low}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=_at_least(1), default=10, help="seeds (default 10)")
    parser.add_argument(
        "--samples",
        type=_at_least(MIN_SAMPLES),
        default=10_000,
        help=f"train and test transactions each, >= {MIN_SAMPLES} (default 10,000)",
    )
    parser.add_argument(
        "--steps", type=_at_least(1), default=200, help="full-batch Adam steps (default 200)"
    )
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    main(args.seeds, args.samples, args.steps)
