"""Real World Cost, decisions and calibration against scikit-learn, the paper and brute force."""

import itertools
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
        "bad = [m for m in ('torchmetrics', 'sklearn', 'scipy') if m in sys.modules];"
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
        "expected_costs",
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
    with pytest.raises(ValueError, match=r"reduction is 'none'; expected 'mean' or 'sum'"):
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
    with pytest.raises(ValueError, match=r"reduction is 'x'"):
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

    with pytest.raises(ValueError, match=r"reduction is 'none'"):
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
