"""class_weights against scikit-learn and the published formulas; count_classes on every input form."""

import builtins
import math
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import rwwce
from rwwce import weights as W
from rwwce.weights import class_weights, count_classes

SCHEMES = ["balanced", "inverse", "inverse_sqrt", "effective_number", "median_frequency"]


def oracle(counts, scheme, beta=0.999):
    """The schemes written out with NumPy from their papers' formulas."""
    n_c = np.asarray(counts, dtype=np.float64)
    k, n = len(n_c), n_c.sum()
    if scheme == "balanced":
        return n / (k * n_c)
    if scheme == "inverse":
        return 1 / n_c
    if scheme == "inverse_sqrt":
        return 1 / np.sqrt(n_c)
    if scheme == "effective_number":
        w = (1 - beta) / (1 - beta**n_c)
        return w / w.sum() * k
    f = n_c / n
    return np.median(f) / f


# label lists in which every class of [0, k) occurs
@st.composite
def full_labels(draw, max_k=8):
    k = draw(st.integers(1, max_k))
    extra = draw(st.lists(st.integers(0, k - 1), max_size=60))
    labels = list(range(k)) + extra
    return draw(st.permutations(labels)), k


# ---------------------------------------------------------------------------- class_weights
@settings(max_examples=80, deadline=None)
@given(full_labels())
def test_balanced_equals_scikit_learn(labels_k):
    labels, k = labels_k
    expected = compute_class_weight("balanced", classes=np.arange(k), y=np.array(labels))
    got = class_weights(labels)
    assert got.dtype == torch.float32 and got.shape == (k,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("beta", [0.9, 0.999, 0.99999])
def test_schemes_match_formulas(scheme, beta):
    counts = np.array([5000.0, 1200.0, 300.0, 40.0, 7.0, 1.0])
    got = class_weights(torch.tensor(counts), scheme, beta=beta)
    np.testing.assert_allclose(got.numpy(), oracle(counts, scheme, beta), rtol=1e-5)


def test_known_values():
    counts = [6.0, 3.0, 1.0]
    assert class_weights(counts, "inverse").tolist() == pytest.approx([1 / 6, 1 / 3, 1.0])
    assert class_weights(counts, "inverse_sqrt").tolist() == pytest.approx([6**-0.5, 3**-0.5, 1.0])
    assert class_weights(counts, "balanced").tolist() == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    # median frequency: the median class gets weight 1
    assert class_weights(counts, "median_frequency").tolist() == pytest.approx([0.5, 1.0, 3.0])
    # even K: numpy's median averages the two middle frequencies (0.2 and 0.3 -> 0.25)
    assert class_weights([4.0, 3.0, 2.0, 1.0], "median_frequency").tolist() == pytest.approx(
        [0.625, 2.5 / 3, 1.25, 2.5]
    )


def test_effective_number_limits():
    counts = torch.tensor([100.0, 10.0, 1.0])
    # beta = 0: every sample is "the same", all weights 1
    assert class_weights(counts, "effective_number", beta=0.0).tolist() == [1.0, 1.0, 1.0]
    # beta -> 1: (1 - beta) / (1 - beta^n) -> 1 / n, i.e. inverse frequency scaled to sum K
    near_one = class_weights(counts, "effective_number", beta=1 - 1e-9)
    inv = 1 / counts.double()
    np.testing.assert_allclose(near_one.numpy(), (inv / inv.sum() * 3).numpy(), rtol=1e-5)
    assert float(class_weights(counts, "effective_number").sum()) == pytest.approx(3.0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_normalize(scheme):
    counts = torch.tensor([50.0, 20.0, 5.0, 1.0])
    raw = class_weights(counts, scheme).double()
    mean = class_weights(counts, scheme, normalize="mean").double()
    total = class_weights(counts, scheme, normalize="sum").double()
    assert float(mean.mean()) == pytest.approx(1.0, rel=1e-6)
    assert float(total.sum()) == pytest.approx(1.0, rel=1e-6)
    # normalisation only rescales
    np.testing.assert_allclose((mean / raw).numpy(), float(mean[0] / raw[0]), rtol=1e-6)
    np.testing.assert_allclose((total / raw).numpy(), float(total[0] / raw[0]), rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 10_000), min_size=1, max_size=10),
    st.sampled_from(SCHEMES),
    st.sampled_from([None, "mean", "sum"]),
)
def test_invariants(counts, scheme, normalize):
    c = torch.tensor(counts, dtype=torch.float64)
    w = class_weights(c, scheme, normalize=normalize).double()
    assert torch.isfinite(w).all() and (w > 0).all()
    # rarer classes never weigh less
    order = torch.argsort(c)
    assert (w[order][1:] <= w[order][:-1] * (1 + 1e-5)).all()
    # labels and their counts give the same weights
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    np.testing.assert_allclose(
        class_weights(labels, scheme, normalize=normalize).double().numpy(), w.numpy(), rtol=1e-6
    )
    if scheme in ("balanced", "median_frequency") or normalize is not None:
        # invariant to the dataset's size (effective_number is not: beta^n depends on n)
        if scheme != "effective_number":
            np.testing.assert_allclose(
                class_weights(c * 3, scheme, normalize=normalize).double().numpy(),
                w.numpy(),
                rtol=1e-5,
            )
    if scheme == "balanced" and normalize is None:
        # the count-weighted mean of balanced weights is 1: the loss keeps its scale
        assert float((w * c).sum() / c.sum()) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(
    "labels",
    [
        [0, 1, 1, 2, 2, 2],
        np.array([0, 1, 1, 2, 2, 2], dtype=np.int32),
        np.array([0, 1, 1, 2, 2, 2], dtype=np.uint8),
        torch.tensor([0, 1, 1, 2, 2, 2]),
        torch.tensor([[0, 1, 1], [2, 2, 2]]),  # a segmentation mask: flattened
        (0, 1, 1, 2, 2, 2),
    ],
)
def test_label_inputs(labels):
    assert class_weights(labels).tolist() == pytest.approx([2.0, 1.0, 2 / 3])


