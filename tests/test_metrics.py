"""Real World Cost, decisions and calibration against scikit-learn, the paper and brute force."""

import itertools
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

import rwwce
from rwwce import metrics
from rwwce.costs import CostMatrix
from rwwce.metrics import (
    bayes_decision,
    confusion_matrix,
    expected_costs,
    real_world_benefit,
    real_world_cost,
    unweight_probabilities,
)

PAPER_COSTS = [[0.0, 100.0], [2000.0, 0.0]]  # FN 2000, FP 100


def paper_predictions():
    """The paper's binary notebook row: P=165, N=15767, TP=143, FN=22, TN=15750, FP=17."""
    y_true = np.array([1] * 143 + [1] * 22 + [0] * 15750 + [0] * 17)
    y_pred = np.array([1] * 143 + [0] * 22 + [0] * 15750 + [1] * 17)
    perm = np.random.default_rng(0).permutation(len(y_true))
    return y_true[perm], y_pred[perm]


def brute_cost(y_true, y_pred, c):
    return sum(c[t][p] for t, p in zip(y_true, y_pred, strict=True))


def softmax_rows(n, k, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, k, generator=g, dtype=torch.float64) * scale, dim=1)


# ---------------------------------------------------------------------------- import hygiene
def test_import_rwwce_does_not_import_heavy_optional_dependencies():
    code = (
        "import sys, rwwce; rwwce.metrics.real_world_cost([0], [0], [[0, 1], [1, 0]]);"
        "bad = [m for m in ('torchmetrics', 'sklearn', 'scipy', 'matplotlib') if m in sys.modules];"
        "assert not bad, bad;"
        "from rwwce.metrics import RealWorldCost;"
        "assert 'torchmetrics' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_metrics_module_exports():
    assert rwwce.metrics is metrics
    assert set(metrics.__all__) == {
        "RealWorldCost",
        "bayes_decision",
        "confusion_matrix",
        "cost_curve",
        "expected_costs",
        "make_cost_scorer",
        "plot_cost_curve",
        "plot_prediction_costs",
        "real_world_benefit",
        "real_world_cost",
        "unweight_probabilities",
    }
    assert "RealWorldCost" in dir(metrics)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        metrics.nope  # noqa: B018


# ---------------------------------------------------------------------------- confusion matrix
@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(
                st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=80
            ),
        )
    )
)
def test_confusion_matrix_equals_scikit_learn(k_pairs):
    k, pairs = k_pairs
    t, p = map(list, zip(*pairs, strict=True))
    got = confusion_matrix(t, p, k)
    assert got.dtype == torch.int64 and got.shape == (k, k)
    np.testing.assert_array_equal(got.numpy(), sk_confusion_matrix(t, p, labels=list(range(k))))


def test_confusion_matrix_input_forms():
    expected = [[1, 1], [0, 2]]
    t, p = [0, 0, 1, 1], [0, 1, 1, 1]
    assert confusion_matrix(t, p, 2).tolist() == expected
    assert confusion_matrix(np.array(t), torch.tensor(p), 2).tolist() == expected
    assert (
        confusion_matrix(torch.tensor(t).view(2, 2), torch.tensor(p).view(2, 2), 2).tolist()
        == expected
    )
    assert (
        confusion_matrix(np.array(t, dtype=bool), np.array(p, dtype=np.uint8), 2).tolist()
        == expected
    )
    assert confusion_matrix([], [], 3).tolist() == [[0] * 3] * 3


@pytest.mark.cuda
def test_confusion_matrix_on_cuda():
    t = torch.tensor([0, 1, 1], device="cuda")
    got = confusion_matrix(t, [0, 0, 1], 2)
    assert got.device.type == "cuda" and got.tolist() == [[1, 0], [1, 1]]
    cost = real_world_cost(
        t, torch.tensor([0, 0, 1], device="cuda"), torch.tensor(PAPER_COSTS).cuda()
    )
    assert cost.device.type == "cuda" and float(cost) == pytest.approx(2000 / 3)


@pytest.mark.parametrize(
    "t, p, k, exc, match",
    [
        (
            [0, 1],
            [0],
            2,
            ValueError,
            r"y_true has shape \(2,\) and y_pred has shape \(1,\); expected the same shape",
        ),
        (
            [0, 2],
            [0, 1],
            2,
            ValueError,
            r"y_true contains the label 2; expected class indices in \[0, 2\)",
        ),
        (
            [0, 1],
            [0, -1],
            2,
            ValueError,
            r"y_pred contains the label -1; expected class indices in \[0, 2\)",
        ),
        (
            [0, 1],
            [0.2, 0.9],
            2,
            TypeError,
            r"y_pred has dtype torch.float64; expected integer class indices",
        ),
        ([0, 1], [0, 1], 0, ValueError, r"num_classes is 0; expected a positive int"),
        ([0, 1], [0, 1], 2.0, ValueError, r"num_classes is 2.0"),
        ([0, 1], [[0, 1], [1]], 2, ValueError, r"y_pred could not be turned into an array"),
    ],
)
def test_confusion_matrix_errors(t, p, k, exc, match):
    with pytest.raises(exc, match=match):
        confusion_matrix(t, p, k)


# ---------------------------------------------------------------------------- real world cost
def test_paper_binary_notebook_row():
    y_true, y_pred = paper_predictions()
    cm = confusion_matrix(y_true, y_pred, 2)
    assert cm.tolist() == [[15750, 17], [22, 143]]
    for costs in (PAPER_COSTS, CostMatrix.binary(c_fn=2000, c_fp=100), torch.tensor(PAPER_COSTS)):
        cost = real_world_cost(y_true, y_pred, costs)
        assert cost.dtype == torch.float64 and cost.ndim == 0
        assert float(cost) == pytest.approx(2.868441, abs=5e-7)
    total = real_world_cost(y_true, y_pred, PAPER_COSTS, reduction="sum")
    assert float(total) == 22 * 2000 + 17 * 100


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 5).flatmap(
        lambda k: st.tuples(
            st.lists(
                st.lists(st.floats(0, 100, allow_subnormal=False), min_size=k, max_size=k),
                min_size=k,
                max_size=k,
            ),
            st.lists(
                st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=50
            ),
        )
    )
)
def test_real_world_cost_equals_brute_force(c_pairs):
    c, pairs = c_pairs  # includes non-zero diagonals: correct decisions may cost too
    t, p = map(list, zip(*pairs, strict=True))
    total = brute_cost(t, p, c)
    assert float(real_world_cost(t, p, c, reduction="sum")) == pytest.approx(
        total, rel=1e-9, abs=1e-9
    )
    assert float(real_world_cost(t, p, c)) == pytest.approx(total / len(t), rel=1e-9, abs=1e-9)


