"""Experiments: IDX loading, batched training == one-at-a-time training, scenarios, reports."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from sklearn.metrics import recall_score

import rwwce
from rwwce.experiments import datasets, plots, report, runner, spec, store
from rwwce.experiments.models import BatchedMLP, init_mlp_params
from rwwce.experiments.scenarios import SCENARIOS
from rwwce.experiments.scenarios.fp_pair import FpPair
from rwwce.experiments.training import (
    ArmSpec,
    Decision,
    GroupState,
    ModelSpec,
    _predict,
    binary_loss,
    f1_best_threshold,
    multiclass_loss,
    train_group,
)


def confusion(y_true, y_pred, k):
    return rwwce.metrics.confusion_matrix(y_true, y_pred, k).numpy()


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


def test_paper_split_is_scikit_learns_random_state_1():
    from sklearn.model_selection import train_test_split

    d = datasets.load_dataset("digits")
    p = datasets.pool(d, "paper")
    _, want = train_test_split(np.arange(len(d.y)), test_size=0.25, random_state=1)
    np.testing.assert_array_equal(p.test, np.sort(want))
    a, b, c = datasets.split(p, 0), datasets.split(p, 0), datasets.split(p, 1)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test, c.test)  # the test rows do not depend on the seed
    assert not np.array_equal(a.val, c.val)  # the validation hold-out does
    assert set(a.train).isdisjoint(a.val) and set(a.train).isdisjoint(a.test)
    assert len(a.train) + len(a.val) + len(a.test) == len(d.y)
    fit_rows = np.concatenate([a.train, a.val])
    assert np.abs(a.x[fit_rows].mean(0)).max() < 1e-4  # standardised on the non-test rows
    counts = np.bincount(a.y[a.val], minlength=10)
    assert counts.max() - counts.min() <= 2  # validation stratified


def test_paper_split_pools_an_idx_directorys_train_and_test(tmp_path):
    from sklearn.model_selection import train_test_split

    _write_idx_dir(tmp_path, n_train=40, n_test=20)
    d = datasets.load_dataset(str(tmp_path))
    paper = datasets.pool(d, "paper")
    _, want = train_test_split(np.arange(60), test_size=0.25, random_state=1)
    np.testing.assert_array_equal(paper.test, np.sort(want))
    assert paper.test.max() >= 40  # official test rows are in the pool
    official = datasets.pool(d, "official")
    np.testing.assert_array_equal(official.test, np.arange(40, 60))
    np.testing.assert_array_equal(official.y[40:], d.y_test)
    with pytest.raises(ValueError, match="no official test split"):
        datasets.pool(datasets.load_dataset("digits"), "official")


def _ten_class_idx_dir(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = rng.integers(0, 255, (n, 2, 2), dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(x))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(y))
    return datasets.load_dataset(str(folder))


def test_fashion_mnist_folder_gets_its_class_names(tmp_path):
    d = _ten_class_idx_dir(tmp_path / "fashion-mnist")
    assert d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot"


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


@pytest.mark.parametrize(
    "layout, selection",
    [
        ("shared-batches", "best-val"),
        ("own-batches", "best-val"),
        ("streams", "best-val"),
        ("binary", "best-val"),
        ("own-batches", "last"),
        ("binary", "last"),
    ],
)
def test_batched_training_equals_one_at_a_time(layout, selection):
    """The key correctness test of the batching: G models trained together follow exactly the
    trajectories of the same G models trained one at a time (same init, same batches); each arm
    reports the epoch its ``epoch_selection`` keeps."""
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
    results = train_group(pool, specs, arms, loss, sizes, epochs=epochs, epoch_selection=selection)
    for g in range(n_models):
        val_p, test_p = _reference_run(pool, specs[g], sizes, ones[g], epochs, binary)
        res = results[g]
        best = res.best_epoch - 1
        np.testing.assert_allclose(res.test_probs, test_p[best], rtol=1e-4, atol=1e-5)
        # Validation costs per epoch are those of the one-at-a-time model.
        for e in range(epochs):
            pred = arms[g].decision.predict(val_p[e])
            ref_cost = float(rwwce.metrics.real_world_cost(specs[g].val_y, pred, costs))
            assert res.val_costs[e] == pytest.approx(ref_cost)
        # ... and the epoch kept is the lowest validation cost (first one on ties), or the last.
        want = int(np.argmin(res.val_costs)) if selection == "best-val" else epochs - 1
        assert res.best_epoch - 1 == want
        # The recall per class stored with it is scikit-learn's at that epoch.
        pred = arms[g].decision.predict(val_p[want])
        recall = recall_score(
            specs[g].val_y, pred, labels=range(len(costs)), average=None, zero_division=np.nan
        )
        np.testing.assert_allclose(res.val_recall, recall, rtol=1e-12)


def test_epoch_selection_is_checked():
    pool, y = _toy()
    spec = ModelSpec(np.arange(100), y[:100], np.arange(100, 120), y[100:120], [], [], 0, 0)
    with pytest.raises(ValueError, match="epoch_selection must be one of best-val, last"):
        train_group(
            pool,
            [spec],
            [ArmSpec(0, Decision(), 1 - np.eye(3))],
            multiclass_loss(torch.ones(1, 3), None),
            [6, 3],
            epochs=1,
            epoch_selection="best",
        )


def test_prediction_chunks_bound_the_activations_of_many_models(monkeypatch):
    """With many models on one index set, the (G, chunk, width) activations, not the gathered
    inputs, bound the chunk (fp-pair's 360 arms on 17,500 test images peaked at 5 GB); the
    probabilities do not depend on the chunking."""
    from rwwce.experiments import training

    g, width, n = 40, 50, 1000
    net = BatchedMLP([3, width, 4], seeds=list(range(g)))
    pool = torch.randn(n, 3)
    idx = [np.arange(n)] * g
    whole = _predict(net, pool, idx, False, chunk=n)
    block = g * width * 100
    monkeypatch.setattr(training, "PREDICT_BLOCK", block)
    rows_seen = []
    forward = net.forward
    monkeypatch.setattr(net, "forward", lambda x: rows_seen.append(x.shape[1]) or forward(x))
    chunked = _predict(net, pool, idx, False)
    assert max(rows_seen) * g * width <= block and sum(rows_seen) == n
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


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


@pytest.mark.parametrize("layout", ["dense", "sparse", "mixed", "none"])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_multiclass_loss_matches_per_model_library_calls(layout, scale):
    torch.manual_seed(1)
    g, b, k = 4, 9, 5
    z = (torch.randn(g, b, k) * scale).requires_grad_()
    y = torch.randint(0, k, (g, b))
    fn = torch.rand(g, k) + 0.5
    fp = torch.rand(g, k, k) * (1 - torch.eye(k))
    if layout == "sparse":  # the paper's fp-pair: one entry per model
        fp = torch.zeros(g, k, k)
        for i in range(g):
            fp[i, i, (i + 1) % k] = 19.0
    elif layout == "mixed":  # CE, BCE-softmax and fp-pair models side by side
        fp[0] = 0.0
        fp[1] = 1 - torch.eye(k)
        fp[2] = 0.0
        fp[2, 1, 3] = 19.0
    got = multiclass_loss(fn, None if layout == "none" else fp)(z, y)
    if layout == "none":
        fp = torch.zeros(g, k, k)
    want = torch.stack(
        [rwwce.real_world_weight_cross_entropy(z[i], y[i], fn[i], fp[i]) for i in range(g)]
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    (gz,) = torch.autograd.grad(got.sum(), z)
    (wz,) = torch.autograd.grad(want.sum(), z)
    torch.testing.assert_close(gz, wz, rtol=1e-5, atol=1e-6)


def test_multiclass_loss_is_finite_for_a_confidently_wrong_prediction():
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


@pytest.mark.parametrize("k", [2, 4])
def test_bayes_decision_arm_is_the_librarys_bayes_decision(k):
    """(N, K) probabilities, and for two classes (N,) probabilities of the positive class."""
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(k), 200).astype(np.float32)
    costs = rng.uniform(0, 5, (k, k)) * (1 - np.eye(k))
    want = rwwce.metrics.bayes_decision(probs, costs).numpy()
    np.testing.assert_array_equal(Decision("bayes", costs=costs).predict(probs), want)
    if k == 2:  # float64 oracle: the expected cost of predicting 0 and 1; ties go to 0
        p = probs[:, 1].astype(np.float64)
        expected = np.stack([(1 - p) * costs[0, j] + p * costs[1, j] for j in (0, 1)], 1)
        np.testing.assert_array_equal(
            Decision("bayes", costs=costs).predict(probs[:, 1]), expected.argmin(1)
        )


def _groups(name, seeds=(0,), quick=True, data="digits"):
    d = datasets.load_dataset(data)
    sc = SCENARIOS[name]
    return d, list(sc.groups(d, list(seeds), quick, sc.split_for(d, None)))


def test_fp_pair_is_the_papers_configuration():
    """FN = I, FP zero except FP[i, j] = 19; cost 1 per mistake and 20 for i -> j."""
    d, (g,) = _groups("fp-pair")
    assert {a.arm for a in g.arms} == {"ce", "ce+bayes", "bce-softmax", "rwwce"}
    assert len(g.models) == 2 + len(FpPair.pairs(10, quick=True))
    for arm in (a for a in g.arms if a.arm == "rwwce"):
        i, j = arm.config["pair"]
        model = g.models[arm.spec.model]
        np.testing.assert_array_equal(model.fn, np.ones(10))
        want_fp = np.zeros((10, 10))
        want_fp[i, j] = 19.0
        np.testing.assert_array_equal(model.fp, want_fp)
        want_c = 1.0 - np.eye(10)
        want_c[i, j] = 20.0
        np.testing.assert_array_equal(arm.spec.costs, want_c)
    ce = next(a for a in g.arms if a.arm == "ce")
    assert g.models[ce.spec.model].fp is None  # the control is plain cross-entropy
    assert g.split == "paper"


def test_medical_and_imbalance_groups():
    d, (m,) = _groups("medical", seeds=(0, 1))
    assert m.seeds == [0, 1]  # seeds share the pool: one group
    assert len({len(md.spec.train_idx) for md in m.models}) == 1  # one step count
    spec = m.models[0].spec
    assert 0.005 < spec.train_y.mean() < 0.02
    assert 0.005 < spec.test_y.mean() < 0.03
    assert [md.fn for md in m.models[:3]] == [1.0, 20.0, pytest.approx(2 * 2000 / 2100)]

    d, (imb,) = _groups("imbalance")
    spec = imb.models[0].spec
    r = int(imb.arms[0].config["rare"])
    s = datasets.split(datasets.pool(d, "paper"), 0)
    assert (spec.train_y == r).sum() == round(0.05 * (s.y[s.train] == r).sum())


def test_settings_resolve_their_defaults_and_name_the_option_of_a_bad_value():
    s = spec.Settings()
    assert (s.dataset, s.scenario, s.seeds) == ("digits", "all", spec.SEEDS)
    assert s.out == os.path.join("runs", "digits-all")
    quick = spec.Settings("/data/fashion-mnist/", "medical", quick=True)
    assert quick.seeds == spec.QUICK_SEEDS
    assert quick.out == os.path.join("runs", "fashion-mnist-medical-quick")
    assert spec.Settings(seeds=2, quick=True, out="o").seeds == 2
    for field, value, message in (
        ("seeds", 0, "--seeds must be at least 1, got 0"),
        ("epochs", 0, "--epochs must be at least 1, got 0"),
        ("threads", -1, "--threads must be at least 1, got -1"),
        ("split", "both", "--split must be one of 'paper', 'official'; got 'both'"),
        ("epoch_selection", "best", "--epoch-selection must be one of 'best-val', 'last'"),
        ("device", "tpu", "--device must be one of 'cpu', 'cuda'; got 'tpu'"),
    ):
        with pytest.raises(ValueError, match=message):
            spec.Settings(**{field: value})


def test_budget_gives_small_data_enough_steps_and_mnist_the_papers_epochs():
    assert runner.budget(47_250, None)[:2] == (10, 473)  # Fashion-MNIST, paper split
    epochs, per, rule = runner.budget(1_212, None)  # digits
    assert epochs * per >= spec.MIN_STEPS and epochs > 10 and "steps" in rule
    assert runner.budget(1_212, 3)[:2] == (3, 13)  # --epochs is taken as given


def test_every_scenario_owns_its_presentation():
    for name, sc in SCENARIOS.items():
        assert sc.name == name
        assert sc.table_columns()[:3] == ["cost", sc.headline, "error_rate"]
        assert {a.name for a in sc.arms} >= {sc.reference_arm}
        assert sc.label(sc.headline) and " " in sc.title


# ----------------------------------------------------------------------------------- resume
def test_resuming_from_a_saved_epoch_gives_identical_results():
    pool, y = _toy()
    specs = [
        ModelSpec(
            np.arange(0, 150),
            y[:150],
            np.arange(150, 190),
            y[150:190],
            np.arange(190, 230),
            y[190:230],
            init_seed=g,
            shuffle_seed=10 + g,
        )
        for g in range(3)
    ]
    costs = 1 - np.eye(3)
    arms = [ArmSpec(g, Decision("bayes", costs=costs), costs) for g in range(3)]
    fn, fp = (
        torch.ones(3, 3),
        torch.stack([torch.zeros(3, 3), 1 - torch.eye(3), 2 - 2 * torch.eye(3)]),
    )
    sizes = [6, 8, 3]
    saved = {}

    def keep(state):  # what a checkpoint file holds: a copy
        saved[state.epoch] = GroupState.from_dict(
            {k: _clone(v) for k, v in state.to_dict().items()}
        )

    full = train_group(pool, specs, arms, multiclass_loss(fn, fp), sizes, epochs=5, on_epoch=keep)
    again = train_group(pool, specs, arms, multiclass_loss(fn, fp), sizes, epochs=5, state=saved[2])
    for a, b in zip(full, again, strict=True):
        assert a.best_epoch == b.best_epoch and a.val_costs == b.val_costs
        np.testing.assert_array_equal(a.test_probs, b.test_probs)


def _clone(v):
    import copy

    return copy.deepcopy(v)


# --------------------------------------------------------------------------------------- files
def test_load_records_drops_a_truncated_last_line_with_a_note(tmp_path):
    p = tmp_path / "results.jsonl"
    store.append_records(str(p), [{"key": "a", "metrics": {}}, {"key": "b", "metrics": {}}])
    with open(p, "a") as f:
        f.write('{"key": "c", "metr')
    recs, note = store.load_records(str(p))
    assert [r["key"] for r in recs] == ["a", "b"]
    assert "line 3" in note and "cut short" in note
    assert p.read_text().endswith("\n") and len(p.read_text().splitlines()) == 2
    store.append_records(str(p), [{"key": "c", "metrics": {}}])
    assert [json.loads(x)["key"] for x in p.read_text().splitlines()] == ["a", "b", "c"]


def test_load_records_ends_a_whole_last_record_with_its_newline(tmp_path):
    """A last record without its newline (a crash between the two, an editor): the newline is
    added with a note, so that the next record starts on a line of its own."""
    p = tmp_path / "results.jsonl"
    store.append_records(str(p), [{"key": "a", "metrics": {}}, {"key": "b", "metrics": {}}])
    p.write_bytes(p.read_bytes().rstrip(b"\n"))
    recs, note = store.load_records(str(p))
    assert [r["key"] for r in recs] == ["a", "b"]
    assert "line 2 had no newline at its end" in note
    store.append_records(str(p), [{"key": "c", "metrics": {}}])
    assert [json.loads(x)["key"] for x in p.read_text().splitlines()] == ["a", "b", "c"]
    assert store.load_records(str(p)) == (recs + [{"key": "c", "metrics": {}}], None)


@pytest.mark.parametrize(
    "foreign",
    ['{"something": "else"}\n', "not json at all\n", '{"key": "x"}\n', "[1, 2]"],
)
def test_load_records_refuses_lines_that_are_not_ours(tmp_path, foreign):
    p = tmp_path / "results.jsonl"
    store.append_records(str(p), [{"key": "a", "metrics": {}}])
    with open(p, "a") as f:
        f.write(foreign)
    before = p.read_bytes()
    with pytest.raises(store.ResultsFileError, match="line 2 is not an rwwce result record"):
        store.load_records(str(p))
    assert p.read_bytes() == before  # untouched


def _records(costs_by_arm, scenario="fp-pair", configs=1):
    """Records of ``costs_by_arm[arm][seed]`` (a cost, or a list of one cost per configuration)."""
    recs = []
    for arm, costs in costs_by_arm.items():
        for seed, cost in enumerate(costs):
            per_config = cost if isinstance(cost, list) else [cost] * configs
            for c, value in enumerate(per_config):
                recs.append(
                    {
                        "scenario": scenario,
                        "config": {"pair": [c, (c + 1) % 10]},
                        "seed": seed,
                        "arm": arm,
                        "epochs": 10,
                        "metrics": {"real_world_cost": value, "targeted": 1, "error_rate": 0.1},
                    }
                )
    return recs


def test_one_seed_is_one_training_run_whatever_the_configurations():
    """Pseudo-replication: 90 cost matrices scored on one trained model are n = 1, not 90; no
    interval, no p-value, and the verdict says why."""
    rng = np.random.default_rng(0)
    ce = list(rng.uniform(0.13, 0.15, 90))
    rw = [c - 0.01 for c in ce]  # cheaper on every configuration
    recs = _records({"ce": [ce], "rwwce": [rw]}, configs=90)
    sc = SCENARIOS["fp-pair"]
    rows = {r["arm"]: r for r in report.summarize(recs, sc)}
    assert rows["ce"]["n"] == 1 and rows["ce"]["runs"] == 90 and rows["ce"]["configs"] == 90
    mean, lo, hi = rows["ce"]["cost"]
    assert mean == pytest.approx(np.mean(ce)) and np.isnan(lo) and np.isnan(hi)
    assert np.isnan(rows["ce"]["p_vs_rwwce"])
    assert rows["ce"]["vs_rwwce"].outcome == "untestable"
    (line,) = report.verdict(list(rows.values()), sc)
    assert line.startswith("RWWCE vs ce: no test (1 training run per arm")
    assert "no p-value" in line and "--seeds 2" in line


def test_test_and_interval_are_over_per_seed_means():
    """3 seeds x 30 configurations: n = 3; the p-value is scipy's paired t-test of the per-seed
    means and the interval scipy's t interval of their differences."""
    from scipy import stats

    rng = np.random.default_rng(1)
    ce = [list(rng.uniform(1, 2, 30)) for _ in range(3)]
    rw = [[c - rng.uniform(0, 0.2) for c in seed] for seed in ce]
    recs = _records({"ce": ce, "rwwce": rw})
    row = report.summarize(recs, SCENARIOS["fp-pair"])[0]
    ce_means, rw_means = np.mean(ce, 1), np.mean(rw, 1)
    assert row["n"] == 3 and row["runs"] == 90
    assert row["p_vs_rwwce"] == pytest.approx(stats.ttest_rel(rw_means, ce_means).pvalue)
    d = rw_means - ce_means
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert row["vs_rwwce"].diff == pytest.approx((d.mean(), lo, hi))
    assert row["cost"] == pytest.approx(
        (
            ce_means.mean(),
            *stats.t.interval(0.95, 2, loc=ce_means.mean(), scale=stats.sem(ce_means)),
        )
    )


def test_verdict_wins_loses_ties_and_says_when_it_cannot_tell():
    base = [1.0 + s * 0.1 for s in range(6)]
    noisy = [0.5, -0.4, 0.6, -0.3, 0.45, -0.5]  # a wide interval around 0
    recs = _records(
        {
            "ce": [c + 1.0 for c in base],  # RWWCE cheaper every time: a win
            "ce+bayes": [c - 0.5 for c in base],  # RWWCE dearer every time: a loss
            "bce-softmax": [c + (0.01 if s % 2 else -0.01) for s, c in enumerate(base)],  # a tie
            "other": [c + e for c, e in zip(base, noisy, strict=True)],  # no power to decide
            "rwwce": base,
        }
    )
    sc = SCENARIOS["fp-pair"]
    rows = report.summarize(recs, sc)
    got = {r["arm"]: r["vs_rwwce"].outcome for r in rows if r["vs_rwwce"] is not None}
    assert got == {"ce": "win", "ce+bayes": "loss", "bce-softmax": "tie", "other": "inconclusive"}
    tie = next(r for r in rows if r["arm"] == "bce-softmax")["vs_rwwce"]
    # a tie: the whole interval lies within TIE_MARGIN of the other arm's cost
    assert max(abs(tie.diff[1]), abs(tie.diff[2])) <= report.TIE_MARGIN * tie.other
    lines = report.verdict(rows, sc)
    assert lines[0].startswith("RWWCE wins against ce:")
    assert lines[1].startswith("RWWCE loses to ce+bayes:")
    assert lines[2].startswith("RWWCE ties with bce-softmax (the interval lies within the ±5%")
    assert lines[3].startswith("RWWCE vs other: inconclusive, too few runs to decide")
    assert all("95% CI" in x and "n = 6 seeds" in x for x in lines)


def test_a_large_difference_over_few_seeds_is_inconclusive_not_a_tie():
    """The breast-cancer case: 34.97 vs 91.33 on average over 5 seeds was called a tie; with
    differences this spread the interval holds 0 and the verdict says it cannot tell."""
    rw = [10.0, 80.0, 5.0, 60.0, 19.85]
    bce = [150.0, 20.0, 200.0, 30.0, 56.65]
    recs = _records({"bce@0.5": bce, "rwwce": rw}, scenario="medical")
    for r in recs:
        r["metrics"]["recall"] = 0.5
    sc = SCENARIOS["medical"]
    row = report.summarize(recs, sc)[0]
    assert row["cost"][0] == pytest.approx(91.33) and row["vs_rwwce"].ref == pytest.approx(34.97)
    assert row["vs_rwwce"].outcome == "inconclusive"
    assert "ties" not in report.verdict(report.summarize(recs, sc), sc)[0]


def _report(records, note):
    sc = SCENARIOS["fp-pair"]
    return report.build(records, [sc], {"dataset": "x", "seeds": 2}, note)


def test_the_papers_figures_show_only_for_its_data_and_stand_in(tmp_path):
    import io

    recs = _records({"ce": [1.2, 1.3], "rwwce": [1.0, 1.1]})
    for r in recs:
        r["metrics"]["n_test"] = 17_500
    for note, shown in ((None, False), ("Fashion-MNIST is the offline stand-in", True)):
        rep = _report(recs, note)
        out = io.StringIO()
        report.print_console(rep, out)
        text, md = out.getvalue(), report.markdown(rep)
        assert ("paper vs ours" in text) is shown and ("paper (A)" in text) is shown
        assert ("The paper's figures beside ours" in md) is shown
    part = _report(recs, "stand-in").scenarios[0]
    figures = {what: ours for what, _, ours in part.paper}
    assert figures["test accuracy of the control (ce)"] == "0.900"  # error rate 0.1
    assert figures["test errors of ce per ordered pair of classes (errors / 90)"] == "19.44"
    assert figures["Real World Cost, RWWCE vs control"] == f"{100 * (1.05 / 1.25 - 1):+.1f}%"
    # the data sets the figures apply to, by folder name
    for folder, family in (("fashion-mnist", "fashion-mnist"), ("MNIST", "mnist"), ("x", None)):
        data = _ten_class_idx_dir(tmp_path / folder)
        assert data.family == family
        assert (datasets.paper_note(data) is None) is (family is None)
    assert datasets.paper_note(datasets.load_dataset("digits")) is None


def test_summarize_runs_once_per_scenario(monkeypatch):
    """The report is built once and rendered from that build: markdown, console and plots."""
    import io

    calls = []
    real = report.summarize
    monkeypatch.setattr(report, "summarize", lambda *a: calls.append(1) or real(*a))
    recs = _records({"ce": [1.2, 1.3], "rwwce": [1.0, 1.1]})
    rep = _report(recs, None)
    report.markdown(rep)
    report.print_console(rep, io.StringIO())
    assert len(calls) == 1


def test_plots_pick_the_configuration_where_arms_differ_most():
    recs = []
    for seed, spread in ((0, 1), (1, 7), (2, 3)):
        for arm, t in (("ce", spread), ("rwwce", 0)):
            recs.append(
                {
                    "config": {"pair": [0, 1]},
                    "seed": seed,
                    "arm": arm,
                    "metrics": {"targeted": t, "real_world_cost": 1.0},
                }
            )
    chosen = plots.most_different_records(recs, "targeted")
    assert [(r["seed"], r["arm"]) for r in chosen] == [(1, "ce"), (1, "rwwce")]
    assert plots.most_different_records([], "targeted") == []


# --------------------------------------------------------------------------- runner's output
def test_progress_lines_come_at_a_steady_interval():
    import io

    from rich.console import Console

    times = iter([0.0, 0.0, 10.0, 29.0, 31.0, 45.0, 60.0, 62.0])
    out = io.StringIO()
    ticker = runner.Ticker(Console(file=out, width=200), 30.0, clock=lambda: next(times))
    ticker.start("fp-pair seed 0", 60)
    for _ in range(6):
        ticker.advance(10)
    assert out.getvalue().splitlines() == [
        "fp-pair seed 0: 30/60 steps (50%), 31 s",
        "fp-pair seed 0: 60/60 steps (100%), 62 s",
    ]


def test_a_run_logs_progress_when_output_is_not_a_terminal(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    monkeypatch.setattr(runner, "PROGRESS_EVERY", 0.0)
    out = io.StringIO()
    settings = spec.Settings(
        "digits", "fp-pair", seeds=1, quick=True, epochs=1, out=str(tmp_path / "o")
    )
    runner.run_experiment(settings, console=Console(file=out, width=200))
    steps = [line for line in out.getvalue().splitlines() if " steps (" in line]
    assert steps[-1].startswith("fp-pair seed 0: 5 models, 12 runs, 1 epochs: 13/13 steps (100%)")
    assert len(steps) == 13  # one line per step when the interval is 0


def test_the_threshold_figure_comes_from_the_arms_of_its_rows(tmp_path, monkeypatch):
    """Each curve is drawn from its own arm's kept models: at the arm's threshold it reads the
    cost the arm's row reports (bce@bayes at the Bayes threshold, bce@0.5 at 0.5), although the
    arms of the one BCE model keep different epochs."""
    from rwwce.experiments.scenarios import medical

    settings = spec.Settings(
        "digits", "medical", seeds=2, quick=True, epochs=6, out=str(tmp_path / "o")
    )
    drawn = {}
    monkeypatch.setattr(
        plots,
        "threshold_curves",
        lambda path, grid, curves, **k: drawn.update(grid=grid, curves=curves, points=k["points"]),
    )
    rep = runner.run_experiment(settings)
    (part,) = rep.scenarios
    rows = {r["arm"]: r for r in part.rows}
    epochs = {
        arm: [r["metrics"]["best_epoch"] for r in part.records if r["arm"] == arm]
        for arm in ("bce@0.5", "bce@bayes")
    }
    assert epochs["bce@0.5"] != epochs["bce@bayes"]  # the case that matters: different epochs
    grid = list(drawn["grid"])
    for arm, t in (("bce@0.5", 0.5), ("bce@bayes", medical.BAYES_THRESHOLD)):
        assert drawn["curves"][arm][grid.index(t)] == pytest.approx(rows[arm]["cost"][0])
        assert drawn["points"][arm] == pytest.approx((t, rows[arm]["cost"][0]))
    assert set(drawn["curves"]) == {a.name for a in medical.Medical.arms}