def test_bool_labels_and_count_inputs():
    assert class_weights([True, False, False, False]).tolist() == pytest.approx([2 / 3, 2.0])
    for counts in ([1.0, 2.0, 3.0], np.array([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0])):
        assert class_weights(counts).tolist() == pytest.approx([2.0, 1.0, 2 / 3])
    # fractional (weighted) counts are fine
    assert class_weights([0.5, 1.5], "inverse").tolist() == pytest.approx([2.0, 2 / 3])
    # int64 counts from count_classes are labels: cast them to float
    counts = count_classes([0, 1, 1], 2)
    assert class_weights(counts.double()).tolist() == pytest.approx([1.5, 0.75])


def test_num_classes_extends_label_range_and_checks_counts():
    with pytest.raises(ValueError, match=r"class 3 has no samples"):
        class_weights([0, 1, 2], num_classes=4)
    assert class_weights([0, 1, 2], num_classes=3).shape == (3,)
    assert class_weights([1.0, 2.0], num_classes=2).shape == (2,)


@pytest.mark.cuda
def test_weights_follow_the_input_device():
    w = class_weights(torch.tensor([0, 1, 1], device="cuda"))
    assert w.device.type == "cuda"
    assert w.tolist() == pytest.approx([1.5, 0.75])


# ------------------------------- scikit-learn's utils/tests/test_class_weight.py, in rwwce's terms
# scikit-learn's properties of compute_class_weight("balanced"), restated for class_weights, whose
# classes are the indices [0, K) (scikit-learn's are any sorted or unordered label values).
@settings(max_examples=60, deadline=None)
@given(full_labels())
def test_balanced_total_weight_is_n_samples_and_equal_per_class(labels_k):
    """test_compute_class_weight: the total effect of the samples is preserved (sum of
    weight x count is n), every class gets the same total weight n / K, and a rarer class never
    gets a smaller weight."""
    labels, k = labels_k
    counts = np.bincount(labels, minlength=k)
    w = class_weights(labels).double().numpy()
    assert np.dot(w, counts) == pytest.approx(len(labels), rel=1e-6)
    np.testing.assert_allclose(w * counts, len(labels) / k, rtol=1e-6)
    order = np.argsort(counts, kind="stable")
    assert (np.diff(w[order]) <= 1e-6 * w.max()).all()