def test_real_world_cost_errors():
    with pytest.raises(ValueError, match=r"y_true is empty; expected at least one sample"):
        real_world_cost([], [], PAPER_COSTS)
    with pytest.raises(ValueError, match=r"reduction must be one of 'mean', 'sum'; got 'none'"):
        real_world_cost([0], [0], PAPER_COSTS, reduction="none")
    with pytest.raises(
        ValueError, match=r"y_true contains the label 2; expected class indices in \[0, 2\)"
    ):
        real_world_cost([2], [0], PAPER_COSTS)
    with pytest.raises(ValueError, match=r"costs has shape \(2, 3\)"):
        real_world_cost([0], [0], np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"costs\[1, 0\] is -2000.0"):
        real_world_cost([0], [0], [[0, 1], [-2000, 0]])


def test_real_world_benefit_paper_row():
    y_true, y_pred = paper_predictions()
    n = len(y_true)
    got = real_world_benefit(y_true, y_pred, PAPER_COSTS)
    # all-negative baseline costs 165 * 2000; the model costs 22 * 2000 + 17 * 100
    assert float(got) == pytest.approx((165 * 2000 - (22 * 2000 + 17 * 100)) / n, rel=1e-12)
    assert float(got) == pytest.approx((143 * 2000 - 17 * 100) / n, rel=1e-12)  # TP c_fn - FP c_fp
    assert (
        float(real_world_benefit(y_true, y_pred, PAPER_COSTS, reduction="sum"))
        == 143 * 2000 - 17 * 100
    )


def test_real_world_benefit_definitions():
    y_true, _ = paper_predictions()
    n = len(y_true)
    # doing nothing saves nothing, a perfect model saves every missed positive
    assert float(real_world_benefit(y_true, np.zeros_like(y_true), PAPER_COSTS)) == 0.0
    assert float(real_world_benefit(y_true, y_true, PAPER_COSTS)) == pytest.approx(165 * 2000 / n)
    # crying wolf on everything is worse than doing nothing
    assert float(real_world_benefit(y_true, np.ones_like(y_true), PAPER_COSTS)) < 0


@settings(max_examples=30, deadline=None)
@given(
    st.integers(2, 4).flatmap(
        lambda k: st.tuples(
            st.lists(
                st.lists(st.floats(0, 50, allow_subnormal=False), min_size=k, max_size=k),
                min_size=k,
                max_size=k,
            ),
            st.lists(
                st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=40
            ),
            st.integers(0, k - 1),
        )
    )
)
def test_real_world_benefit_is_baseline_cost_minus_model_cost(args):
    c, pairs, base = args
    t, p = map(list, zip(*pairs, strict=True))
    expected = (brute_cost(t, [base] * len(t), c) - brute_cost(t, p, c)) / len(t)
    got = real_world_benefit(t, p, c, baseline=base)
    assert float(got) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_real_world_benefit_errors():
    with pytest.raises(ValueError, match=r"baseline is 2; expected a class index in \[0, 2\)"):
        real_world_benefit([0], [0], PAPER_COSTS, baseline=2)
    with pytest.raises(ValueError, match=r"reduction must be one of 'mean', 'sum'; got 'x'"):
        real_world_benefit([0], [0], PAPER_COSTS, reduction="x")


# ---------------------------------------------------------------------------- decisions
def brute_expected(p, c):
    n, k = p.shape
    return np.array(
        [[sum(p[s, i] * c[i][j] for i in range(k)) for j in range(k)] for s in range(n)]
    )


