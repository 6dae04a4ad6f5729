"""Temperature scaling and the calibration error against known temperatures, SciPy and torchmetrics."""

import math
import os
import stat

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from torchmetrics.functional.classification import multiclass_calibration_error

import rwwce
from rwwce.calibration import (
    TemperatureScaling,
    calibration_bins,
    expected_calibration_error,
    plot_reliability_diagram,
)


def synthetic(n, k, seed, scale=2.0):
    """Logits whose softmax is the true P(y | x), and labels drawn from it."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, k, generator=g, dtype=torch.float64)
    target = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    return logits, target


# ---------------------------------------------------------------------------- temperature
@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5, 6.0])
def test_a_known_temperature_is_recovered(true_t):
    logits, target = synthetic(40_000, 5, seed=int(true_t * 10))
    scaler = TemperatureScaling().fit(logits * true_t, target)
    assert scaler.temperature.shape == () and scaler.temperature.dtype == torch.float64
    assert float(scaler.temperature) == pytest.approx(true_t, rel=0.03)


def test_a_known_temperature_is_recovered_for_binary_logits():
    g = torch.Generator().manual_seed(5)
    z = 2.0 * torch.randn(40_000, generator=g, dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(z), generator=g)
    assert float(TemperatureScaling().fit(3.0 * z, y).temperature) == pytest.approx(3.0, rel=0.03)
    # integer 0/1 targets work the same
    t_int = TemperatureScaling().fit(3.0 * z, y.long()).temperature
    assert float(t_int) == pytest.approx(3.0, rel=0.03)


def nll(logits, target, t, weight=None):
    per = F.cross_entropy(logits / t, target, reduction="none")
    return float(per.mean() if weight is None else (per * weight).sum() / weight.sum())


def test_the_fit_minimises_the_nll_as_scipy_does():
    logits, target = synthetic(3000, 4, seed=1)
    noisy = logits * 1.7 + 0.8 * torch.randn(3000, 4, dtype=torch.float64)  # not a pure rescale
    scaler = TemperatureScaling().fit(noisy.float(), target)
    oracle = minimize_scalar(
        lambda log_t: nll(noisy, target, np.exp(log_t)),
        bounds=(-5, 5),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert float(scaler.temperature) == pytest.approx(np.exp(oracle.x), rel=1e-4)
    assert nll(noisy, target, float(scaler.temperature)) <= oracle.fun + 1e-9


def test_integer_sample_weights_equal_repeated_samples():
    logits, target = synthetic(500, 3, seed=2)
    logits = 2.5 * logits
    w = torch.randint(0, 4, (500,), generator=torch.Generator().manual_seed(3))
    weighted = TemperatureScaling().fit(logits, target, sample_weight=w)
    repeated = TemperatureScaling().fit(
        logits.repeat_interleave(w, 0), target.repeat_interleave(w, 0)
    )
    torch.testing.assert_close(weighted.temperature, repeated.temperature, rtol=1e-6, atol=0)


def test_segmentation_shapes_and_masked_classes():
    logits, target = synthetic(2 * 6 * 5, 3, seed=4)
    seg_logits = (2.0 * logits).reshape(2, 6, 5, 3).movedim(-1, 1)  # (N, K, H, W)
    seg_target = target.reshape(2, 6, 5)
    flat = TemperatureScaling().fit(2.0 * logits, target).temperature
    seg = TemperatureScaling().fit(seg_logits, seg_target).temperature
    torch.testing.assert_close(seg, flat)
    masked = torch.cat([2.0 * logits, torch.full((logits.shape[0], 1), -torch.inf)], dim=1)
    torch.testing.assert_close(TemperatureScaling().fit(masked, target).temperature, flat)


def test_transform_module_and_state():
    logits, target = synthetic(2000, 4, seed=6)
    scaler = TemperatureScaling()
    assert float(scaler.temperature) == 1.0  # identity before fit
    scaler.fit(3 * logits, target)
    x = torch.randn(7, 4, dtype=torch.float16)
    out = scaler.transform(x)
    assert out.dtype == torch.float16 and torch.equal(out.argmax(1), x.argmax(1))
    torch.testing.assert_close(
        out.float(), x.float() / float(scaler.temperature), rtol=2e-3, atol=0
    )
    model = torch.nn.Sequential(torch.nn.Identity(), scaler)
    torch.testing.assert_close(model(x.double()), x.double() / scaler.temperature)
    restored = TemperatureScaling()
    restored.load_state_dict(scaler.state_dict())
    assert torch.equal(restored.temperature, scaler.temperature)
    assert "temperature=" in repr(scaler)
    assert rwwce.calibration.TemperatureScaling is TemperatureScaling


def test_calibration_lowers_the_ece_and_keeps_accuracy():
    logits, target = synthetic(20_000, 6, seed=7)
    over = 4.0 * logits
    scaler = TemperatureScaling().fit(over[:10_000], target[:10_000])
    test_logits, test_target = over[10_000:], target[10_000:]
    before = expected_calibration_error(test_logits.softmax(1), test_target)
    after = expected_calibration_error(scaler.transform(test_logits).softmax(1), test_target)
    assert float(after) < 0.02 < 0.1 < float(before)


@pytest.mark.cuda
def test_temperature_scaling_on_cuda():
    logits, target = synthetic(5000, 3, seed=8)
    scaler = TemperatureScaling().fit((2 * logits).cuda().float(), target.cuda())
    assert float(scaler.temperature) == pytest.approx(2.0, rel=0.1)
    assert scaler.transform(logits.cuda().float()).device.type == "cuda"


@pytest.mark.parametrize(
    "logits, target, kwargs, exc, match",
    [
        (torch.randn(4, 3), torch.tensor([0, 1, 2]), {}, ValueError, r"logits has shape \(4, 3\)"),
        (torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), {}, ValueError, r"target contains the label 3"),
        (torch.ones(4, 3, dtype=torch.long), torch.tensor([0, 1, 2, 0]), {}, TypeError, r"logits has dtype torch.int64"),
        (torch.tensor([[0.0, torch.nan]]), torch.tensor([0]), {}, ValueError, r"logits contains NaN or \+inf"),
        (torch.randn(3), torch.tensor([0.0, 2.0, 1.0]), {}, ValueError, r"target contains values outside \[0, 1\]"),
        (torch.randn(2, 3), torch.tensor([0, 1]), {"sample_weight": [1.0]}, ValueError, r"sample_weight has shape \(1,\); expected \(2,\)"),
        (torch.randn(2, 3), torch.tensor([0, 1]), {"sample_weight": [1.0, -1.0]}, ValueError, r"sample_weight contains negative"),
        (torch.randn(2, 3), torch.tensor([0, 1]), {"max_iter": 0}, ValueError, r"max_iter is 0"),
        (torch.empty(0, 3), torch.empty(0, dtype=torch.long), {}, ValueError, r"logits is empty"),
    ],
)  # fmt: skip
def test_fit_errors(logits, target, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TemperatureScaling().fit(logits, target, **kwargs)


@pytest.mark.parametrize(
    "logits, target, rows",
    [
        ([[2.0, 0.0], [0.0, 2.0], [-math.inf, -math.inf]], [0, 1, 0], r"\[2\]"),
        ([[2.0, 0.0], [-math.inf, 1.0], [0.0, 2.0], [-math.inf, 3.0]], [0, 0, 1, 0], r"\[1, 3\]"),
        ([[[1.0], [-math.inf]], [[0.0], [0.0]]], [[1], [0]], r"\[\(0, 0\)\]"),  # (N, K, d1)
        ([1.0, -math.inf, -math.inf], [1.0, 0.0, 0.5], r"\[2\]"),  # binary: -inf with y > 0
    ],
)
def test_a_target_with_a_minus_inf_logit_is_named(logits, target, rows):
    # Oracle: the NLL of those rows is infinite whatever T is (checked at a few T), so no
    # temperature can be fitted.
    z, t = torch.tensor(logits, dtype=torch.float64), torch.tensor(target)
    for temp in (0.1, 1.0, 10.0):
        if z.shape == t.shape:
            per = F.binary_cross_entropy_with_logits(z / temp, t.double(), reduction="none")
        else:
            per = F.cross_entropy(z / temp, t, reduction="none")
        assert not bool(torch.isfinite(per).all())
    with pytest.raises(ValueError, match=r"logit of -inf at " + rows + r".*infinite for every"):
        TemperatureScaling().fit(z, t)


def test_minus_inf_on_a_non_target_class_still_fits():
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-math.inf, 1.0], [1.0, 0.0]] * 3)
    t = torch.tensor([0, 1, 1, 1] * 3)
    temp = TemperatureScaling().fit(z, t).temperature
    assert bool(torch.isfinite(temp)) and float(temp) > 0
    # Binary: a -inf logit with target 0 costs 0 at every T, so it does not move T.
    z, t = torch.tensor([2.0, -1.0, 1.0, -2.0, 0.5]), torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    with_masked = TemperatureScaling().fit(
        torch.cat([z, torch.tensor([-math.inf])]),
        torch.cat([t, torch.tensor([0.0])]),
        sample_weight=[1.0] * 5 + [0.0],
    )
    torch.testing.assert_close(with_masked.temperature, TemperatureScaling().fit(z, t).temperature)


def test_transform_errors():
    with pytest.raises(TypeError, match=r"logits is Tensor of dtype torch.int64"):
        TemperatureScaling().transform(torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match=r"logits is list"):
        TemperatureScaling().transform([[1.0, 2.0]])


# ---------------------------------------------------------------------------- ECE
@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 6),
    st.integers(1, 300),
    st.integers(1, 30),
    st.integers(0, 2**32 - 1),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_ece_equals_torchmetrics(k, n, n_bins, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(n, k, generator=g, dtype=torch.float64), 1).to(dtype)
    probs[: n // 5] = torch.nn.functional.one_hot(
        torch.randint(0, k, (n // 5,), generator=g), k
    ).to(dtype)  # confidence 1
    target = torch.randint(0, k, (n,), generator=g)
    got = expected_calibration_error(probs, target, n_bins=n_bins)
    expected = multiclass_calibration_error(probs, target, num_classes=k, n_bins=n_bins, norm="l1")
    assert got.dtype == torch.float64 and got.shape == ()
    assert float(got) == pytest.approx(float(expected), abs=2e-6)


def test_ece_by_hand_and_input_forms():
    # bins of width 0.1: conf 0.9 (right), conf 0.8 (wrong): |1 - 0.9| / 2 + |0 - 0.8| / 2
    assert float(
        expected_calibration_error([[0.9, 0.1], [0.8, 0.2]], [0, 1], n_bins=10)
    ) == pytest.approx(0.45)
    # binary (N,) probabilities are the top label of [1 - p, p]
    p = torch.rand(200, dtype=torch.float64)
    y = torch.randint(0, 2, (200,))
    torch.testing.assert_close(
        expected_calibration_error(p, y), expected_calibration_error(torch.stack([1 - p, p], 1), y)
    )
    assert float(expected_calibration_error(np.eye(3), [0, 1, 2])) == 0.0  # sure and right
    acc, conf, count = calibration_bins(np.eye(3), [0, 1, 1], n_bins=4)
    assert count.tolist() == [0, 0, 0, 0, 3] and acc[-1] == pytest.approx(2 / 3) and conf[-1] == 1


@pytest.mark.parametrize(
    "probs, target, n_bins, match",
    [
        ([[0.5, 0.6]], [0], 15, r"probs\[0\] sums to 1.1"),
        ([[0.5, 0.5]], [0, 1], 15, r"target has shape \(2,\); expected \(1,\)"),
        ([[0.5, 0.5]], [2], 15, r"target contains the label 2"),
        ([[0.5, 0.5]], [0], 0, r"n_bins is 0; expected a positive int"),
        ([[1.0]], [0], 15, r"probs has shape \(1, 1\); expected \(N, K\) class probabilities"),
        (np.empty((0, 3)), [], 15, r"probs is empty"),
    ],
)
def test_ece_errors(probs, target, n_bins, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(probs, target, n_bins=n_bins)


# ---------------------------------------------------------------------------- reliability diagram
def test_reliability_diagram_writes_a_png_honouring_the_umask(tmp_path):
    logits, target = synthetic(2000, 3, seed=9)
    path = tmp_path / "reliability.png"
    old = os.umask(0o027)
    try:
        fig = plot_reliability_diagram((3 * logits).softmax(1), target, path=path, label="raw")
        plot_reliability_diagram(logits.softmax(1), target, ax=fig.axes[0], label="calibrated")
    finally:
        os.umask(old)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][1].startswith(
        "calibrated: ECE"
    )
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_reliability_diagram_bad_paths_fail_before_drawing(tmp_path):
    probs, target = [[0.9, 0.1]], [0]
    with pytest.raises(FileNotFoundError, match=r"no such directory"):
        plot_reliability_diagram(probs, target, path=tmp_path / "missing" / "r.png")
    with pytest.raises(ValueError, match=r"unknown figure format 'xyz'"):
        plot_reliability_diagram(probs, target, path=tmp_path / "r.xyz")
    with pytest.raises(IsADirectoryError, match=r"is a directory"):
        plot_reliability_diagram(probs, target, path=tmp_path)
    assert list(tmp_path.iterdir()) == []