def test_balanced_known_example_from_scikit_learn():
    """scikit-learn's own example y = [2, 2, 2, 3, 3, 4] (classes 2, 3, 4), as indices 0, 1, 2."""
    y = np.asarray([2, 2, 2, 3, 3, 4])
    expected = compute_class_weight("balanced", classes=np.unique(y), y=y)
    w = class_weights(y - 2).numpy()
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert w[0] < w[1] < w[2]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-5, 40), min_size=1, max_size=50),
    st.randoms(use_true_random=False),
)
def test_balanced_on_unordered_and_gapped_labels(values, rng):
    """test_compute_class_weight_balanced_unordered / _not_present: scikit-learn takes any label
    values in any class order; rwwce's classes are the indices [0, K), each of which must occur.
    Labels with gaps or negative values are an error naming the label or the empty classes; the
    same labels renumbered 0..K-1 give scikit-learn's weights, in any class order asked for."""
    y = np.asarray(values)
    classes, index = np.unique(y, return_inverse=True)
    k = len(classes)
    missing = sorted(set(range(int(y.max()) + 1)) - set(values))
    if y.min() < 0:
        with pytest.raises(ValueError, match=f"contains the label {y.min()}"):
            class_weights(y)
    elif missing:
        with pytest.raises(ValueError, match=rf"(class {missing[0]} has|classes \[{missing[0]},)"):
            class_weights(y)
    w = class_weights(index).double().numpy()
    np.testing.assert_allclose(w, compute_class_weight("balanced", classes=classes, y=y), rtol=1e-6)
    order = list(range(k))
    rng.shuffle(order)  # scikit-learn's unordered `classes`: the same weights, permuted
    unordered = compute_class_weight("balanced", classes=classes[order], y=y)
    np.testing.assert_allclose(w[order], unordered, rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(full_labels(), st.randoms(use_true_random=False))
def test_balanced_invariant_to_relabelling_and_sample_order(labels_k, rng):
    """Renaming the classes by a permutation pi permutes the weights the same way; shuffling the
    samples changes nothing."""
    labels, k = labels_k
    pi = list(range(k))
    rng.shuffle(pi)
    w = class_weights(labels)
    relabelled = class_weights([pi[c] for c in labels], num_classes=k)
    torch.testing.assert_close(relabelled[pi], w)
    shuffled = list(labels)
    rng.shuffle(shuffled)
    torch.testing.assert_close(class_weights(shuffled), w)


def test_balanced_weighted_counts_equal_repeated_labels():
    """test_compute_class_weight_balanced_sample_weight_equivalence (with scikit-learn's negative
    labels shifted to indices): weighted counts give the weights of the repeated labels."""
    y = np.asarray([-1, -1, 0, 0, -2, -2]) + 2
    sw = np.asarray([1, 0, 1, 1, 1, 2])
    y_repeated = np.repeat(y, sw)
    from_weighted_counts = class_weights(np.bincount(y, weights=sw).astype(np.float64))
    from_repeated = class_weights(y_repeated)
    torch.testing.assert_close(from_weighted_counts, from_repeated)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y, sample_weight=sw)
    np.testing.assert_allclose(from_weighted_counts.numpy(), expected, rtol=1e-6)
    # test_compute_class_weight_balanced_negative: balanced labels give all ones
    assert class_weights(np.asarray([1, 1, 2, 2, 0, 0])).tolist() == [1.0, 1.0, 1.0]