@pytest.mark.parametrize("k", [2, 3, 5])
def test_expected_costs_and_bayes_decision_by_enumeration(k):
    rng = np.random.default_rng(k)
    c = rng.uniform(0, 10, size=(k, k)).round(1)
    p = softmax_rows(200, k, seed=k).numpy()
    exp = expected_costs(p, c)
    assert exp.shape == (200, k) and exp.dtype == torch.float64
    np.testing.assert_allclose(exp.numpy(), brute_expected(p, c), rtol=1e-12)
    dec = bayes_decision(p, c)
    assert dec.dtype == torch.int64 and dec.shape == (200,)
    # enumerate all decisions per sample; the chosen one must attain the minimum
    for s in range(200):
        costs_of = [sum(p[s, i] * c[i, j] for i in range(k)) for j in range(k)]
        assert costs_of[int(dec[s])] == pytest.approx(min(costs_of), rel=1e-12)
    # and over whole decision vectors: no other policy has a lower expected total cost
    best_total = exp.gather(1, dec[:, None]).sum()
    for policy in itertools.islice(itertools.product(range(k), repeat=3), 50):
        other = torch.tensor(policy).repeat(200 // 3 + 1)[:200]
        assert exp.gather(1, other[:, None]).sum() >= best_total - 1e-9


def test_bayes_decision_ties_go_to_the_lower_index():
    assert bayes_decision([[0.5, 0.5]], [[0, 1], [1, 0]]).tolist() == [0]
    assert bayes_decision([[1 / 3, 1 / 3, 1 / 3]], np.ones((3, 3)) - np.eye(3)).tolist() == [0]


def test_binary_threshold_rule():
    c_fn, c_fp = 2000.0, 100.0
    thr = c_fp / (c_fp + c_fn)
    p = torch.tensor([0.0, thr - 1e-6, thr, thr + 1e-6, 0.5, 1.0], dtype=torch.float64)
    expected = [0, 0, 0, 1, 1, 1]
    assert bayes_decision(p, CostMatrix.binary(c_fn, c_fp)).tolist() == expected
    # (N,) and (N, 2) forms agree away from the threshold
    q = torch.rand(1000, dtype=torch.float64)
    q = q[(q - thr).abs() > 1e-9]
    two = torch.stack([1 - q, q], dim=1)
    assert torch.equal(bayes_decision(q, PAPER_COSTS), bayes_decision(two, PAPER_COSTS))
    assert torch.equal(bayes_decision(q, PAPER_COSTS), (q > thr).long())
    np.testing.assert_allclose(
        expected_costs(q, PAPER_COSTS).numpy(), expected_costs(two, PAPER_COSTS).numpy()
    )
    # all-zero costs: nothing to gain, predict negative
    assert bayes_decision(q[:5], [[0, 0], [0, 0]]).tolist() == [0] * 5


def test_binary_with_nonzero_diagonal_uses_expected_costs():
    c = [[1.0, 3.0], [10.0, 2.0]]  # predict 1 iff 10p + (1-p) > 2p + 3(1-p) iff p > 0.2
    p = torch.tensor([0.1, 0.19, 0.21, 0.9], dtype=torch.float64)
    assert bayes_decision(p, c).tolist() == [0, 0, 1, 1]


def test_bayes_decision_lowers_the_realised_cost():
    """On labels drawn from p, deciding by expected cost beats argmax in Real World Cost."""
    g = torch.Generator().manual_seed(1)
    p = softmax_rows(20000, 3, seed=3)
    y = torch.multinomial(p, 1, generator=g).squeeze(1)
    c = [[0, 1, 1], [5, 0, 1], [50, 10, 0]]
    cost_bayes = real_world_cost(y, bayes_decision(p, c), c)
    cost_argmax = real_world_cost(y, p.argmax(1), c)
    assert float(cost_bayes) < 0.8 * float(cost_argmax)


@pytest.mark.parametrize(
    "probs, costs, match",
    [
        (
            [[0.5, 0.6]],
            PAPER_COSTS,
            r"probs\[0\] sums to 1.1; expected each row to sum to 1 .* softmax",
        ),
        ([[2.0, -1.0]], PAPER_COSTS, r"probs contains negative, NaN or infinite values"),
        ([[float("nan"), 1.0]], PAPER_COSTS, r"probs contains negative, NaN or infinite values"),
        (
            [[0.2, 0.3, 0.5]],
            PAPER_COSTS,
            r"probs has shape \(1, 3\); expected \(N, 2\) .* or \(N,\)",
        ),
        (
            [0.2, 1.3],
            PAPER_COSTS,
            r"probs contains 1.3\d*; expected probabilities in \[0, 1\] .*sigmoid",
        ),
        ([0.2, 0.3], np.ones((3, 3)), r"probs has shape \(2,\) .* but costs has 3 classes"),
        (np.ones((2, 2, 2)) / 2, PAPER_COSTS, r"probs has shape \(2, 2, 2\)"),
    ],
)
@pytest.mark.parametrize("fn", [expected_costs, bayes_decision])
def test_probability_validation(fn, probs, costs, match):
    with pytest.raises(ValueError, match=match):
        fn(probs, costs)


def test_half_precision_probabilities_are_accepted():
    p = torch.softmax(torch.randn(64, 7), dim=1).half()
    c = np.ones((7, 7)) - np.eye(7)
    exp = expected_costs(p, c)
    assert exp.dtype == torch.float32
    np.testing.assert_allclose(
        exp.numpy(), (p.double() @ torch.tensor(c)).numpy(), rtol=1e-6, atol=1e-6
    )


# ---------------------------------------------------------------------------- calibration
def weighted_binary(p, fn, fp):
    return fn * p / (fn * p + fp * (1 - p))


def test_unweight_inverts_the_binary_minimiser_exactly():
    p = torch.linspace(0, 1, 101, dtype=torch.float64)
    for fn, fp in [(3.0, 1.0), (1.0, 7.0), (2000.0, 100.0)]:
        q = weighted_binary(p, fn, fp)
        back = unweight_probabilities(q, fn, fp)
        assert back.dtype == torch.float64 and back.shape == p.shape
        torch.testing.assert_close(back, p, rtol=1e-12, atol=1e-12)
    # fp_weight=None means 1 in the binary case
    torch.testing.assert_close(unweight_probabilities(weighted_binary(p, 4.0, 1.0), 4.0), p)
    assert unweight_probabilities([0.5], 3.0, 1.0).tolist() == pytest.approx([0.25])


def test_unweight_inverts_the_multiclass_minimisers_exactly():
    p = softmax_rows(50, 4, seed=5)
    fn = torch.tensor([1.0, 5.0, 0.5, 20.0], dtype=torch.float64)
    q = fn * p / (fn * p).sum(dim=1, keepdim=True)
    torch.testing.assert_close(unweight_probabilities(q, fn), p)
    torch.testing.assert_close(unweight_probabilities(q, torch.diag(fn)), p)  # diagonal form
    torch.testing.assert_close(unweight_probabilities(q, fn, torch.zeros(4, 4)), p)  # no FP term
    # two classes with an FP term fold into effective weights fn_k + FP[k, 1 - k]
    p2 = softmax_rows(50, 2, seed=6)
    fn2, fp2 = torch.tensor([2.0, 3.0]), torch.tensor([[0.0, 4.0], [1.0, 0.0]])
    w = fn2.double() + torch.tensor([4.0, 1.0], dtype=torch.float64)
    q2 = w * p2 / (w * p2).sum(dim=1, keepdim=True)
    torch.testing.assert_close(unweight_probabilities(q2, fn2, fp2), p2)
    # the (K,) FP form: FP[t, j] = v[j]
    torch.testing.assert_close(unweight_probabilities(q2, fn2, torch.tensor([1.0, 4.0])), p2)


def _fit(loss_fn, x, y, num_params):
    torch.manual_seed(0)
    params = torch.zeros(num_params, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [params],
        lr=1,
        max_iter=200,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = loss_fn(params, x, y)
        loss.backward()
        return loss

    opt.step(closure)
    return params.detach()


def test_unweight_recovers_calibration_of_a_trained_binary_model():
    """Fit a 1-feature logistic model with binary RWWCE (fn=5, fp=1) on data whose true
    P(y=1 | x) is known; its raw probabilities lean positive, unweighting recovers the truth."""
    g = torch.Generator().manual_seed(0)
    n = 100_000
    x = torch.randn(n, generator=g, dtype=torch.float64)
    true_p = torch.sigmoid(1.5 * x - 1.0)
    y = torch.bernoulli(true_p, generator=g)
    fn, fp = 5.0, 1.0

    def loss(params, x, y):
        z = params[0] * x + params[1]
        return rwwce.binary_real_world_weight_cross_entropy(z, y, fn, fp)

    params = _fit(loss, x, y, 2)
    grid = torch.linspace(-2.5, 2.5, 51, dtype=torch.float64)
    q = torch.sigmoid(params[0] * grid + params[1])
    p_true = torch.sigmoid(1.5 * grid - 1.0)
    assert (q - p_true).abs().max() > 0.2  # the weighted model is badly calibrated ...
    p_hat = unweight_probabilities(q, fn, fp)
    assert (p_hat - p_true).abs().max() < 0.02  # ... and unweighting fixes it


def test_unweight_recovers_calibration_of_a_trained_multiclass_model():
    g = torch.Generator().manual_seed(1)
    n, k = 40_000, 3
    x = torch.randn(n, generator=g, dtype=torch.float64)
    slopes, offsets = torch.tensor([-2.0, 0.0, 2.0]), torch.tensor([0.0, 0.5, -0.5])
    true_logits = lambda v: v[:, None] * slopes + offsets  # noqa: E731
    y = torch.multinomial(torch.softmax(true_logits(x), 1), 1, generator=g).squeeze(1)
    fn = torch.tensor([1.0, 6.0, 0.5], dtype=torch.float64)

    def loss(params, x, y):
        z = x[:, None] * params[:k] + params[k:]
        return rwwce.real_world_weight_cross_entropy(z, y, fn)

    params = _fit(loss, x, y, 2 * k)
    grid = torch.linspace(-2, 2, 41, dtype=torch.float64)
    q = torch.softmax(grid[:, None] * params[:k] + params[k:], 1)
    p_true = torch.softmax(true_logits(grid), 1)
    assert (q - p_true).abs().max() > 0.15
    assert (unweight_probabilities(q, fn) - p_true).abs().max() < 0.03


@pytest.mark.parametrize(
    "probs, fn, fp, exc, match",
    [
        (
            softmax_rows(3, 3),
            [1.0, 2.0, 3.0],
            np.ones((3, 3)) - np.eye(3),
            NotImplementedError,
            r"3-class model trained with an FP term has no closed-form inverse",
        ),
        (
            softmax_rows(3, 3),
            [1.0, 2.0, 3.0],
            [1.0, 1.0, 1.0],
            NotImplementedError,
            r"no closed-form inverse",
        ),
        (
            softmax_rows(3, 3),
            [1.0, 0.0, 3.0],
            None,
            ValueError,
            r"fn_weight is \[1.0, 0.0, 3.0\]; expected finite weights > 0",
        ),
        (
            softmax_rows(3, 3),
            [1.0, 2.0],
            None,
            ValueError,
            r"fn_weight has shape \(2,\); expected \(3,\)",
        ),
        (
            softmax_rows(3, 3),
            [[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            None,
            ValueError,
            r"non-zero off-diagonal",
        ),
        (
            softmax_rows(3, 3),
            [1.0, 2.0, 3.0],
            np.ones((2, 2)),
            ValueError,
            r"fp_weight has shape \(2, 2\)",
        ),
        (
            [0.2, 0.5],
            [1.0, 2.0],
            None,
            ValueError,
            r"fn_weight has shape \(2,\); expected a scalar",
        ),
        ([0.2, 0.5], 0.0, None, ValueError, r"fn_weight is 0.0; expected a finite weight > 0"),
        ([0.2, 0.5], 1.0, -1.0, ValueError, r"fp_weight is -1.0; expected a finite weight > 0"),
        (
            [0.2, 1.5],
            1.0,
            1.0,
            ValueError,
            r"probs contains 1.5; expected probabilities in \[0, 1\]",
        ),
        ([[0.2, 0.5]], [1.0, 1.0], None, ValueError, r"probs\[0\] sums to 0.7"),
        ([1, 0], 1.0, 1.0, TypeError, r"probs has dtype torch.int64; expected floating-point"),
        (np.full((2, 2, 2), 0.5), [1.0, 1.0], None, ValueError, r"probs has shape \(2, 2, 2\)"),
    ],
)
def test_unweight_errors(probs, fn, fp, exc, match):
    with pytest.raises(exc, match=match):
        unweight_probabilities(probs, fn, fp)


# ---------------------------------------------------------------------------- RealWorldCost
def test_real_world_cost_metric_accumulates_batches():
    from rwwce.metrics import RealWorldCost

    y_true, y_pred = paper_predictions()
    metric = RealWorldCost(CostMatrix.binary(2000, 100))
    for chunk in np.array_split(np.arange(len(y_true)), 7):
        metric.update(torch.from_numpy(y_pred[chunk]), torch.from_numpy(y_true[chunk]))
    assert float(metric.compute()) == pytest.approx(2.868441, abs=5e-7)
    assert metric.confmat.tolist() == [[15750, 17], [22, 143]]
    metric.reset()
    assert metric.confmat.sum() == 0
    metric.update(torch.tensor([1]), torch.tensor([0]))
    assert float(metric.compute()) == 100.0


def test_real_world_cost_metric_scores_and_decisions():
    from rwwce.metrics import RealWorldCost

    c = [[0, 1, 1], [5, 0, 1], [50, 10, 0]]
    probs = softmax_rows(300, 3, seed=9).float()
    target = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(2)).squeeze(1)
    argmax_metric = RealWorldCost(c)
    argmax_metric.update(torch.log(probs), target)  # logits: argmax is the same
    torch.testing.assert_close(argmax_metric.compute(), real_world_cost(target, probs.argmax(1), c))
    bayes_metric = RealWorldCost(c, decision="bayes", reduction="sum")
    bayes_metric.update(probs, target)
    torch.testing.assert_close(
        bayes_metric.compute(),
        real_world_cost(target, bayes_decision(probs, c), c, reduction="sum"),
    )


def test_real_world_cost_metric_segmentation_shapes():
    from rwwce.metrics import RealWorldCost

    c = np.array([[0, 2, 3], [1, 0, 1], [4, 4, 0]])
    scores = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    metric = RealWorldCost(c)
    metric.update(scores, target)
    torch.testing.assert_close(metric.compute(), real_world_cost(target, scores.argmax(1), c))
    bayes = RealWorldCost(c, decision="bayes")
    probs = scores.softmax(1)
    bayes.update(probs, target)
    expected_pred = bayes_decision(probs.movedim(1, -1).reshape(-1, 3), c).reshape(2, 4, 5)
    torch.testing.assert_close(bayes.compute(), real_world_cost(target, expected_pred, c))


def test_real_world_cost_metric_errors():
    from rwwce.metrics import RealWorldCost

    with pytest.raises(ValueError, match=r"reduction must be one of 'mean', 'sum'; got 'none'"):
        RealWorldCost(PAPER_COSTS, reduction="none")
    with pytest.raises(ValueError, match=r"decision is 'max'"):
        RealWorldCost(PAPER_COSTS, decision="max")
    with pytest.raises(ValueError, match=r"costs has shape \(3,\)"):
        RealWorldCost([1, 2, 3])
    metric = RealWorldCost(PAPER_COSTS)
    with pytest.raises(
        ValueError, match=r"target contains the label 2; expected class indices in \[0, 2\)"
    ):
        metric.update(torch.tensor([0, 1]), torch.tensor([0, 2]))
    with pytest.raises(
        ValueError,
        match=r"preds has shape \(2, 3\) and target \(2,\); expected scores of shape \(N, 2, ...\)",
    ):
        metric.update(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"preds has shape \(3,\) and target \(2,\)"):
        metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"preds has dtype torch.float32 and the target's shape"):
        metric.update(torch.tensor([0.2, 0.9]), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"target has dtype torch.float32"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0.0, 1.0]))
    assert metric.confmat.sum() == 0  # failed updates add nothing


