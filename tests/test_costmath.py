"""The shared cost arithmetic (rwwce._costmath) against scikit-learn and float64 NumPy oracles."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from rwwce import _costmath

sk_metrics = pytest.importorskip("sklearn.metrics")


@st.composite
def labelled_costs(draw, max_k=5, max_n=40):
    """(y_true, y_pred, costs): labels that may leave classes out, and a (K, K) cost matrix."""
    k = draw(st.integers(2, max_k))
    n = draw(st.integers(1, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    y_pred = rng.integers(0, k, n)
    costs = rng.uniform(0, 10, (k, k)) * (rng.random((k, k)) < 0.8)
    return y_true, y_pred, costs


@settings(max_examples=60, deadline=None)
@given(labelled_costs())
def test_confusion_costs_equal_the_definitions(case):
    y_true, y_pred, costs = case
    k = costs.shape[0]
    counts = sk_metrics.confusion_matrix(y_true, y_pred, labels=range(k))
    seen = _costmath.confusion_costs(torch.as_tensor(counts), torch.as_tensor(costs))

    per_sample = costs[y_true, y_pred]  # what each decision cost
    assert seen.total.dtype == torch.float64
    np.testing.assert_allclose(float(seen.total), per_sample.sum(), rtol=1e-12)
    np.testing.assert_allclose(float(seen.mean), per_sample.mean(), rtol=1e-12)
    assert float(seen.samples) == len(y_true)
    assert float(seen.accuracy) == pytest.approx(sk_metrics.accuracy_score(y_true, y_pred))
    recall = sk_metrics.recall_score(
        y_true, y_pred, labels=range(k), average=None, zero_division=np.nan
    )
    np.testing.assert_allclose(seen.recall.numpy(), recall, rtol=1e-12)
    for i in range(k):
        mine = y_true == i
        assert float(seen.support[i]) == mine.sum()
        if mine.any():
            assert float(seen.class_mean[i]) == pytest.approx(per_sample[mine].mean(), rel=1e-12)
        else:  # a class without samples: NaN, not an error
            assert math.isnan(float(seen.class_mean[i])) and math.isnan(float(seen.recall[i]))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_confusion_costs_of_a_batch_are_each_matrix_s_own(k, b, seed):
    """(B, K, K) counts under B cost matrices, or under one: every entry is what the definitions
    give for its own labels (float64 NumPy oracle)."""
    rng = np.random.default_rng(seed)
    labels = [(rng.integers(0, k, n), rng.integers(0, k, n)) for n in rng.integers(1, 30, b)]
    counts = np.stack([sk_confusion_matrix(t, p, labels=range(k)) for t, p in labels])
    costs = rng.uniform(0, 10, (b, k, k))
    for c in (costs, costs[0]):
        seen = _costmath.confusion_costs(torch.as_tensor(counts), torch.as_tensor(c))
        assert seen.mean.shape == (b,) and seen.recall.shape == (b, k)
        for i, (t, p) in enumerate(labels):
            per_sample = (c if c.ndim == 2 else c[i])[t, p]
            np.testing.assert_allclose(float(seen.total[i]), per_sample.sum(), rtol=1e-12)
            np.testing.assert_allclose(float(seen.mean[i]), per_sample.mean(), rtol=1e-12)
            by_class = [per_sample[t == j].sum() for j in range(k)]
            np.testing.assert_allclose(seen.class_cost[i].numpy(), by_class, rtol=1e-12)
            assert float(seen.accuracy[i]) == pytest.approx(np.mean(t == p), rel=1e-12)
            recall = [np.mean(p[t == j] == j) if (t == j).any() else np.nan for j in range(k)]
            np.testing.assert_allclose(seen.recall[i].numpy(), recall, rtol=1e-12)


def test_confusion_costs_take_weighted_counts_and_mixed_devices_dtypes():
    counts = torch.tensor([[2.5, 0.5], [0.25, 0.75]])  # float32 weighted counts
    costs = torch.tensor([[0, 1], [10, 0]], dtype=torch.int64)
    seen = _costmath.confusion_costs(counts, costs)
    assert seen.total.dtype == torch.float64
    assert float(seen.total) == pytest.approx(0.5 * 1 + 0.25 * 10)
    assert float(seen.mean) == pytest.approx(3.0 / 4.0)
    assert seen.class_mean.tolist() == pytest.approx([0.5 / 3.0, 2.5])


def test_confusion_costs_without_samples_are_nan():
    seen = _costmath.confusion_costs(torch.zeros(3, 3, dtype=torch.int64), torch.ones(3, 3))
    assert float(seen.total) == 0.0
    assert math.isnan(float(seen.mean)) and math.isnan(float(seen.accuracy))
    assert all(math.isnan(r) for r in seen.recall.tolist())


def bayes_oracle(p, costs):
    """argmin_j sum_i p_i C[i, j] in float64 NumPy, row by row; ties to the lower index."""
    p = np.asarray(p, dtype=np.float64)
    c = np.asarray(costs, dtype=np.float64)
    if c.ndim == 2:
        c = np.broadcast_to(c, (p.shape[0], *c.shape))
    return np.array([int(np.argmin(p[n] @ c[n])) for n in range(p.shape[0])])


def softmax64(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_decide_matches_argmax_and_the_bayes_rule(k, n, seed):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, k, generator=g, dtype=torch.float64)
    costs = torch.rand(k, k, generator=g, dtype=torch.float64) * 20
    torch.testing.assert_close(_costmath.decide(logits, "argmax"), logits.argmax(dim=1))
    probs = logits.softmax(dim=1)
    expected = bayes_oracle(probs.numpy(), costs.numpy())
    np.testing.assert_array_equal(_costmath.decide(probs, "bayes", costs).numpy(), expected)
    from_logits = _costmath.decide(logits, "bayes", costs, logits=True)
    np.testing.assert_array_equal(from_logits.numpy(), bayes_oracle(softmax64(logits), costs))


def test_decide_keeps_the_element_shape_and_per_sample_costs():
    g = torch.Generator().manual_seed(3)
    n, k, d = 4, 3, 5
    probs = torch.randn(n, k, d, generator=g).softmax(dim=1)
    costs = torch.rand(n, k, k, generator=g) * 10
    out = _costmath.decide(probs, "bayes", costs)
    assert out.shape == (n, d)
    for i in range(n):  # sample i's matrix decides every element of sample i
        rows = probs[i].T.numpy()
        np.testing.assert_array_equal(out[i].numpy(), bayes_oracle(rows, costs[i].numpy()))
    assert _costmath.decide(probs, "argmax").shape == (n, d)


def test_decide_binary_threshold():
    # 2 x 2 costs with c_fn = 20, c_fp = 1: predict positive when p > 1 / 21
    p1 = torch.tensor([0.04, 0.05, 0.5])
    probs = torch.stack([1 - p1, p1], dim=1)
    assert _costmath.decide(probs, "bayes", torch.tensor([[0.0, 1.0], [20.0, 0.0]])).tolist() == [
        0,
        1,
        1,
    ]


def test_check_decision():
    _costmath.check_decision("bayes")
    with pytest.raises(ValueError, match=r"decision is 'max'; expected 'argmax' or 'bayes'"):
        _costmath.check_decision("max")


def test_streaming_confusion_is_the_one_label_rule():
    t = torch.tensor([0, 2, -100, 9, 1, -3])
    p = torch.tensor([1, 2, 7, 0, 5, 0])
    counts, kept, invalid = _costmath.streaming_confusion(t, p, 3, -100, check=False)
    want = sk_confusion_matrix([0, 2], [1, 2], labels=[0, 1, 2])  # the valid pairs only
    assert counts.tolist() == want.tolist()
    assert kept.tolist() == [True, True, False, False, False, False] and int(invalid) == 3
    with pytest.raises(ValueError, match=r"target contains the label 9"):
        _costmath.streaming_confusion(t, p, 3, -100, check=True)
