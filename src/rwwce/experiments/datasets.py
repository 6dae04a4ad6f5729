"""The experiments' data: scikit-learn's bundled sets and MNIST-format IDX directories.

``load_dataset(name)`` gives the raw features and labels (``digits``, ``breast-cancer``, or a
directory of IDX files); ``pool(data, mode)`` the test rows and the features standardised on the
other rows; ``split(pool, seed)`` one seed's train / validation / test indices.

Two splits: ``"paper"`` (the paper's notebook: every row pooled, 25% for test at random with
``random_state=1``) and ``"official"`` (an IDX directory's own train / t10k files). Only the
validation hold-out (10% of the non-test rows, stratified) depends on the seed, so all seeds of a
data set share one standardised feature matrix and one test set.

The paper's data are MNIST digits (its notebook: ``fetch_openml('mnist_784')``, 70,000 images,
split 52,500 / 17,500 with ``random_state=1``): a directory of the original MNIST IDX files gives
them (train then t10k rows pooled, 25% drawn for test with ``random_state=1``). Fashion-MNIST, the
same format (Debian's ``dataset-fashion-mnist``), is the offline stand-in and is harder: the
paper's figures are set beside ours only for these two (:func:`paper_note`).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np

from .spec import SPLITS, SplitMode

__all__ = [
    "Dataset",
    "Pool",
    "Split",
    "check_split",
    "load_dataset",
    "paper_note",
    "pool",
    "read_idx",
    "split",
]

TEST_FRACTION = 0.25
VAL_FRACTION = 0.10
PAPER_RANDOM_STATE = 1
# Class names of data sets recognised by their folder name (lower case, digits stripped).
KNOWN_CLASSES = {
    "fashion-mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}

#: Folder names (lower case, "_" read as "-") of the IDX data sets the paper's figures can be set
#: beside: the paper's own data (MNIST digits) and Fashion-MNIST, its offline stand-in here.
PAPER_FAMILIES = {"mnist": "mnist", "fashion-mnist": "fashion-mnist"}
FASHION_MNIST_HINT = (
    "Fashion-MNIST in this format: `apt-get install dataset-fashion-mnist` (Debian; installs "
    "/usr/share/datasets/fashion-mnist), or any folder with the four MNIST IDX files"
)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass
class Dataset:
    name: str
    x: np.ndarray  # (N, d) float32 (train part for IDX data)
    y: np.ndarray  # (N,) int64
    classes: list[str]
    x_test: np.ndarray | None = None  # official test split (IDX data)
    y_test: np.ndarray | None = None
    family: str | None = None  # "mnist" or "fashion-mnist" (by folder name), else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Pool:
    """Standardised features of every row and the rows held out for test (seed-independent)."""

    mode: SplitMode
    x: np.ndarray  # (N, d) float32, standardised on the non-test rows
    y: np.ndarray  # (N,) int64
    fit: np.ndarray  # rows for training and validation
    test: np.ndarray


@dataclass
class Split:
    """One seed's split. ``x`` stacks train, validation and test rows (standardised);
    the index arrays point into it."""

    x: np.ndarray
    y: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    mode: SplitMode = "paper"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) into a numpy array of its declared shape."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot read IDX file {path!r}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path!r} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path!r}: truncated IDX header")
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path!r}: IDX header promises shape {shape} ({expected} bytes of data), "
            f"the file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    # Some distributions use a dot before "idx" (train-images.idx3-ubyte).
    alt = stem.replace("-idx", ".idx")
    for name in (alt, alt + ".gz"):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(
        f"{directory!r} has no {stem}[.gz] (an MNIST-format IDX directory is expected)"
    )


def _load_idx_dir(directory: str) -> Dataset:
    parts = {}
    for split_name, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(_find_idx(directory, f"{prefix}-images-idx3-ubyte"))
        y = read_idx(_find_idx(directory, f"{prefix}-labels-idx1-ubyte"))
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"{directory!r}: {prefix} images {x.shape} and labels {y.shape} do not match"
            )
        parts[split_name] = (x.reshape(len(x), -1).astype(np.float32), y.astype(np.int64))
    labels = np.concatenate([parts["train"][1], parts["test"][1]])
    if labels.min() < 0:
        raise ValueError(f"{directory!r}: negative labels")
    k = int(labels.max()) + 1
    if parts["train"][0].shape[1] != parts["test"][0].shape[1]:
        raise ValueError(f"{directory!r}: train and test images differ in size")
    name = os.path.basename(os.path.normpath(directory)) or directory
    folder = name.lower().replace("_", "-")
    known = KNOWN_CLASSES.get(folder)
    classes = known if known is not None and len(known) == k else [str(i) for i in range(k)]
    return Dataset(
        name,
        parts["train"][0],
        parts["train"][1],
        classes,
        parts["test"][0],
        parts["test"][1],
        PAPER_FAMILIES.get(folder) if k == 10 else None,
    )


def paper_note(data: Dataset) -> str | None:
    """How ``data`` relates to the paper's (MNIST digits: 70,000 images, 52,500 / 17,500 split
    with ``random_state=1``), or None when the paper's figures do not apply to it."""
    if data.family == "mnist":
        return "the paper's data (MNIST digits); the paper reports one run per configuration"
    if data.family == "fashion-mnist":
        return (
            "the paper ran on MNIST digits, one run per configuration; Fashion-MNIST is the "
            "offline stand-in here and is harder (see CE's accuracy), so compare the relative "
            "changes, not absolute counts"
        )
    return None