# ---------------------------------------------------------------------------- per-sample costs
def brute_sample_cost(t, p, c):
    return sum(c[n][t[n]][p[n]] for n in range(len(t)))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 4), st.integers(1, 30), st.integers(0, 2**32 - 1), st.booleans())
def test_per_sample_costs_equal_brute_force(k, n, seed, integral):
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, 100, size=(n, k, k))
    c = (c.round() if integral else c).tolist()
    t, p = rng.integers(0, k, n).tolist(), rng.integers(0, k, n).tolist()
    base = int(rng.integers(0, k))
    total = brute_sample_cost(t, p, c)
    got = real_world_cost(t, p, c, reduction="sum")
    assert got.dtype == torch.float64 and float(got) == pytest.approx(total, rel=1e-9, abs=1e-9)
    assert float(real_world_cost(t, p, np.array(c))) == pytest.approx(total / n, rel=1e-9, abs=1e-9)
    saved = brute_sample_cost(t, [base] * n, c) - total
    assert float(
        real_world_benefit(t, p, torch.tensor(c, dtype=torch.float64), baseline=base)
    ) == pytest.approx(saved / n, rel=1e-9, abs=1e-9)


def test_per_sample_costs_with_one_matrix_repeated_equal_the_matrix():
    y_true, y_pred = paper_predictions()
    repeated = np.broadcast_to(np.array(PAPER_COSTS), (len(y_true), 2, 2))
    assert float(real_world_cost(y_true, y_pred, repeated)) == pytest.approx(2.868441, abs=5e-7)