def test_balanced_weighted_loss_invariant_to_which_class_is_duplicated():
    """test_compute_class_weight_invariance: with balanced weights, tripling class 1, tripling
    class 0 or doubling everything gives the same model. In rwwce's terms: the same
    weighted_mean loss and the same gradient for any parameters, hence the same training run."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(centers=2, random_state=0)
    datasets = [
        (np.vstack([x] + [x[y == 1]] * 2), np.hstack([y] + [y[y == 1]] * 2)),
        (np.vstack([x] + [x[y == 0]] * 2), np.hstack([y] + [y[y == 0]] * 2)),
        (np.vstack([x] * 2), np.hstack([y] * 2)),
    ]
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(2, 2, generator=g, dtype=torch.float64)
    bias = torch.randn(2, generator=g, dtype=torch.float64)
    results = []
    for features, labels in datasets:
        params = (weight.clone().requires_grad_(), bias.clone().requires_grad_())
        logits = torch.from_numpy(features) @ params[0] + params[1]
        target = torch.from_numpy(labels)
        fn = class_weights(target).double()
        loss = rwwce.real_world_weight_cross_entropy(logits, target, fn, reduction="weighted_mean")
        results.append((loss.detach(), *torch.autograd.grad(loss, params)))
    for other in results[1:]:
        for got, expected in zip(other, results[0], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (
            ([0, 1],),
            {"scheme": "focal"},
            r"scheme is 'focal'; expected one of 'balanced', 'inverse'",
        ),
        (([0, 1],), {"normalize": "max"}, r"normalize is 'max'; expected None, 'mean' or 'sum'"),
        (([0, 1],), {"beta": 1.0}, r"beta is 1.0; expected a float in \[0, 1\)"),
        (([0, 1],), {"beta": -0.1}, r"beta is -0.1; expected a float in \[0, 1\)"),
        (([0, 1],), {"beta": "0.9"}, r"beta is '0.9'"),
        (([0, 1],), {"num_classes": 0}, r"num_classes is 0; expected a positive int"),
        (([0, 1],), {"num_classes": 2.0}, r"num_classes is 2.0; expected a positive int"),
        (([0, 1],), {"num_classes": True}, r"num_classes is True"),
        (([0, -1, 1],), {}, r"labels_or_counts contains the label -1; expected class indices >= 0"),
        (
            ([0, -1, 1],),
            {"num_classes": 2},
            r"contains the label -1; expected class indices in \[0, 2\)",
        ),
        (
            ([0, 1, 5],),
            {"num_classes": 3},
            r"contains the label 5; expected class indices in \[0, 3\)",
        ),
        (([0, 0, 2],), {}, r"^class 1 has no samples, so its weight would be infinite"),
        (([0, 0, 3],), {}, r"^classes \[1, 2\] have no samples"),
        (([2.0, 0.0, 1.0],), {}, r"^class 1 has no samples"),
        (([2.0, -1.0],), {}, r"labels_or_counts\[1\] is -1.0; expected finite counts >= 0"),
        (([2.0, float("nan")],), {}, r"labels_or_counts\[1\] is nan"),
        (([2.0, float("inf")],), {}, r"labels_or_counts\[1\] is inf"),
        (
            ([[1.0, 2.0]],),
            {},
            r"floating tensor of shape \(1, 2\), so it is read as per-class counts",
        ),
        (([],), {}, r"shape \(0,\)"),
        ((torch.zeros(0, dtype=torch.long),), {}, r"labels_or_counts is empty"),
        (([1.0, 2.0],), {"num_classes": 3}, r"num_classes is 3 but labels_or_counts holds 2"),
        (([[0, 1], [2]],), {}, r"labels_or_counts could not be turned into an array"),
    ],
)
def test_class_weights_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        class_weights(*args, **kwargs)


def test_class_weights_type_errors():
    with pytest.raises(TypeError, match=r"labels_or_counts has dtype <U1"):
        class_weights(["a", "b"])


def test_never_inf_or_nan_on_extreme_counts():
    counts = torch.tensor([1e12, 1.0, 1e-300 + 1.0])
    for scheme in SCHEMES:
        w = class_weights(counts, scheme)
        assert torch.isfinite(w).all(), scheme


# ---------------------------------------------------------------------------- count_classes
LABELS = torch.tensor([0, 2, 2, 1, 2, 0, 2, 1, 1, 2])
EXPECTED = [2, 3, 5]


class PairDataset(Dataset):
    """Items are (features, python int)."""

    def __len__(self):
        return len(LABELS)

    def __getitem__(self, i):
        return torch.zeros(2), int(LABELS[i])


class DictDataset(Dataset):
    def __len__(self):
        return len(LABELS)

    def __getitem__(self, i):
        return {"image": torch.zeros(2), "label": LABELS[i]}


class MaskDataset(Dataset):
    """Segmentation-style: each item's target is a 2 x 2 mask."""

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.zeros(3), torch.full((2, 2), i, dtype=torch.long)


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(0, len(LABELS), 3):
            yield torch.zeros(1), LABELS[i : i + 3]


