"""Experiments: IDX loading, batched training == one-at-a-time training, scenarios, reports."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

import rwwce
from rwwce.experiments import datasets, report, scenarios
from rwwce.experiments.models import BatchedMLP, init_mlp_params
from rwwce.experiments.training import (
    ArmSpec,
    Decision,
    ModelSpec,
    binary_loss,
    confusion,
    f1_best_threshold,
    multiclass_loss,
    train_group,
)


# ---------------------------------------------------------------------------------------- IDX
def _idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def _write_idx_dir(root, n_train=12, n_test=6, gz=True, side=3):
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
        y = (np.arange(n) % 3).astype(np.uint8)
        arrays[prefix] = (x, y)
        for kind, arr in (("images-idx3-ubyte", x), ("labels-idx1-ubyte", y)):
            name = f"{prefix}-{kind}" + (".gz" if gz else "")
            data = _idx_bytes(arr)
            with (gzip.open if gz else open)(os.path.join(root, name), "wb") as f:
                f.write(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_round_trip(tmp_path, gz):
    arrays = _write_idx_dir(tmp_path, gz=gz)
    d = datasets.load_dataset(str(tmp_path))
    assert d.x.shape == (12, 9) and d.x_test.shape == (6, 9)
    np.testing.assert_array_equal(d.x, arrays["train"][0].reshape(12, 9).astype(np.float32))
    np.testing.assert_array_equal(d.y_test, arrays["t10k"][1])
    assert d.classes == ["0", "1", "2"]


def test_read_idx_big_endian_int32(tmp_path):
    arr = np.array([[1, -2], [70000, 3]], dtype=">i4")
    p = tmp_path / "a.idx"
    p.write_bytes(_idx_bytes(arr, 0x0C))
    out = datasets.read_idx(p)
    np.testing.assert_array_equal(out, [[1, -2], [70000, 3]])
    assert out.dtype == np.int32


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(_idx_bytes(np.zeros((4, 2), np.uint8))[:-3])
    with pytest.raises(ValueError, match="promises shape"):
        datasets.read_idx(short)
    notgz = tmp_path / "x.gz"
    notgz.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read"):
        datasets.read_idx(notgz)


def test_idx_directory_missing_file(tmp_path):
    _write_idx_dir(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        datasets.load_dataset(str(tmp_path))


def test_split_is_stratified_seeded_and_standardised_on_train():
    d = datasets.load_dataset("digits")
    a, b = datasets.split(d, 0), datasets.split(d, 0)
    np.testing.assert_array_equal(a.train, b.train)
    assert len(a.test) == round(0.25 * len(d.y)) or abs(len(a.test) - 0.25 * len(d.y)) < 1
    assert set(a.train).isdisjoint(a.val) and set(a.train).isdisjoint(a.test)
    fit_rows = np.concatenate([a.train, a.val])
    assert np.abs(a.x[fit_rows].mean(0)).max() < 1e-4  # standardised on train + validation
    counts = np.bincount(a.y[a.test], minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47  # stratified: ~45 per class


# ------------------------------------------------------------------------------------ batching
def _toy(seed=0, n=230, d=6, k=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, k, generator=g)
    y = (x @ w + 0.5 * torch.randn(n, k, generator=g)).argmax(1).numpy()
    return x, y


def _reference_run(pool, spec, sizes, loss_one, epochs, binary):
    """One model, plain nn.Sequential + torch.optim.Adam: the trajectory batching must reproduce."""
    layers = []
    params = init_mlp_params(sizes, spec.init_seed)
    for li, (w, b) in enumerate(params):
        lin = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(w.t())
            lin.bias.copy_(b[0])
        layers.append(lin)
        if li < len(params) - 1:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(spec.shuffle_seed)
    x_tr = pool[torch.as_tensor(spec.train_idx)]
    y_tr = torch.as_tensor(spec.train_y)
    val_probs, test_probs = [], []
    for _ in range(epochs):
        perm = torch.randperm(len(y_tr), generator=gen)
        for s in range(0, len(y_tr), 100):
            p = perm[s : s + 100]
            out = net(x_tr[p])
            loss = loss_one(out.squeeze(-1) if binary else out, y_tr[p])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            f = torch.sigmoid if binary else (lambda t: torch.softmax(t, -1))
            val_probs.append(f(net(pool[torch.as_tensor(spec.val_idx)]).squeeze(-1)).numpy())
            test_probs.append(f(net(pool[torch.as_tensor(spec.test_idx)]).squeeze(-1)).numpy())
    return val_probs, test_probs


@pytest.mark.parametrize("layout", ["shared-batches", "own-batches", "streams", "binary"])
def test_batched_training_equals_one_at_a_time(layout):
    """The key correctness test of the batching: G models trained together follow exactly the
    trajectories of the same G models trained one at a time (same init, same batches)."""
    torch.manual_seed(0)
    pool, y = _toy()
    k = 3
    binary = layout == "binary"
    if binary:
        y = (y == 0).astype(np.int64)
    rng = np.random.default_rng(0)
    specs = []
    n_models = 4 if layout == "streams" else 3
    for g in range(n_models):
        if layout == "shared-batches":
            tr, seed_shuffle = np.arange(0, 150), 7
        elif layout == "streams" and g % 2 == 1:  # models (0, 1) and (2, 3) share their batches
            tr, seed_shuffle = specs[-1].train_idx, specs[-1].shuffle_seed
        else:
            tr, seed_shuffle = np.sort(rng.choice(230, 150, replace=False)), 100 + g
        specs.append(
            ModelSpec(
                tr,
                y[tr],
                np.arange(150, 190),
                y[150:190],
                np.arange(190, 230),
                y[190:230],
                init_seed=g if layout != "shared-batches" else 5,
                shuffle_seed=seed_shuffle,
            )
        )
    if binary:
        fn = torch.tensor([1.0, 20.0, 1.9])
        fp = torch.tensor([1.0, 1.0, 0.1])
        loss = binary_loss(fn, fp)
        ones = [
            lambda o, t, g=g: rwwce.binary_real_world_weight_cross_entropy(
                o, t.float(), float(fn[g]), float(fp[g])
            )
            for g in range(3)
        ]
        sizes, costs = [6, 10, 1], np.array([[0.0, 1.0], [20.0, 0.0]])
    else:
        fn = torch.tensor([[1.0, 1, 1], [2.0, 1, 0.5], [1.0, 3, 1], [0.5, 1, 1]])[:n_models]
        fp = torch.stack(
            [torch.zeros(k, k), 1 - torch.eye(k), (1 - torch.eye(k)) * 2, (1 - torch.eye(k)) * 0.5]
        )[:n_models]
        fp[2, 0, 1] = 19.0
        loss = multiclass_loss(fn, fp)
        ones = [
            lambda o, t, g=g: rwwce.real_world_weight_cross_entropy(o, t, fn[g], fp[g])
            for g in range(n_models)
        ]
        sizes, costs = [6, 50, 20, 3], 1 - np.eye(3)
    arms = [
        ArmSpec(g, Decision("argmax" if not binary else "threshold"), costs)
        for g in range(n_models)
    ]
    epochs = 4
    results = train_group(pool, specs, arms, loss, sizes, epochs=epochs)
    for g in range(n_models):
        val_p, test_p = _reference_run(pool, specs[g], sizes, ones[g], epochs, binary)
        res = results[g]
        best = res.best_epoch - 1
        np.testing.assert_allclose(res.test_probs, test_p[best], rtol=1e-4, atol=1e-5)
        # Validation costs per epoch are those of the one-at-a-time model.
        for e in range(epochs):
            pred = arms[g].decision.predict(val_p[e])
            ref_cost = (confusion(specs[g].val_y, pred, 2 if binary else 3) * costs).sum() / 40
            assert res.val_costs[e] == pytest.approx(ref_cost)
        # ... and the best epoch is the lowest validation cost (first one on ties).
        assert res.best_epoch - 1 == int(np.argmin(res.val_costs))


def test_batched_mlp_models_are_independent():
    net = BatchedMLP([4, 5, 2], seeds=[0, 1, 2])
    x = torch.randn(3, 7, 4)
    out = net(x)
    for g in range(3):
        torch.testing.assert_close(out[g], net.to_sequential(g)(x[g]), rtol=1e-5, atol=1e-6)
    # shared-input path = the same batch given to every model
    torch.testing.assert_close(
        net(x[0]), net(x[0].expand(3, 7, 4).contiguous()), rtol=1e-5, atol=1e-6
    )
    # streams: (S, B, in) with each batch feeding G / S consecutive models
    net4 = BatchedMLP([4, 5, 2], seeds=[0, 1, 2, 3])
    xs = torch.randn(2, 7, 4)
    out4 = net4(xs)
    for g in range(4):
        torch.testing.assert_close(out4[g], net4.to_sequential(g)(xs[g // 2]), rtol=1e-5, atol=1e-6)
    # init depends on the model's own seed only
    other = BatchedMLP([4, 5, 2], seeds=[9, 1])
    torch.testing.assert_close(other.weights[0][1], net.weights[0][1])


def test_stream_size():
    from rwwce.experiments.training import _stream_size

    a, b = np.arange(3), np.arange(1, 4)
    assert _stream_size([(a,), (a,), (b,), (b,)]) == 2
    assert _stream_size([(a,), (a,), (a,)]) == 3
    assert _stream_size([(a,), (b,), (a,)]) == 1
    assert _stream_size([(a,), (a,), (b,)]) == 1  # unequal runs
    assert _stream_size([(1, a), (2, a)]) == 1  # a different shuffle seed is another stream


@pytest.mark.parametrize("impl", ["stacked", "library"])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_multiclass_loss_matches_per_model_library_calls(impl, scale):
    torch.manual_seed(1)
    g, b, k = 4, 9, 5
    z = (torch.randn(g, b, k) * scale).requires_grad_()
    y = torch.randint(0, k, (g, b))
    fn = torch.rand(g, k) + 0.5
    fp = torch.rand(g, k, k) * (1 - torch.eye(k))
    got = multiclass_loss(fn, fp, impl=impl)(z, y)
    want = torch.stack(
        [rwwce.real_world_weight_cross_entropy(z[i], y[i], fn[i], fp[i]) for i in range(g)]
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    (gz,) = torch.autograd.grad(got.sum(), z)
    (wz,) = torch.autograd.grad(want.sum(), z)
    torch.testing.assert_close(gz, wz, rtol=1e-5, atol=1e-6)


def test_stacked_rwwce_is_finite_for_a_confidently_wrong_prediction():
    z = torch.tensor([[[1e4, 0.0, 0.0]]], requires_grad=True)
    y = torch.tensor([[1]])
    fp = (1 - torch.eye(3))[None]
    loss = multiclass_loss(torch.ones(1, 3), fp)(z, y)
    assert torch.isfinite(loss).all() and loss.item() > 1e4
    (grad,) = torch.autograd.grad(loss.sum(), z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ------------------------------------------------------------------------------ decisions etc.
def test_f1_best_threshold_on_a_hand_example():
    probs = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    y = np.array([1, 0, 1, 0, 0])
    t = f1_best_threshold(probs, y)
    # Cut after 0.7: TP 2, FP 1, FN 0 -> F1 0.8 (cut after 0.9: F1 2/3).
    assert 0.2 < t < 0.7
    assert f1_best_threshold(probs, np.zeros(5, dtype=int)) == 0.5


def test_bayes_decision_arm_uses_the_cost_matrix():
    costs = np.array([[0.0, 1.0], [20.0, 0.0]])
    probs = np.array([[0.9, 0.1], [0.97, 0.03]])
    pred = Decision("bayes", costs=costs).predict(probs)
    np.testing.assert_array_equal(pred, [1, 0])  # 0.1 * 20 > 0.9 * 1; 0.03 * 20 < 0.97


def test_confusion_matches_library():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    np.testing.assert_array_equal(
        confusion(a, b, 4), rwwce.metrics.confusion_matrix(a, b, 4).numpy()
    )


def test_scenario_groups_have_the_documented_costs_and_prevalence():
    d = datasets.load_dataset("digits")
    g = next(scenarios.build_groups(d, "fp-pair", [0], quick=True))
    arm = next(a for a in g.arms if a.arm == "rwwce")
    i, j = arm.config["pair"]
    c = arm.spec.costs
    assert c[i, j] == 20 and c[j, i] == 2 and c[0, 0] == 0
    assert {a.arm for a in g.arms} == {"ce", "ce+bayes", "bce-control", "rwwce"}
    assert len(g.models) == 2 + len(scenarios._quick_pairs(10))

    m = next(scenarios.build_groups(d, "medical", [0], quick=True))
    ns = {len(md.spec.train_idx) for md in m.models}
    assert len(ns) == 1  # one Adam step count for the group
    spec = m.models[0].spec
    assert 0.005 < spec.train_y.mean() < 0.02
    assert 0.005 < spec.test_y.mean() < 0.03
    assert [md.fn for md in m.models[:3]] == [1.0, 20.0, pytest.approx(2 * 2000 / 2100)]

    imb = next(scenarios.build_groups(d, "imbalance", [0], quick=True))
    spec = imb.models[0].spec
    r = int(imb.arms[0].config["rare"])
    assert (spec.train_y == r).sum() == round(0.05 * (d.y[datasets.split(d, 0).train] == r).sum())


# --------------------------------------------------------------------------------------- files
def test_load_records_drops_a_truncated_last_line(tmp_path):
    p = tmp_path / "results.jsonl"
    report.append_records(str(p), [{"key": "a"}, {"key": "b"}])
    with open(p, "a") as f:
        f.write('{"key": "c", "metr')
    recs = report.load_records(str(p))
    assert [r["key"] for r in recs] == ["a", "b"]
    assert p.read_text().endswith("\n") and len(p.read_text().splitlines()) == 2
    report.append_records(str(p), [{"key": "c"}])
    assert [json.loads(x)["key"] for x in p.read_text().splitlines()] == ["a", "b", "c"]


def test_atomic_write_leaves_no_temp_files(tmp_path):
    p = tmp_path / "report.md"
    report.atomic_write(str(p), "one")
    report.atomic_write(str(p), "two")
    assert p.read_text() == "two"
    assert os.listdir(tmp_path) == ["report.md"]


def test_summary_interval_and_paired_test():
    recs = []
    for seed in range(6):
        for arm, cost in (("ce", 2.0 + seed * 0.1), ("rwwce", 1.0 + seed * 0.1)):
            recs.append(
                {
                    "scenario": "fp-pair",
                    "config": {"pair": [0, 1]},
                    "seed": seed,
                    "arm": arm,
                    "metrics": {"real_world_cost": cost, "targeted": 1, "error_rate": 0.1},
                }
            )
    rows = {r["arm"]: r for r in report.summarize(recs, "fp-pair")}
    mean, lo, hi = rows["ce"]["cost"]
    assert mean == pytest.approx(2.25) and lo < mean < hi
    assert rows["ce"]["p_vs_rwwce"] == pytest.approx(0.03125)  # exact Wilcoxon, n=6, all one sign