def test_per_sample_costs_broadcast_over_extra_dimensions():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 3, (4, 5, 6), generator=g)
    p = torch.randint(0, 3, (4, 5, 6), generator=g)
    c = torch.rand(4, 3, 3, generator=g, dtype=torch.float64)
    brute = sum(
        float(c[n, t[n, i, j], p[n, i, j]]) for n in range(4) for i in range(5) for j in range(6)
    )
    assert float(real_world_cost(t, p, c, reduction="sum")) == pytest.approx(brute, rel=1e-12)
    assert float(real_world_cost(t, p, c)) == pytest.approx(brute / t.numel(), rel=1e-12)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_per_sample_expected_costs_and_decisions_by_enumeration(k):
    rng = np.random.default_rng(k)
    n = 60
    c = rng.uniform(0, 10, size=(n, k, k))
    p = softmax_rows(n, k, seed=k).numpy()
    exp = expected_costs(p, c)
    brute = np.array(
        [[sum(p[s, i] * c[s, i, j] for i in range(k)) for j in range(k)] for s in range(n)]
    )
    np.testing.assert_allclose(exp.numpy(), brute, rtol=1e-12)
    np.testing.assert_array_equal(bayes_decision(p, c).numpy(), brute.argmin(1))


def test_per_sample_binary_thresholds():
    """A missed fraud costs its amount, a false alarm 5: flag when p * amount > (1 - p) * 5."""
    g = torch.Generator().manual_seed(3)
    amount = torch.rand(500, generator=g, dtype=torch.float64) * 1000
    p = torch.rand(500, generator=g, dtype=torch.float64)
    c = torch.zeros(500, 2, 2, dtype=torch.float64)
    c[:, 1, 0], c[:, 0, 1] = amount, 5.0
    thr = 5.0 / (5.0 + amount)
    keep = (p - thr).abs() > 1e-9
    assert torch.equal(bayes_decision(p, c)[keep], (p > thr).long()[keep])
    assert torch.equal(bayes_decision(torch.stack([1 - p, p], 1), c)[keep], (p > thr).long()[keep])


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: real_world_cost([0, 1], [0, 1], np.zeros((3, 2, 2))),
            r"costs has shape \(3, 2, 2\) \(3 per-sample matrices\) but y_true has 2 samples",
        ),
        (
            lambda: expected_costs(softmax_rows(4, 2), np.zeros((3, 2, 2))),
            r"costs has shape \(3, 2, 2\) \(3 per-sample matrices\) but probs has 4 samples",
        ),
        (
            lambda: bayes_decision([0.2, 0.7], np.zeros((3, 2, 2))),
            r"but probs has 2 samples",
        ),
        (
            lambda: real_world_cost([0, 1], [0, 1], np.zeros((2, 2, 3))),
            r"costs has shape \(2, 2, 3\); expected \(N, K, K\) per-sample cost matrices",
        ),
        (
            lambda: real_world_cost([0, 1], [0, 1], [[[0, 1], [1, 0]], [[0, -1.5], [1, 0]]]),
            r"costs\[1, 0, 1\] is -1.5; expected a finite cost >= 0",
        ),
        (
            lambda: real_world_cost([0, 2], [0, 1], np.zeros((2, 2, 2))),
            r"y_true contains the label 2",
        ),
        (
            lambda: real_world_cost([0, 1], [0, 1], np.zeros((2, 2, 2, 2))),
            r"costs has shape \(2, 2, 2, 2\); expected a \(K, K\) cost matrix or \(N, K, K\)",
        ),
    ],
)
def test_per_sample_cost_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_real_world_cost_metric_per_sample_costs():
    from rwwce.metrics import RealWorldCost

    g = torch.Generator().manual_seed(4)
    n, k = 300, 3
    c = torch.rand(n, k, k, generator=g, dtype=torch.float64) * 10
    probs = softmax_rows(n, k, seed=11)
    target = torch.multinomial(probs, 1, generator=g).squeeze(1)
    for decision, pred in (
        ("argmax", probs.argmax(1)),
        ("bayes", bayes_decision(probs, c)),
    ):
        metric = RealWorldCost(num_classes=k, decision=decision)
        for chunk in torch.arange(n).split(70):
            metric.update(probs[chunk], target[chunk], c[chunk])
        torch.testing.assert_close(metric.compute(), real_world_cost(target, pred, c))
        assert metric.confmat.tolist() == confusion_matrix(target, pred, k).tolist()
    # class-index predictions, 'sum'
    metric = RealWorldCost(num_classes=k, reduction="sum")
    metric.update(target, target, c)
    metric.update(torch.zeros(n, dtype=torch.long), target, c)
    expected = real_world_cost(target, torch.zeros(n, dtype=torch.long), c, reduction="sum")
    torch.testing.assert_close(
        metric.compute(), expected + real_world_cost(target, target, c, reduction="sum")
    )