@pytest.mark.parametrize(
    "make",
    [
        lambda: LABELS,
        lambda: LABELS.numpy(),
        lambda: LABELS.tolist(),
        lambda: LABELS.view(2, 5),
        lambda: TensorDataset(torch.randn(10, 3), LABELS),
        lambda: PairDataset(),
        lambda: DictDataset(),
        lambda: DataLoader(TensorDataset(torch.randn(10, 3), LABELS), batch_size=3),
        lambda: DataLoader(PairDataset(), batch_size=4, shuffle=True),
        lambda: DataLoader(DictDataset(), batch_size=4),
        lambda: Stream(),
        lambda: ((torch.zeros(3, 1), LABELS[i : i + 3]) for i in range(0, 10, 3)),  # generator
        lambda: [LABELS[:4], LABELS[4:]],  # a list of label batches
        lambda: [LABELS[:4].numpy(), LABELS[4:].numpy()],  # array batches
        lambda: [{"y": LABELS}],
    ],
)
def test_count_classes_input_forms(make):
    counts = count_classes(make(), 3)
    assert counts.dtype == torch.int64
    assert counts.device.type == "cpu"
    assert counts.tolist() == EXPECTED


def test_count_classes_segmentation_masks_and_ignore_index():
    assert count_classes(MaskDataset(), 3).tolist() == [4, 4, 4]
    masks = torch.tensor([[0, 255], [1, 1]])
    assert count_classes(masks, 2, ignore_index=255).tolist() == [1, 2]
    assert count_classes([(None, masks)], 2, ignore_index=255).tolist() == [1, 2]
    assert count_classes([0, -100, 1], 2, ignore_index=-100).tolist() == [1, 1]


def test_count_classes_many_scalar_items_counted_in_chunks():
    labels = torch.randint(0, 7, (70_000,))
    ds = TensorDataset(torch.zeros(70_000, 1), labels)
    assert (
        count_classes(ds, 7, progress=False).tolist()
        == torch.bincount(labels, minlength=7).tolist()
    )


def test_count_classes_agrees_with_numpy_bincount():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 13, size=5000)
    assert count_classes(y, 13).tolist() == np.bincount(y, minlength=13).tolist()
    # classes that never occur count 0
    assert count_classes(np.array([1, 1]), 4).tolist() == [0, 2, 0, 0]


