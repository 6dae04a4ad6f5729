"""loss_breakdown against the loss and an independent float64 formula; CostMonitor on scripted
predictions, against rwwce.metrics on the concatenated epoch, and across two gloo processes."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st

import rwwce
from gloo_processes import gloo_group, run_processes
from oracles import fp_as_matrix, rwwce_float64, smoothed_onehot
from rwwce.metrics import bayes_decision, real_world_cost

K = 4
FN = torch.tensor([1.0, 3.0, 0.5, 2.0])
FP = torch.tensor(
    [[0.0, 1.0, 3.0, 0.5], [2.0, 0.0, 1.0, 1.0], [4.0, 0.0, 0.0, 2.0], [1.0, 1.0, 1.0, 0.0]]
)
COSTS = [[0, 1, 2, 3], [4, 0, 1, 1], [9, 2, 0, 1], [1, 1, 5, 0]]


# ---------------------------------------------------------------------- loss_breakdown oracle
def oracle_terms(z, y, s, fn, fp):
    """fn (K,) and fp (K, K) terms from rwwce_float64, one weight entry at a time."""
    k = z.shape[1]
    fn_terms = torch.zeros(k, dtype=torch.float64)
    fp_terms = torch.zeros(k, k, dtype=torch.float64)
    for c in range(k):
        only = torch.zeros(k, dtype=torch.float64)
        only[c] = fn[c]
        fn_terms[c] = (s * rwwce_float64(z, y, only, None)).sum()
    if fp is not None:
        for t in range(k):
            for j in range(k):
                if t != j and fp[t, j] != 0:
                    e = torch.zeros(k, k, dtype=torch.float64)
                    e[t, j] = fp[t, j]
                    fp_terms[t, j] = (s * rwwce_float64(z, y, torch.zeros(k), e)).sum()
    return fn_terms, fp_terms


def grad_oracle(z, y, s, fn, fp, owner):
    """Per-class squared gradient norms of the float64 oracle's weighted sum."""
    zz = z.double().clone().requires_grad_(True)
    (s * rwwce_float64(zz, y, fn, fp)).sum().backward()
    return owner.T @ (zz.grad**2).sum(dim=1)


