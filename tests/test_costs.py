"""CostMatrix: validation, the fn/FP mapping, CSV round trips and malformed files."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import rwwce
from rwwce.costs import CostMatrix, as_cost_matrix

PAPER = [[0.0, 100.0], [2000.0, 0.0]]


def brute_loss_weights(c):
    """fn[i] = min_{j != i} C[i, j], FP[i, j] = C[i, j] - fn[i] (i != j), by plain loops."""
    k = len(c)
    fn = [min(c[i][j] for j in range(k) if j != i) for i in range(k)]
    fp = [[0.0 if i == j else c[i][j] - fn[i] for j in range(k)] for i in range(k)]
    return fn, fp


# ---------------------------------------------------------------------------- construction
def test_public_name_and_basic_properties():
    cm = rwwce.CostMatrix([[0, 1, 2], [3, 0, 4], [5, 6, 0]])
    assert cm.num_classes == 3
    assert cm.classes == ("0", "1", "2")
    assert cm.matrix.dtype == torch.float64
    assert cm.matrix.device.type == "cpu"
    assert cm.matrix.tolist() == [[0, 1, 2], [3, 0, 4], [5, 6, 0]]


def test_matrix_is_a_copy():
    cm = CostMatrix(PAPER)
    m = cm.matrix
    m[0, 1] = -5.0
    assert cm.matrix[0, 1] == 100.0


def test_binary_constructor():
    cm = CostMatrix.binary(c_fn=2000, c_fp=100)
    assert cm.classes == ("negative", "positive")
    assert cm.matrix.tolist() == PAPER
    assert cm.binary_weights() == (2000.0, 100.0)
    assert isinstance(cm.binary_weights()[0], float)


def test_binary_weights_needs_two_classes():
    with pytest.raises(ValueError, match=r"2 x 2 .* 3 x 3"):
        CostMatrix(np.ones((3, 3))).binary_weights()


@pytest.mark.parametrize(
    "costs",
    [
        PAPER,
        np.array(PAPER),
        np.array(PAPER, dtype=np.float32),
        np.array([[0, 100], [2000, 0]], dtype=np.int32),
        torch.tensor(PAPER),
        torch.tensor(PAPER, dtype=torch.float64, requires_grad=True),
        torch.tensor([[0, 100], [2000, 0]]),
        np.array(PAPER).T.copy().T,  # non-contiguous view
        np.array(PAPER, dtype=">f8"),  # big-endian
    ],
)
def test_as_cost_matrix_accepts_array_likes(costs):
    cm = as_cost_matrix(costs)
    assert isinstance(cm, CostMatrix)
    assert cm.matrix.tolist() == PAPER
    assert cm.classes == ("0", "1")


def test_as_cost_matrix_returns_cost_matrix_unchanged():
    cm = CostMatrix.binary(5, 1)
    assert as_cost_matrix(cm) is cm


@pytest.mark.cuda
def test_as_cost_matrix_cuda_tensor():
    cm = as_cost_matrix(torch.tensor(PAPER, device="cuda"))
    assert cm.matrix.device.type == "cpu"
    assert cm.matrix.tolist() == PAPER


@pytest.mark.parametrize(
    "matrix, match",
    [
        ([[0, 1, 2]], r"matrix has shape \(1, 3\); expected a square"),
        ([1, 2, 3, 4], r"matrix has shape \(4,\); expected a square"),
        (np.zeros((2, 2, 2)), r"shape \(2, 2, 2\)"),
        ([[0.0]], r"shape \(1, 1\); expected at least 2 classes"),
        ([[0, float("nan")], [1, 0]], r"matrix\[0, 1\] is nan; expected a finite cost >= 0"),
        ([[0, 1], [float("inf"), 0]], r"matrix\[1, 0\] is inf"),
        ([[0, 1], [-3, 0]], r"matrix\[1, 0\] is -3.0; expected a finite cost >= 0"),
        ([[0, 1], [2]], r"matrix could not be turned into an array"),
    ],
)
def test_constructor_rejects_bad_matrices(matrix, match):
    with pytest.raises(ValueError, match=match):
        CostMatrix(matrix)


def test_constructor_rejects_non_numeric():
    with pytest.raises(TypeError, match=r"matrix has dtype <U1; expected numbers"):
        CostMatrix([["a", "b"], ["c", "d"]])
    with pytest.raises(TypeError, match="complex"):
        CostMatrix(np.zeros((2, 2), dtype=complex))


def test_as_cost_matrix_errors_name_costs():
    with pytest.raises(ValueError, match=r"^costs has shape \(2, 3\)"):
        as_cost_matrix(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"^costs\[0, 0\] is -1.0"):
        as_cost_matrix([[-1, 0], [0, 0]])


@pytest.mark.parametrize(
    "classes, exc, match",
    [
        (["a"], ValueError, r"classes has 1 names; expected 2"),
        (["a", "a"], ValueError, r"classes\[1\] is 'a', the same as classes\[0\]"),
        (["a", 1], TypeError, r"classes\[1\] is 1 \(int\); expected a str"),
        (["a", ""], ValueError, r"classes\[1\] is ''; expected a non-empty name"),
        (["a", " b"], ValueError, r"leading or trailing whitespace"),
        ("ab", TypeError, r"classes is the string 'ab'"),
    ],
)
def test_constructor_rejects_bad_classes(classes, exc, match):
    with pytest.raises(exc, match=match):
        CostMatrix(PAPER, classes=classes)


def test_nonzero_diagonal_is_kept_for_metrics_and_ignored_by_loss_weights():
    cm = CostMatrix([[1, 3], [7, 2]])
    assert cm.matrix.diagonal().tolist() == [1, 2]
    fn, fp = cm.loss_weights()
    assert fn.tolist() == [3, 7]
    assert fp.tolist() == [[0, 0], [0, 0]]
    assert cm.binary_weights() == (7.0, 3.0)


# ---------------------------------------------------------------------------- fn / FP mapping
def test_loss_weights_example():
    c = [[0, 1, 5], [2, 0, 2], [9, 9, 0]]
    fn, fp = CostMatrix(c).loss_weights()
    assert fn.dtype == fp.dtype == torch.float32
    assert fn.shape == (3,) and fp.shape == (3, 3)
    bfn, bfp = brute_loss_weights(c)
    assert fn.tolist() == bfn
    assert fp.tolist() == bfp


def test_from_fn_fp_forms():
    fn = [1.0, 2.0, 3.0]
    # fp None: every mistake on class i costs fn[i]
    assert CostMatrix.from_fn_fp(fn).matrix.tolist() == [[0, 1, 1], [2, 0, 2], [3, 3, 0]]
    # fp vector: FP[i, j] = v[j]
    assert CostMatrix.from_fn_fp(fn, [10, 20, 30]).matrix.tolist() == [
        [0, 21, 31],
        [12, 0, 32],
        [13, 23, 0],
    ]
    # fp matrix with zero diagonal
    fp = [[0, 1, 0], [0, 0, 4], [5, 0, 0]]
    assert CostMatrix.from_fn_fp(fn, fp).matrix.tolist() == [[0, 2, 1], [2, 0, 6], [8, 3, 0]]
    # the paper notebook's diagonal fn matrix
    assert CostMatrix.from_fn_fp(torch.diag(torch.tensor(fn))) == CostMatrix.from_fn_fp(fn)
    # names pass through
    assert CostMatrix.from_fn_fp(fn, classes=["a", "b", "c"]).classes == ("a", "b", "c")


@pytest.mark.parametrize(
    "fn, fp, match",
    [
        ([1.0], None, r"fn has shape \(1,\); expected at least 2 classes"),
        (
            [[1.0, 2.0], [0.0, 1.0]],
            None,
            r"fn given as a \(K, K\) matrix must be diagonal.*non-zero off-diagonal entry 2.0 at index \(0, 1\)",
        ),
        (np.ones((2, 3)), None, r"fn has shape \(2, 3\); expected \(K,\) or a diagonal"),
        ([1.0, -1.0], None, r"fn\[1\] is -1.0; expected a finite cost >= 0"),
        ([1.0, float("nan")], None, r"fn\[1\] is nan"),
        ([1.0, 1.0], [1.0, 2.0, 3.0], r"fp has shape \(3,\); expected None, \(2,\) or \(2, 2\)"),
        (
            [1.0, 1.0],
            [[1.0, 0.0], [0.0, 0.0]],
            r"fp has diagonal \[1.0, 0.0\]; expected .* zero diagonal",
        ),
        ([1.0, 1.0], [[0.0, -2.0], [0.0, 0.0]], r"fp\[0, 1\] is -2.0"),
        ([1.0, 1.0], [float("inf"), 0.0], r"fp\[0\] is inf"),
    ],
)
def test_from_fn_fp_rejects_bad_weights(fn, fp, match):
    with pytest.raises(ValueError, match=match):
        CostMatrix.from_fn_fp(fn, fp)


# 0 or normal float32 values: loss_weights() returns float32
finite_costs = st.one_of(st.just(0.0), st.floats(min_value=1e-3, max_value=1e6))


@st.composite
def cost_matrices(draw):
    k = draw(st.integers(2, 6))
    m = draw(arrays(np.float64, (k, k), elements=finite_costs))
    return m


@settings(max_examples=60, deadline=None)
@given(cost_matrices())
def test_loss_weights_round_trip(c):
    cm = CostMatrix(c)
    fn, fp = cm.loss_weights()
    bfn, bfp = brute_loss_weights(c.tolist())
    np.testing.assert_allclose(fn.numpy(), bfn, rtol=1e-6)
    np.testing.assert_allclose(fp.numpy(), bfp, rtol=1e-6, atol=1e-6 * c.max() + 1e-30)
    assert (fn >= 0).all() and (fp >= 0).all()
    assert (fp.diagonal() == 0).all()
    # every row of FP has a zero off the diagonal: fn takes the smallest mistake cost
    k = c.shape[0]
    off = fp.masked_fill(torch.eye(k, dtype=torch.bool), float("inf"))
    assert (off.amin(dim=1) == 0).all()
    back = CostMatrix.from_fn_fp(fn, fp)
    expected = c.copy()
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(
        back.matrix.numpy(), expected, rtol=1e-6, atol=1e-6 * c.max() + 1e-30
    )


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 6).flatmap(
        lambda k: st.tuples(
            arrays(np.float64, (k,), elements=finite_costs),
            arrays(np.float64, (k,), elements=finite_costs),
        )
    )
)
def test_from_fn_fp_then_loss_weights_keeps_costs(fn_fp):
    fn, fp_vec = fn_fp
    cm = CostMatrix.from_fn_fp(fn, fp_vec)
    k = fn.shape[0]
    for i in range(k):
        for j in range(k):
            expected = 0.0 if i == j else fn[i] + fp_vec[j]
            assert cm.matrix[i, j].item() == pytest.approx(expected, rel=1e-12)
    # the mapping back may move cost between fn and FP, but every mistake keeps its total cost
    again = CostMatrix.from_fn_fp(*cm.loss_weights())
    np.testing.assert_allclose(again.matrix.numpy(), cm.matrix.numpy(), rtol=1e-6, atol=1e-3)


def test_loss_weights_reproduce_costs_through_the_loss():
    """The RWWCE loss built from C charges about gap * C[t, j] for a confident mistake t -> j."""
    c = torch.tensor([[0.0, 1.0, 5.0], [2.0, 0.0, 2.0], [9.0, 4.0, 0.0]])
    fn, fp = CostMatrix(c).loss_weights()
    gap = 1000.0
    for t in range(3):
        for j in range(3):
            if t == j:
                continue
            z = torch.zeros(1, 3)
            z[0, j] = gap  # -log p_t ~ gap, -log(1 - p_j) ~ gap - log 2, other terms ~ 0
            loss = rwwce.real_world_weight_cross_entropy(
                z, torch.tensor([t]), fn, fp, reduction="sum"
            )
            assert loss.item() == pytest.approx(gap * c[t, j].item(), rel=1e-3)


# ---------------------------------------------------------------------------- equality, repr
def test_equality_and_hash():
    a = CostMatrix(PAPER, classes=["neg", "pos"])
    b = CostMatrix(np.array(PAPER), classes=("neg", "pos"))
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != CostMatrix(PAPER)  # different names
    assert a != CostMatrix([[0, 100], [2000, 1]], classes=["neg", "pos"])
    assert a != PAPER  # not a CostMatrix
    assert (a == "x") is False


def test_repr_is_an_aligned_table():
    text = repr(CostMatrix.binary(2000, 100))
    lines = text.splitlines()
    assert lines[0] == "CostMatrix(2 classes; rows: truth, columns: prediction)"
    assert lines[1:] == [
        "          negative  positive",
        "negative         0       100",
        "positive      2000         0",
    ]
    frac = repr(CostMatrix([[0, 0.5], [1e-3, 0]], classes=["a", "bb"]))
    assert frac.splitlines()[1:] == ["        a   bb", " a      0  0.5", "bb  0.001    0"]


def test_repr_of_a_large_matrix_is_a_summary():
    text = repr(CostMatrix(np.ones((50, 50)) * 2))
    assert "\n" not in text
    assert "50 classes" in text and "[2, 2]" in text


# ---------------------------------------------------------------------------- CSV
def test_csv_round_trip(tmp_path):
    cm = CostMatrix(
        [[0, 0.1, 1 / 3], [2000, 0, 7.25], [1e-12, 123456789.0, 0.5]],
        classes=["healthy", "sick, mild", 'quote"d'],
    )
    path = tmp_path / "costs.csv"
    cm.to_csv(path)
    back = CostMatrix.from_csv(path)
    assert back == cm  # exact, including 0.1 and 1/3
    assert back.matrix.tolist() == cm.matrix.tolist()


def test_csv_text_format(tmp_path):
    path = tmp_path / "c.csv"
    CostMatrix.binary(2000, 100).to_csv(path)
    assert path.read_text() == (
        "truth \\ predicted,negative,positive\nnegative,0,100\npositive,2000,0\n"
    )
    CostMatrix.binary(1, 2).to_csv(str(path), corner="")
    assert path.read_text().splitlines()[0] == ",negative,positive"


def test_from_csv_is_lenient_about_whitespace_bom_and_blank_lines(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(
        "\ufeffanything here , a , b\n\n a , 0 , 1.5 \r\n b,2e3,0\n\n", encoding="utf-8"
    )
    cm = CostMatrix.from_csv(path)
    assert cm.classes == ("a", "b")
    assert cm.matrix.tolist() == [[0, 1.5], [2000, 0]]


def test_to_csv_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.csv"
    CostMatrix.binary(5, 1).to_csv(path)
    before = path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv"]  # no temp file left

    def broken_replace(src, dst):
        assert Path(src).parent == Path(dst).parent  # the temp file sits next to the target
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        CostMatrix.binary(7, 7).to_csv(path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv"]


def test_to_csv_overwrites(tmp_path):
    path = tmp_path / "c.csv"
    CostMatrix.binary(5, 1).to_csv(path)
    CostMatrix.binary(9, 3).to_csv(path)
    assert CostMatrix.from_csv(path).binary_weights() == (9.0, 3.0)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"the file is empty"),
        ("\n  \n,,\n", r"the file is empty"),
        ("x,a\na,0\n", r"row 1 has 1 class name\(s\) after the corner cell; expected at least 2"),
        ("x,a,b\na,0,1\n", r"1 class row\(s\) below the header; expected 2, .* square"),
        ("x,a,b\na,0,1\nb,1,0\nc,1,1\n", r"3 class row\(s\) below the header; expected 2"),
        ("x,a,b\na,0,1\nb,1\n", r"row 3 has 2 cells; expected 3"),
        ("x,a,b\na,0,1,4\nb,1,0\n", r"row 2 has 4 cells; expected 3"),
        ("x,a,b\na,0,1\nb,abc,0\n", r"row 3, column 2: 'abc' is not a number"),
        ("x,a,b\na,0,\nb,1,0\n", r"row 2, column 3: '' is not a number"),
        (
            "x,a,b\na,0,-1\nb,1,0\n",
            r"row 2, column 3: cost '-1' is invalid; expected a finite number >= 0",
        ),
        ("x,a,b\na,0,1\nb,nan,0\n", r"row 3, column 2: cost 'nan' is invalid"),
        ("x,a,b\na,0,1\nb,1,inf\n", r"row 3, column 3: cost 'inf' is invalid"),
        (
            "x,a,b\nb,0,1\na,1,0\n",
            r"row 2, column 1: row name 'b' differs from the column name 'a' in row 1, column 2",
        ),
        (
            "x,a,a\na,0,1\na,1,0\n",
            r"row 1, column 3: duplicate class name 'a' \(also in column 2\)",
        ),
        ("x,a,\na,0,1\nb,1,0\n", r"row 1, column 3: empty class name"),
        ("\nx,a,b\n\na,0,1\nb,1,q\n", r"row 5, column 3: 'q' is not a number"),  # physical rows
    ],
)
def test_from_csv_rejects_malformed_files(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        CostMatrix.from_csv(path)
    assert str(path) in str(info.value)


def test_from_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        CostMatrix.from_csv(tmp_path / "nope.csv")


def test_to_csv_honours_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = tmp_path / "c.csv"
        CostMatrix([[0, 1], [5, 0]]).to_csv(p)
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644
        assert CostMatrix.from_csv(p).matrix.tolist() == [[0, 1], [5, 0]]
        os.umask(0o077)
        q = tmp_path / "d.csv"
        CostMatrix([[0, 1], [5, 0]]).to_csv(q)
        assert stat.S_IMODE(os.stat(q).st_mode) == 0o600
        assert sorted(os.listdir(tmp_path)) == ["c.csv", "d.csv"]  # no temporary file left
    finally:
        os.umask(old)