@pytest.mark.parametrize(
    "data, kwargs, exc, match",
    [
        (
            torch.tensor([0, 3]),
            {},
            ValueError,
            r"data contains the label 3; expected class indices in \[0, 3\)",
        ),
        ([0, -1], {}, ValueError, r"data contains the label -1; .* \(pass ignore_index="),
        ([0, 5], {"ignore_index": 5}, None, None),
        (
            PairDataset(),
            {"num_classes": 2},
            ValueError,
            r"data item 1 has the label 2; expected class indices in \[0, 2\)",
        ),
        (
            DataLoader(TensorDataset(torch.zeros(4, 1), torch.tensor([0, 1, 2, 9])), batch_size=2),
            {},
            ValueError,
            r"data batch 1 contains the label 9",
        ),
        (
            torch.tensor([0.0, 1.0]),
            {},
            TypeError,
            r"data has dtype torch.float32; expected integer class indices",
        ),
        (
            [(torch.zeros(1), torch.tensor([0.5]))],
            {},
            TypeError,
            r"the target of data batch 0 has dtype torch.float32",
        ),
        (
            [(torch.zeros(1),)],
            {},
            ValueError,
            r"data batch 0 is a tuple of length 1; expected \(x, y, ...\)",
        ),
        ([{"x": 1}], {}, ValueError, r"data batch 0 is a dict with keys \['x'\]; expected one of"),
        ([object()], {}, TypeError, r"data batch 0 is a object"),
        (42, {}, TypeError, r"data is a int; expected labels"),
        ([0, 1], {"num_classes": 0}, ValueError, r"num_classes is 0; expected a positive int"),
        ([0, 1], {"num_classes": None}, ValueError, r"num_classes is None"),
        (
            [0, 1],
            {"ignore_index": 1.5},
            TypeError,
            r"ignore_index is 1.5; expected an int or None",
        ),
    ],
)
def test_count_classes_errors(data, kwargs, exc, match):
    kwargs = {"num_classes": 3, **kwargs}
    if exc is None:
        assert count_classes(data, **kwargs).tolist() == [1, 0, 0]
        return
    with pytest.raises(exc, match=match):
        count_classes(data, **kwargs)


def test_progress_bar_only_for_long_data(monkeypatch, capsys):
    pytest.importorskip("tqdm")  # an optional dependency: the rich and no-bar paths are below
    ds = TensorDataset(torch.zeros(50, 1), torch.zeros(50, dtype=torch.long))
    monkeypatch.setattr(W, "PROGRESS_MIN_LENGTH", 10)
    assert count_classes(ds, 1).tolist() == [50]
    assert "counting classes" in capsys.readouterr().err
    assert count_classes(ds, 1, progress=False).tolist() == [50]
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(W, "PROGRESS_MIN_LENGTH", 100)
    assert count_classes(ds, 1).tolist() == [50]
    assert capsys.readouterr().err == ""
    # plain label tensors never need a bar
    monkeypatch.setattr(W, "PROGRESS_MIN_LENGTH", 0)
    assert count_classes(torch.zeros(50, dtype=torch.long), 1).tolist() == [50]
    assert capsys.readouterr().err == ""