def test_real_world_cost_metric_per_sample_segmentation():
    from rwwce.metrics import RealWorldCost

    scores = torch.randn(2, 3, 4, 5).softmax(1)
    target = torch.randint(0, 3, (2, 4, 5))
    c = torch.rand(2, 3, 3, dtype=torch.float64)
    metric = RealWorldCost(num_classes=3, decision="bayes")
    metric.update(scores, target, c)
    rows = scores.movedim(1, -1)
    pred = torch.stack(
        [bayes_decision(rows[i].reshape(-1, 3), c[i]).reshape(4, 5) for i in range(2)]
    )
    torch.testing.assert_close(metric.compute(), real_world_cost(target, pred, c))


def test_real_world_cost_metric_per_sample_errors():
    from rwwce.metrics import RealWorldCost

    with pytest.raises(ValueError, match=r"costs is None and num_classes is None"):
        RealWorldCost()
    with pytest.raises(ValueError, match=r"per-sample costs go to each update"):
        RealWorldCost(np.zeros((4, 2, 2)))
    metric = RealWorldCost(num_classes=2)
    with pytest.raises(ValueError, match=r"costs is None; this RealWorldCost was built for"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"costs has shape \(3, 2, 2\); expected \(2, 2, 2\)"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match=r"costs\[0, 1, 0\] is nan"):
        bad = torch.zeros(2, 2, 2)
        bad[0, 1, 0] = float("nan")
        metric.update(torch.tensor([0, 1]), torch.tensor([0, 1]), bad)
    with pytest.raises(ValueError, match=r"has a fixed cost matrix"):
        RealWorldCost(PAPER_COSTS).update(
            torch.tensor([0, 1]), torch.tensor([0, 1]), torch.zeros(2, 2, 2)
        )
    assert metric.confmat.sum() == 0 and float(metric.cost_sum) == 0


# ---------------------------------------------------------------------------- no host syncs
@pytest.fixture
def forbid_host_reads(monkeypatch):
    """Call it to make every Tensor -> Python conversion (what synchronises a GPU) raise."""

    def forbid(name):
        def raiser(*args, **kwargs):
            raise AssertionError(f"{name} read tensor data on the host")

        return raiser

    def activate():
        for name in (
            "item",
            "tolist",
            "__bool__",
            "__int__",
            "__float__",
            "__index__",
            "nonzero",
            "unique",
            "bincount",
        ):
            monkeypatch.setattr(torch.Tensor, name, forbid(f"Tensor.{name}"))
        for name in ("bincount", "nonzero", "unique"):
            monkeypatch.setattr(torch, name, forbid(f"torch.{name}"))

    return activate


@pytest.mark.parametrize("decision", ["argmax", "bayes"])
def test_real_world_cost_update_reads_nothing_on_the_host(decision, forbid_host_reads, monkeypatch):
    """The design check that the CUDA test below confirms with set_sync_debug_mode: with data
    checks off (as on an accelerator), update touches no tensor value from Python."""
    from rwwce.metrics import RealWorldCost

    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.97, 0.03]])
    target = torch.tensor([1, 1, 0])
    per_sample_costs = torch.tensor(PAPER_COSTS).expand(3, 2, 2)
    metric = RealWorldCost(PAPER_COSTS, decision=decision, validate_args=False)
    per_sample = RealWorldCost(num_classes=2, decision=decision, validate_args=False)
    forbid_host_reads()
    for _ in range(2):
        metric.update(probs, target)
        metric.update(target, target)
        per_sample.update(probs, target, per_sample_costs)
    cost, cost_per_sample = metric.compute(), per_sample.compute()
    with pytest.raises(AssertionError, match="read tensor data on the host"):
        bool(cost)  # the patch is active
    monkeypatch.undo()
    # bayes: 0.1 > 100 / 2100 flags the first row too; argmax misses it (a 2000 miss)
    pred = torch.tensor([0, 1, 0]) if decision == "argmax" else torch.tensor([1, 1, 0])
    expected = (real_world_cost(target, pred, PAPER_COSTS) + 0) / 2
    assert float(cost) == pytest.approx(float(expected))
    assert float(cost_per_sample) == pytest.approx(2 * float(expected))


THREE_COSTS = [[0.0, 1.0, 5.0], [2.0, 0.0, 1.0], [50.0, 20.0, 0.0]]


@pytest.mark.parametrize("per_sample", [False, True])
def test_real_world_cost_metric_skips_ignore_index_like_the_loss(per_sample):
    from rwwce.metrics import RealWorldCost

    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 3, (40,), generator=g)
    target[[1, 5, 6, 30]] = -100
    preds = torch.randn(40, 3, generator=g)
    keep = target != -100
    # Oracle: the function on the kept elements only (sklearn-checked confusion counts).
    want = real_world_cost(target[keep], preds.argmax(1)[keep], THREE_COSTS)
    if per_sample:
        metric = RealWorldCost(num_classes=3)
        metric.update(preds, target, torch.tensor(THREE_COSTS).expand(40, 3, 3))
    else:
        metric = RealWorldCost(THREE_COSTS)
        metric.update(preds, target)
    assert int(metric.confmat.sum()) == 36 and int(metric.invalid) == 0
    assert float(metric.compute()) == pytest.approx(float(want))
    custom = RealWorldCost(THREE_COSTS, ignore_index=2)
    custom.update(preds[keep], target[keep])
    kept2 = target[keep] != 2
    want2 = real_world_cost(target[keep][kept2], preds[keep].argmax(1)[kept2], THREE_COSTS)
    assert float(custom.compute()) == pytest.approx(float(want2))