def load_dataset(name: str) -> Dataset:
    """``digits``, ``breast-cancer`` (scikit-learn, no download) or a directory of IDX files."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return Dataset(
            "digits",
            d.data.astype(np.float32),
            d.target.astype(np.int64),
            [str(i) for i in range(10)],
        )
    if name == "breast-cancer":
        from sklearn.datasets import load_breast_cancer

        d = load_breast_cancer()
        # scikit-learn codes malignant as 0; we make malignant the positive class 1.
        y = (d.target == 0).astype(np.int64)
        return Dataset("breast-cancer", d.data.astype(np.float32), y, ["benign", "malignant"])
    if os.path.isdir(name):
        return _load_idx_dir(name)
    if os.path.exists(name):
        raise ValueError(
            f"--dataset {name!r} is a file; give a directory of MNIST-format IDX files"
        )
    raise FileNotFoundError(
        f"--dataset {name!r}: not 'digits', 'breast-cancer' or an existing directory of IDX "
        f"files. {FASHION_MNIST_HINT}"
    )


def check_split(data: Dataset, mode: str) -> None:
    """Raise ValueError unless split ``mode`` exists for ``data``."""
    if mode not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {mode!r}")
    if mode == "official" and data.x_test is None:
        raise ValueError(
            f"--split official: {data.name!r} has no official test split "
            "(only MNIST-format IDX directories do); use --split paper"
        )


def pool(data: Dataset, mode: SplitMode) -> Pool:
    """The test rows of split ``mode`` and the standardised feature matrix (computed once).

    ``"paper"``: train and official test rows (if any) pooled, then 25% drawn for test with
    ``sklearn.model_selection.train_test_split(..., test_size=0.25, random_state=1)`` (the
    paper's notebook: not stratified, the same test rows whatever the seed).
    ``"official"``: the data's own train / test files (IDX directories only).
    Features are standardised with the mean and std of the non-test rows.
    """
    from sklearn.model_selection import train_test_split

    check_split(data, mode)
    if mode == "official":
        x_all = np.concatenate([data.x, data.x_test])
        y_all = np.concatenate([data.y, data.y_test])
        fit = np.arange(len(data.y))
        test = np.arange(len(data.y), len(y_all))
    else:
        if data.x_test is None:
            x_all, y_all = data.x, data.y
        else:
            x_all = np.concatenate([data.x, data.x_test])
            y_all = np.concatenate([data.y, data.y_test])
        fit, test = train_test_split(
            np.arange(len(y_all)), test_size=TEST_FRACTION, random_state=PAPER_RANDOM_STATE
        )
        fit, test = np.sort(fit), np.sort(test)
    rows = x_all[fit]
    mean, std = rows.mean(0), rows.std(0)
    del rows
    std[std == 0] = 1.0
    # In place, on a copy of the caller's array only where x_all is not already a new one: one
    # (N, d) float32 matrix at a time (MNIST-sized data: 220 MB each).
    x = x_all.astype(np.float32, copy=x_all is data.x)
    x -= mean
    x /= std
    return Pool(mode, x, y_all.astype(np.int64), fit, test)


def split(data: Dataset | Pool, seed: int, mode: SplitMode = "paper") -> Split:
    """One seed's split: the pool's test rows, and 10% of the other rows (stratified, seeded)
    held out for validation. ``data`` may be a :class:`Pool` already made (no copy then)."""
    from sklearn.model_selection import train_test_split

    p = data if isinstance(data, Pool) else pool(data, mode)
    tr, va = train_test_split(p.fit, test_size=VAL_FRACTION, stratify=p.y[p.fit], random_state=seed)
    return Split(p.x, p.y, np.sort(tr), np.sort(va), p.test, p.mode)