def _hide(monkeypatch, *prefixes):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] in prefixes:
            raise ImportError(f"no {name}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_progress_falls_back_to_rich_then_to_nothing(monkeypatch):
    pytest.importorskip("rich")
    ds = TensorDataset(torch.zeros(30, 1), torch.ones(30, dtype=torch.long))
    monkeypatch.setattr(W, "PROGRESS_MIN_LENGTH", 5)
    used = []
    import rich.progress

    real_track = rich.progress.track

    def spy(*args, **kwargs):
        used.append("rich")
        return real_track(*args, **kwargs)

    monkeypatch.setattr(rich.progress, "track", spy)
    _hide(monkeypatch, "tqdm")
    assert count_classes(ds, 2).tolist() == [0, 30]
    assert used == ["rich"]
    _hide(monkeypatch, "tqdm", "rich")
    assert count_classes(ds, 2).tolist() == [0, 30]
    assert used == ["rich"]


def test_count_classes_outside_distributed_does_not_reduce():
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    assert count_classes(LABELS, 3, all_reduce=True).tolist() == EXPECTED


def test_public_names():
    assert rwwce.class_weights is class_weights
    assert rwwce.count_classes is count_classes
    assert "class_weights" in rwwce.__all__ and "count_classes" in rwwce.__all__
    assert rwwce.adjust_class_weights is W.adjust_class_weights
    assert sys.modules["rwwce.weights"].__all__ == [
        "AdjustedWeights",
        "adjust_class_weights",
        "class_weights",
        "count_classes",
    ]


# ---------------------------------------------------------------------- adjust_class_weights
def _manual_adjustment(counts, costs, fn, damping, max_factor):
    """The documented rule, written out class by class in plain Python."""
    k = len(fn)
    n_i = [sum(row) for row in counts]
    cost_i = [sum(costs[i][j] * counts[i][j] for j in range(k)) for i in range(k)]
    mean_cost = sum(cost_i) / sum(n_i)
    out = []
    for i in range(k):
        if n_i[i] == 0 or mean_cost == 0:
            out.append(fn[i])
            continue
        shrunk = (cost_i[i] / n_i[i] / mean_cost + 1) / 2
        ratio = min(max(shrunk, 1 / max_factor), max_factor)
        out.append(fn[i] * ratio**damping)
    return out


def test_adjust_class_weights_follows_the_documented_rule():
    counts = [[40, 5, 5], [10, 20, 0], [0, 0, 0]]  # class 2 absent from validation
    costs = [[0, 1, 1], [8, 0, 2], [3, 3, 0]]
    fn = [1.0, 2.0, 0.5]
    raw = rwwce.adjust_class_weights(counts, costs, fn, damping=0.7, max_factor=5, normalize=None)
    expected = _manual_adjustment(counts, costs, fn, 0.7, 5)
    assert raw.fn_weight.tolist() == pytest.approx(expected, rel=1e-6)
    assert raw.factors[2] == 1.0 and math.isnan(raw.cost_per_sample[2])
    assert raw.fp_weight is None

    fp = torch.tensor([[0.0, 0.5, 0.5], [6.0, 0.0, 0.0], [2.0, 2.0, 0.0]])
    normed = rwwce.adjust_class_weights(counts, costs, fn, fp, damping=0.7, max_factor=5)
    mean = sum(expected) / 3
    assert normed.fn_weight.mean().item() == pytest.approx(1.0)
    assert normed.fn_weight.tolist() == pytest.approx([e / mean for e in expected], rel=1e-6)
    torch.testing.assert_close(normed.fp_weight, fp / mean)  # FN / FP balance kept


def test_adjust_class_weights_moves_weight_to_the_costly_class():
    counts = [[90, 10], [30, 20]]  # most positives missed
    new = rwwce.adjust_class_weights(counts, [[0, 1], [20, 0]], [1.0, 1.0])
    assert new.fn_weight[1] > new.fn_weight[0]
    # a perfect validation set costs nothing: nothing to adjust
    same = rwwce.adjust_class_weights(
        [[5, 0], [0, 5]], [[0, 1], [20, 0]], [1.0, 3.0], normalize=None
    )
    assert same.fn_weight.tolist() == [1.0, 3.0]


def test_adjust_class_weights_warns_on_span_and_scale():
    counts = [[100, 0], [50, 1]]
    with pytest.warns(UserWarning, match="span"):
        rwwce.adjust_class_weights(counts, [[0, 1], [1000, 0]], [1e-3, 20.0], normalize=None)
    with pytest.warns(UserWarning, match="largest FN"):
        rwwce.adjust_class_weights(counts, [[0, 1], [1000, 0]], [500.0, 2000.0], normalize=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rwwce.adjust_class_weights(counts, [[0, 1], [1000, 0]], [500.0, 2000.0])  # normalised


def test_adjust_class_weights_bad_input():
    with pytest.raises(ValueError, match=r"confusion has shape \(3, 3\)"):
        rwwce.adjust_class_weights(torch.ones(3, 3), [[0, 1], [1, 0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="fn_weight"):
        rwwce.adjust_class_weights([[1, 0], [0, 1]], [[0, 1], [1, 0]], [1.0])
    with pytest.raises(ValueError, match="damping"):
        rwwce.adjust_class_weights([[1, 0], [0, 1]], [[0, 1], [1, 0]], [1.0, 1.0], damping=0)
    with pytest.raises(ValueError, match="non-negative counts"):
        rwwce.adjust_class_weights([[1, -1], [0, 1]], [[0, 1], [1, 0]], [1.0, 1.0])