def test_real_world_cost_metric_label_rule():
    from rwwce.metrics import RealWorldCost

    preds = torch.tensor([0, 1, 2])
    with pytest.raises(
        ValueError,
        match=r"target contains the label 9; expected class indices in \[0, 3\) \(or ignore_index=-100\)",
    ):
        RealWorldCost(THREE_COSTS).update(preds, torch.tensor([0, 9, 1]))
    with pytest.raises(
        ValueError, match=r"target contains the label -100; expected class indices in \[0, 3\)$"
    ):
        RealWorldCost(THREE_COSTS, ignore_index=None).update(preds, torch.tensor([0, -100, 1]))
    with pytest.raises(ValueError, match=r"preds contains the label 3"):
        RealWorldCost(THREE_COSTS).update(torch.tensor([0, 3, 1]), torch.tensor([0, 1, 1]))
    with pytest.raises(TypeError, match=r"ignore_index is 'x'; expected an int or None"):
        RealWorldCost(THREE_COSTS, ignore_index="x")
    # Unchecked (an accelerator's path): the invalid label makes the cost NaN, the ignored one not.
    unchecked = RealWorldCost(THREE_COSTS, validate_args=False)
    unchecked.update(preds, torch.tensor([0, -100, 1]))
    assert int(unchecked.invalid) == 0 and float(unchecked.compute()) == pytest.approx(0.5)
    unchecked.update(preds, torch.tensor([0, 9, 1]))
    assert int(unchecked.invalid) == 1 and torch.isnan(unchecked.compute())


def test_real_world_cost_unchecked_labels_give_nan_not_a_crash():
    from rwwce.metrics import RealWorldCost

    metric = RealWorldCost(PAPER_COSTS, validate_args=False)
    metric.update(torch.tensor([0, 5, 1, -1]), torch.tensor([1, 1, 7, 0]))
    assert metric.confmat.tolist() == [[0, 0], [1, 0]] and int(metric.invalid) == 3
    assert torch.isnan(metric.compute())
    metric.reset()
    metric.update(torch.tensor([0, 1]), torch.tensor([1, 1]))
    assert float(metric.compute()) == 1000.0


@pytest.mark.cuda
@pytest.mark.parametrize("decision", ["argmax", "bayes"])
def test_real_world_cost_update_never_synchronises_on_cuda(decision):
    from rwwce.metrics import RealWorldCost

    metric = RealWorldCost(PAPER_COSTS, decision=decision).cuda()
    per_sample = RealWorldCost(num_classes=2, decision=decision).cuda()
    probs = torch.softmax(torch.randn(64, 2, device="cuda"), 1)
    target = torch.randint(0, 2, (64,), device="cuda")
    costs = torch.tensor(PAPER_COSTS, device="cuda").expand(64, 2, 2)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            metric.update(probs, target)
            metric.update(probs.argmax(1), target)
            per_sample.update(probs, target, costs)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    pred = probs.argmax(1) if decision == "argmax" else bayes_decision(probs, PAPER_COSTS)
    expected = (
        real_world_cost(target, pred, PAPER_COSTS) * 3
        + 3 * real_world_cost(target, probs.argmax(1), PAPER_COSTS)
    ) / 6
    torch.testing.assert_close(metric.compute().cpu(), expected.cpu())
    torch.testing.assert_close(
        per_sample.compute().cpu(), real_world_cost(target, pred, PAPER_COSTS).cpu()
    )


# ---------------------------------------------------------------------------- scorer
def test_cost_scorer_is_minus_the_real_world_cost():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 2))
    y = (x[:, 0] + rng.normal(size=600) > 0.8).astype(int)
    c = [[0, 1], [12, 0]]
    scorer = metrics.make_cost_scorer(c)
    model = LogisticRegression().fit(x, y)
    pred = model.predict(x)
    assert scorer(model, x, y) == pytest.approx(-float(real_world_cost(y, pred, c)), rel=1e-12)
    w = rng.uniform(0, 3, 600)
    brute = sum(w[n] * c[y[n]][pred[n]] for n in range(600)) / w.sum()
    assert scorer(model, x, y, sample_weight=w) == pytest.approx(-brute, rel=1e-12)
    scores = cross_val_score(LogisticRegression(), x, y, cv=3, scoring=scorer)
    assert (scores <= 0).all()
    restored = pickle.loads(pickle.dumps(scorer))  # GridSearchCV(n_jobs=...) pickles it
    assert restored(model, x, y) == scorer(model, x, y)