CASES = {
    "index-fpmatrix-ignore-sw": dict(fp=FP, ignore=True, sw=True),
    "index-fpvector-smoothing": dict(fp=torch.tensor([0.5, 2.0, 1.0, 3.0]), smoothing=0.1),
    "index-nofp": dict(fp=None, ignore=True),
    "soft-fpmatrix-sw": dict(fp=FP, soft=True, sw=True),
    "soft-smoothing": dict(fp=FP, soft=True, smoothing=0.2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_breakdown_matches_float64_oracle_and_loss(name):
    case = CASES[name]
    g = torch.Generator().manual_seed(3)
    n = 24
    z = torch.randn(n, K, generator=g) * 3
    t = torch.randint(0, K, (n,), generator=g)
    if case.get("ignore"):
        t[[1, 5, 9]] = -100
    sw = torch.rand(n, generator=g) + 0.5 if case.get("sw") else None
    smoothing = case.get("smoothing", 0.0)
    fp = case["fp"]
    if case.get("soft"):
        target = torch.softmax(torch.randn(n, K, generator=g), dim=1)
        y = target.double() * (1 - smoothing) + smoothing / K
        owner = target.double()
        s = torch.ones(n, dtype=torch.float64)
    else:
        target = t
        valid = t != -100
        y = smoothed_onehot(t.clamp_min(0), K, smoothing) * valid.unsqueeze(1)
        owner = torch.nn.functional.one_hot(t.clamp_min(0), K).double() * valid.unsqueeze(1)
        s = valid.double()
    if sw is not None:
        s = s * sw.double()
    fp_m = fp_as_matrix(fp, K)

    b = rwwce.loss_breakdown(z, target, FN, fp, sample_weight=sw, label_smoothing=smoothing)
    fn_ref, fp_ref = oracle_terms(z, y, s, FN, fp_m)
    torch.testing.assert_close(b.fn, fn_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b.fp, fp_ref, rtol=1e-10, atol=1e-10)
    assert (b.fp.diagonal() == 0).all()
    loss_sum = rwwce.real_world_weight_cross_entropy(
        z, target, FN, fp, sample_weight=sw, label_smoothing=smoothing, reduction="sum"
    )
    assert torch.equal(b.total, loss_sum)  # .total is the 'sum' loss itself
    torch.testing.assert_close(b.fn.sum() + b.fp.sum(), loss_sum.double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.support, (owner * s.unsqueeze(1)).sum(0))
    grad_ref = grad_oracle(z, y, s, FN, fp_m, owner)
    torch.testing.assert_close(b.grad_sq_norm, grad_ref, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(b.grad_share.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_breakdown_extreme_logits_stay_finite():
    """A logit gap of 1e4 and masked (-inf) classes: finite terms equal to the loss."""
    z = torch.tensor([[1e4, 0.0, float("-inf"), 0.0], [0.0, 5.0, float("-inf"), 1.0]])
    t = torch.tensor([1, 3])
    b = rwwce.loss_breakdown(z, t, FN, FP)
    assert torch.isfinite(b.fn).all() and torch.isfinite(b.fp).all()
    assert (b.fp[:, 2] == 0).all()  # a masked class has p = 0: no FP term
    # truth 1, arg-max 0 with a gap of 1e4: -log p_1 = 1e4 and, the other classes being two zero
    # logits, -log(1 - p_0) = 1e4 - log 2
    assert b.fn[1] == pytest.approx(3.0 * 1e4, rel=1e-12)
    assert b.fp[1, 0] == pytest.approx(2.0 * (1e4 - math.log(2)), rel=1e-12)
    torch.testing.assert_close(b.fn.sum() + b.fp.sum(), b.total.double(), rtol=1e-6, atol=0)
    assert math.isfinite(float(b.grad_share.sum()))


def test_breakdown_spatial_probs_and_unbatched():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, K, 3, 5, generator=g)
    t = torch.randint(0, K, (2, 3, 5), generator=g)
    b = rwwce.loss_breakdown(z, t, FN, FP)
    flat = rwwce.loss_breakdown(z.movedim(1, -1).reshape(-1, K), t.reshape(-1), FN, FP)
    torch.testing.assert_close(b.fn, flat.fn)
    torch.testing.assert_close(b.fp, flat.fp)
    probs = torch.softmax(z[:, :, 0, 0], dim=1)
    bp = rwwce.loss_breakdown(probs, t[:, 0, 0], FN, FP, input_type="probs")
    bl = rwwce.loss_breakdown(z[:, :, 0, 0], t[:, 0, 0], FN, FP)
    torch.testing.assert_close(bp.fn, bl.fn, rtol=1e-5, atol=1e-6)
    one = rwwce.loss_breakdown(z[0, :, 0, 0], t[0, 0, 0], FN, FP)
    torch.testing.assert_close(
        one.fn + 0, rwwce.loss_breakdown(z[:1, :, 0, 0], t[:1, 0, 0], FN, FP).fn
    )


def test_breakdown_under_no_grad_and_inference_mode():
    z = torch.randn(6, K, requires_grad=True)
    t = torch.randint(0, K, (6,))
    expected = rwwce.loss_breakdown(z, t, FN, FP)
    assert z.grad is None  # the caller's graph is untouched
    with torch.no_grad():
        torch.testing.assert_close(rwwce.loss_breakdown(z, t, FN, FP).fp, expected.fp)
    with torch.inference_mode():
        zi, ti = z.detach().clone(), t.clone()
        inside = rwwce.loss_breakdown(zi, ti, FN, FP)
    torch.testing.assert_close(inside.grad_sq_norm, expected.grad_sq_norm)


def test_breakdowns_add_up_over_batches():
    g = torch.Generator().manual_seed(9)
    z, t = torch.randn(20, K, generator=g), torch.randint(0, K, (20,), generator=g)
    whole = rwwce.loss_breakdown(z, t, FN, FP)
    parts = rwwce.loss_breakdown(z[:7], t[:7], FN, FP) + rwwce.loss_breakdown(z[7:], t[7:], FN, FP)
    torch.testing.assert_close(parts.fn, whole.fn)
    torch.testing.assert_close(parts.fp, whole.fp)
    torch.testing.assert_close(parts.grad_sq_norm, whole.grad_sq_norm)


def test_breakdown_table_names_classes_and_biggest_confusion():
    z = torch.tensor([[0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    t = torch.tensor([2, 2])
    names = ["cat", "dog", "fox", "owl"]
    b = rwwce.loss_breakdown(z, t, FN, FP, classes=names)
    text = str(b)
    assert all(n in text for n in names)
    assert "fox -> owl" in text  # FP[2, 3] = 2 on a probability of about 0.9
    assert text.splitlines()[0].startswith("loss (sum)")
    with pytest.raises(ValueError, match="classes has 2 names"):
        rwwce.loss_breakdown(z, t, FN, FP, classes=["a", "b"])
    with pytest.raises(ValueError, match="fp_weight"):
        rwwce.loss_breakdown(z, t, FN, torch.ones(3, 3))


@given(
    n=st.integers(1, 12),
    k=st.integers(2, 5),
    scale=st.sampled_from([0.1, 3.0, 50.0]),
    seed=st.integers(0, 2**16),
)
def test_breakdown_sums_to_the_loss(n, k, scale, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    t = torch.randint(0, k, (n,), generator=g)
    fn = torch.rand(k, generator=g, dtype=torch.float64) * 3
    fp = torch.rand(k, k, generator=g, dtype=torch.float64) * (
        1 - torch.eye(k, dtype=torch.float64)
    )
    b = rwwce.loss_breakdown(z, t, fn, fp)
    total = rwwce.real_world_weight_cross_entropy(z, t, fn, fp, reduction="sum")
    torch.testing.assert_close(b.fn.sum() + b.fp.sum(), total, rtol=1e-10, atol=1e-10)
    assert torch.isclose(b.grad_share.sum(), torch.ones((), dtype=torch.float64)) or (
        b.grad_sq_norm.sum() == 0
    )


# ---------------------------------------------------------------------- CostMonitor
def scripted_epochs():
    """Three epochs of validation logits: the cost falls, then rises."""
    g = torch.Generator().manual_seed(11)
    y = torch.randint(0, K, (40,), generator=g)
    epochs = []
    for noise in (3.0, 0.8, 2.5):
        logits = torch.nn.functional.one_hot(y, K).float() * 2 + noise * torch.randn(
            40, K, generator=g
        )
        epochs.append(logits)
    return y, epochs


def test_monitor_cost_recall_best_epoch_and_stop():
    y, epochs = scripted_epochs()
    monitor = rwwce.CostMonitor(COSTS, patience=1, classes=["a", "b", "c", "d"])
    losses = [(1.0, 1.1), (0.8, 0.9), (0.6, 1.3)]
    for logits, (train, val) in zip(epochs, losses, strict=True):
        for rows in torch.arange(40).split(16):
            monitor.update(logits[rows], y[rows])
        record = monitor.end_epoch(train_loss=torch.tensor(train), val_loss=val)
        pred = logits.argmax(1)
        assert record["real_world_cost"] == pytest.approx(float(real_world_cost(y, pred, COSTS)))
        for c, name in enumerate(["a", "b", "c", "d"]):
            assert record["recall"][name] == pytest.approx(
                float((pred[y == c] == c).double().mean())
            )
        assert record["samples"] == 40 and record["train_loss"] == pytest.approx(train)
    costs = [r["real_world_cost"] for r in monitor.history]
    assert costs[1] < costs[0] and costs[2] > costs[1]  # the script does what it says
    assert monitor.best_epoch == 2 and monitor.best_cost == costs[1]
    assert [r["is_best"] for r in monitor.history] == [True, True, False]
    assert [r["overfitting"] for r in monitor.history] == [None, False, True]
    assert monitor.should_stop  # one epoch without improvement, patience 1
    assert [r["epoch"] for r in monitor.history] == [1, 2, 3]


def test_monitor_patience_counts_epochs_without_improvement():
    monitor = rwwce.CostMonitor([[0, 1], [1, 0]], patience=2, min_delta=0.05)
    target = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    for wrong in (4, 3, 3, 3):  # 0.4, 0.3, 0.3 (no improvement), 0.3
        pred = target.clone()
        pred[:wrong] = 1 - pred[:wrong]
        monitor.update(pred, target)  # class-index predictions
        monitor.end_epoch()
    assert monitor.best_epoch == 2 and monitor.epochs_without_improvement == 2
    assert monitor.should_stop
    assert rwwce.CostMonitor([[0, 1], [1, 0]]).should_stop is False


def test_monitor_bayes_decision_binary_scores_and_ignore_index():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(30, K, generator=g)
    y = torch.randint(0, K, (30,), generator=g)
    y[[0, 7]] = -100
    monitor = rwwce.CostMonitor(COSTS, decision="bayes")
    monitor.update(logits, y)
    keep = y != -100
    pred = bayes_decision(logits.softmax(1)[keep], COSTS)
    record = monitor.end_epoch()
    assert record["samples"] == 28
    assert record["real_world_cost"] == pytest.approx(float(real_world_cost(y[keep], pred, COSTS)))
    probs_monitor = rwwce.CostMonitor(COSTS, decision="bayes", input_type="probs")
    probs_monitor.update(logits.softmax(1), y)
    assert probs_monitor.end_epoch()["real_world_cost"] == record["real_world_cost"]

    binary = rwwce.CostMonitor([[0, 1], [20, 0]], decision="bayes")
    binary.update(torch.tensor([-2.0, -4.0, 1.0]), torch.tensor([1, 1, 0]))
    # threshold 1/21: sigmoid(-2) = 0.12 -> positive, sigmoid(-4) = 0.018 -> missed, 1 -> FP
    assert binary.end_epoch()["confusion_matrix"] == [[0, 1], [1, 1]]
    binary_probs = rwwce.CostMonitor([[0, 1], [20, 0]], decision="bayes", input_type="probs")
    binary_probs.update(torch.tensor([1.0, 0.0, 0.04, 0.06]), torch.tensor([1, 0, 1, 0]))
    assert binary_probs.end_epoch()["confusion_matrix"] == [[1, 1], [1, 1]]


def test_monitor_inside_and_outside_inference_mode():
    monitor = rwwce.CostMonitor(COSTS)
    logits, y = torch.randn(8, K), torch.randint(0, K, (8,))
    with torch.inference_mode():
        monitor.update(logits, y)
    monitor.update(logits, y)
    assert monitor.end_epoch()["samples"] == 16


def test_monitor_segmentation_shapes():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, K, 3, 3, generator=g)
    y = torch.randint(0, K, (2, 3, 3), generator=g)
    monitor = rwwce.CostMonitor(COSTS)
    monitor.update(logits, y)
    record = monitor.end_epoch()
    assert record["real_world_cost"] == pytest.approx(
        float(real_world_cost(y.flatten(), logits.argmax(1).flatten(), COSTS))
    )


def test_monitor_plot_png_honours_umask(tmp_path):
    pytest.importorskip("matplotlib")
    y, epochs = scripted_epochs()
    monitor = rwwce.CostMonitor(COSTS)
    for i, logits in enumerate(epochs):
        monitor.update(logits, y)
        monitor.end_epoch(train_loss=1.0 / (i + 1), val_loss=1.0 + (i == 2))
    old = os.umask(0o027)
    try:
        monitor.plot(tmp_path / "curves.png")
    finally:
        os.umask(old)
    path = tmp_path / "curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left


def test_monitor_state_dict_round_trip():
    y, epochs = scripted_epochs()
    monitor = rwwce.CostMonitor(COSTS, patience=3)
    for logits in epochs[:2]:
        monitor.update(logits, y)
        monitor.end_epoch()
    resumed = rwwce.CostMonitor(COSTS, patience=3)
    resumed.load_state_dict(monitor.state_dict())
    resumed.update(epochs[2], y)
    assert resumed.end_epoch()["epoch"] == 3 and resumed.best_epoch == monitor.best_epoch


def test_monitor_bad_input():
    with pytest.raises(ValueError, match="patience"):
        rwwce.CostMonitor(COSTS, patience=0)
    with pytest.raises(ValueError, match="decision"):
        rwwce.CostMonitor(COSTS, decision="best")
    monitor = rwwce.CostMonitor(COSTS)
    with pytest.raises(ValueError, match="no validation elements"):
        monitor.end_epoch()
    with pytest.raises(ValueError, match="scores of shape"):
        monitor.update(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer class indices"):
        monitor.update(torch.randn(5, K), torch.zeros(5))
    with pytest.raises(ValueError, match="binary scores"):
        monitor.update(torch.randn(5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one end_epoch"):
        monitor.plot("never.png")


def test_monitor_label_rule_matches_real_world_cost():
    from rwwce.metrics import RealWorldCost

    preds = torch.tensor([0, 1, 2, 3])
    monitor = rwwce.CostMonitor(COSTS)
    with pytest.raises(
        ValueError,
        match=r"target contains the label 9; expected class indices in \[0, 4\) \(or ignore_index=-100\)",
    ):
        monitor.update(preds, torch.tensor([0, 9, 1, 2]))
    with pytest.raises(ValueError, match=r"preds contains the label 4"):
        monitor.update(torch.tensor([0, 4, 1, 2]), torch.tensor([0, 1, 1, 2]))
    metric = RealWorldCost(COSTS)
    for m in (monitor, metric):
        with pytest.raises(ValueError, match=r"target contains the label 9"):
            m.update(preds, torch.tensor([0, 9, 1, 2]))
        m.update(preds, torch.tensor([0, -100, 1, 2]))
    assert monitor.end_epoch()["real_world_cost"] == pytest.approx(float(metric.compute()))
    with pytest.raises(TypeError, match=r"ignore_index is None; expected an int"):
        rwwce.CostMonitor(COSTS, ignore_index=None)


def test_monitor_unchecked_invalid_labels_flag_the_epoch_with_nan(monkeypatch):
    # On an accelerator the labels are not read (no sync): force that path on CPU.
    from rwwce import _costmath

    shared = _costmath.streaming_confusion
    monkeypatch.setattr(
        _costmath,
        "streaming_confusion",
        lambda t, p, k, ignore_index, check: shared(t, p, k, ignore_index, check=False),
    )
    monitor = rwwce.CostMonitor(COSTS, patience=2)
    monitor.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    first = monitor.end_epoch()
    monitor.update(torch.tensor([0, 1, 2]), torch.tensor([0, 9, -100]))
    with pytest.warns(RuntimeWarning, match=r"1 labels outside \[0, 4\).*cost is NaN"):
        record = monitor.end_epoch()
    assert math.isnan(record["real_world_cost"]) and record["samples"] == 1
    assert not record["is_best"] and monitor.best_cost == first["real_world_cost"]


# ---------------------------------------------------------------------- two processes
WORLD = 2
TIMEOUT_S = 90


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    with gloo_group(rank, world, port, TIMEOUT_S):
        y, epochs = scripted_epochs()
        rows = slice(0, 13) if rank == 0 else slice(13, 40)  # uneven shards
        monitor = rwwce.CostMonitor(COSTS, patience=1)
        for i, logits in enumerate(epochs):
            monitor.update(logits[rows], y[rows])
            # rank 1 reports no training loss: the average is over the ranks that give one
            monitor.end_epoch(train_loss=None if rank else 0.5 - 0.1 * i, val_loss=1.0 + rank + i)
        torch.save(
            {"history": monitor.history, "stop": monitor.should_stop}, Path(out_dir) / f"r{rank}.pt"
        )


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_monitor_synchronises_across_processes(tmp_path):
    run_processes(_worker, WORLD, str(tmp_path), timeout_s=TIMEOUT_S)
    ranks = [torch.load(tmp_path / f"r{r}.pt", weights_only=False) for r in range(WORLD)]
    single = rwwce.CostMonitor(COSTS, patience=1)
    y, epochs = scripted_epochs()
    for logits in epochs:
        single.update(logits, y)
        single.end_epoch()
    for r in ranks:
        assert r["stop"] == single.should_stop
        for got, want in zip(r["history"], single.history, strict=True):
            assert got["confusion_matrix"] == want["confusion_matrix"]
            assert got["real_world_cost"] == pytest.approx(want["real_world_cost"])
            assert got["val_loss"] == pytest.approx(1.5 + got["epoch"] - 1)
            assert got["train_loss"] == pytest.approx(0.5 - 0.1 * (got["epoch"] - 1))


@pytest.mark.cuda
def test_monitor_update_does_not_synchronise():
    logits = torch.randn(64, K, device="cuda")
    y = torch.randint(0, K, (64,), device="cuda")
    bad = torch.tensor([9, -100], device="cuda")
    monitor = rwwce.CostMonitor(COSTS)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        monitor.update(logits, y)
        monitor.update(logits.argmax(1), y)
        # an invalid label is not read on the device: it flags the epoch instead
        monitor.update(logits[:2], bad)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    with pytest.warns(RuntimeWarning, match="cost is NaN"):
        record = monitor.end_epoch()
    assert record["samples"] == 128 and math.isnan(record["real_world_cost"])