def test_cost_scorer_tunes_a_threshold():
    """scikit-learn's TunedThresholdClassifierCV with our scorer finds a threshold near the
    Bayes threshold c_fp / (c_fp + c_fn) of a calibrated model."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import TunedThresholdClassifierCV

    rng = np.random.default_rng(1)
    x = rng.normal(size=(6000, 1))
    y = (rng.random(6000) < 1 / (1 + np.exp(-(2 * x[:, 0] - 1)))).astype(int)
    tuned = TunedThresholdClassifierCV(
        LogisticRegression(), scoring=metrics.make_cost_scorer([[0, 1], [9, 0]]), cv=3
    ).fit(x, y)
    assert tuned.best_threshold_ == pytest.approx(0.1, abs=0.05)


def test_cost_scorer_labels():
    from sklearn.dummy import DummyClassifier

    x = np.zeros((4, 1))
    y = np.array(["spam", "ham", "ham", "spam"])
    always_ham = DummyClassifier(strategy="constant", constant="ham").fit(x, y)
    named = CostMatrix([[0, 1], [10, 0]], classes=["ham", "spam"])
    assert metrics.make_cost_scorer(named)(always_ham, x, y) == -5.0
    by_labels = metrics.make_cost_scorer([[0, 10], [1, 0]], labels=["spam", "ham"])
    assert by_labels(always_ham, x, y) == -5.0
    with pytest.raises(ValueError, match=r"y_true contains 'spam', which is not a class"):
        metrics.make_cost_scorer([[0, 1], [10, 0]])(always_ham, x, y)
    with pytest.raises(ValueError, match=r"labels has 3 entries; expected 2"):
        metrics.make_cost_scorer([[0, 1], [10, 0]], labels=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"y_true contains 'eel'; expected one of the labels"):
        by_labels(always_ham, x, np.array(["eel"] * 4))


# ---------------------------------------------------------------------------- cost curves
def brute_cost_curve(y, s, pc):
    """Every threshold (each score, and +inf: all negative) as its own classifier."""
    y, s = np.asarray(y), np.asarray(s, dtype=np.float64)
    best = np.full(len(pc), np.inf)
    for thr in list(np.unique(s)) + [np.inf]:
        pred = s >= thr
        fnr = np.mean(~pred[y == 1])
        fpr = np.mean(pred[y == 0])
        best = np.minimum(best, fnr * pc + fpr * (1 - pc))
    return best


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 80),
    st.integers(0, 2**32 - 1),
    st.integers(2, 30),
    st.booleans(),
)
def test_cost_curve_equals_brute_force_over_thresholds(n, seed, points, ties):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]  # both classes
    s = rng.integers(0, 5, n).astype(float) if ties else rng.normal(size=n)
    pc, nec = metrics.cost_curve(y, s, points=points)
    assert pc.dtype == nec.dtype == torch.float64 and pc.shape == nec.shape == (points,)
    np.testing.assert_allclose(pc.numpy(), np.linspace(0, 1, points))
    np.testing.assert_allclose(nec.numpy(), brute_cost_curve(y, s, pc.numpy()), atol=1e-12)


def test_cost_curve_properties():
    y = np.array([0, 1] * 50)
    pc, nec = metrics.cost_curve(y, y.astype(float) * 2 - 1)  # a perfect scorer
    assert nec.abs().max() == 0
    pc, nec = metrics.cost_curve(y, np.zeros(100))  # no information: the trivial envelope
    np.testing.assert_allclose(nec.numpy(), np.minimum(pc.numpy(), 1 - pc.numpy()), atol=1e-15)
    # invariant under any increasing transform of the scores (probabilities vs logits)
    s = np.random.default_rng(0).normal(size=100) + y
    torch.testing.assert_close(
        metrics.cost_curve(y, s)[1], metrics.cost_curve(y, 1 / (1 + np.exp(-s)))[1]
    )
    # the value at the deployment's pc, rescaled, is the lowest Real World Cost of any threshold
    c_fn, c_fp, prior = 3.0, 1.0, 0.5
    scale = prior * c_fn + (1 - prior) * c_fp
    pc, nec = metrics.cost_curve(y, s, points=5)
    assert float(pc[3]) == prior * c_fn / scale == 0.75
    lowest = min(
        float(real_world_cost(y, (s >= t).astype(int), [[0, c_fp], [c_fn, 0]]))
        for t in list(s) + [np.inf]
    )
    assert float(nec[3]) * scale == pytest.approx(lowest, rel=1e-12)


@pytest.mark.parametrize(
    "y, s, points, exc, match",
    [
        ([0, 1], [0.2, 0.4], 1, ValueError, r"points is 1; expected an int >= 2"),
        ([0, 0], [0.2, 0.4], 5, ValueError, r"y_true holds no positive labels"),
        ([1, 1], [0.2, 0.4], 5, ValueError, r"y_true holds only positive labels"),
        ([0, 2], [0.2, 0.4], 5, ValueError, r"y_true contains the label 2"),
        ([0, 1], [[0.8, 0.2], [0.3, 0.7]], 5, ValueError, r"expected \(2,\).*pass probs\[:, 1\]"),
        ([0, 1], [0.2, float("nan")], 5, ValueError, r"scores contains NaN"),
    ],
)  # fmt: skip
def test_cost_curve_errors(y, s, points, exc, match):
    with pytest.raises(exc, match=match):
        metrics.cost_curve(y, s, points=points)


# ---------------------------------------------------------------------------- plots
def test_plot_cost_curve_writes_a_png(tmp_path):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    s = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(size=300))))
    path = tmp_path / "curve.png"
    fig = metrics.plot_cost_curve(y, s, PAPER_COSTS, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    left, right = fig.axes
    x, nec = left.lines[0].get_data()
    np.testing.assert_allclose(nec, metrics.cost_curve(y, s)[1].numpy())
    # the right panel's minimum is the lowest Real World Cost over thresholds
    lowest = min(
        float(real_world_cost(y, (s >= t).astype(int), PAPER_COSTS)) for t in list(s) + [np.inf]
    )
    assert min(right.lines[0].get_data()[1]) == pytest.approx(lowest, rel=1e-12)
    assert list(tmp_path.iterdir()) == [path]


def test_plot_prediction_costs(tmp_path):
    c = [[0, 1, 1], [5, 0, 1], [50, 10, 0]]
    probs = softmax_rows(200, 3, seed=4)
    y = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(0)).squeeze(1)
    fig = metrics.plot_prediction_costs(y, c, tmp_path / "bars.png", probs=probs, y_pred=y)
    assert (tmp_path / "bars.png").read_bytes()[:4] == b"\x89PNG"
    ax = fig.axes[0]
    heights = [[p.get_height() for p in bars] for bars in ax.containers]
    assert len(heights) == 3  # y_pred, arg-max, Bayes
    assert sum(heights[0]) == 0  # y_pred = y costs nothing
    assert sum(heights[1]) == pytest.approx(float(real_world_cost(y, probs.argmax(1), c)))
    assert sum(heights[2]) == pytest.approx(float(real_world_cost(y, bayes_decision(probs, c), c)))
    # binary probabilities draw the cost curves
    fig = metrics.plot_prediction_costs(
        [0, 1, 1], PAPER_COSTS, probs=[[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]]
    )
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match=r"probs and y_pred are both None"):
        metrics.plot_prediction_costs([0, 1], PAPER_COSTS)
    with pytest.raises(FileNotFoundError, match=r"no such directory"):
        metrics.plot_prediction_costs([0, 1], PAPER_COSTS, tmp_path / "no" / "x.png", y_pred=[0, 1])


def test_a_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    with pytest.raises(ModuleNotFoundError, match=r"plot_cost_curve needs matplotlib.*experiments"):
        metrics.plot_cost_curve([0, 1], [0.2, 0.7])
    with pytest.raises(ModuleNotFoundError, match=r"needs matplotlib.*rwwce\[experiments\]"):
        metrics.plot_prediction_costs([0, 1], PAPER_COSTS, y_pred=[0, 1])
