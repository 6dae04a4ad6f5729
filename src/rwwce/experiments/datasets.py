"""The experiments' data: scikit-learn's bundled sets and MNIST-format IDX directories.

``load_dataset(name)`` gives the raw features and labels (``digits``, ``breast-cancer``, or a
directory of IDX files); ``split(data, seed)`` gives a seeded, stratified train / validation / test
split with features standardised on the training part (train + validation, never test).
IDX directories keep their official train / t10k split (only the validation hold-out is seeded).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["Dataset", "Split", "load_dataset", "read_idx", "split"]

TEST_FRACTION = 0.25
VAL_FRACTION = 0.10

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

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Split:
    """One seed's split. ``x`` stacks train, validation and test rows (standardised);
    the index arrays point into it."""

    x: np.ndarray
    y: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


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
    return Dataset(
        name,
        parts["train"][0],
        parts["train"][1],
        [str(i) for i in range(k)],
        parts["test"][0],
        parts["test"][1],
    )


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
        f"--dataset {name!r}: not 'digits', 'breast-cancer' or an existing directory of IDX files"
    )


def split(data: Dataset, seed: int) -> Split:
    """Stratified, seeded split: 25% test (unless the data has its own), 10% of train for
    validation; features standardised with the mean and std of the train + validation rows."""
    from sklearn.model_selection import train_test_split

    if data.x_test is None:
        x_tr, x_te, y_tr, y_te = train_test_split(
            data.x, data.y, test_size=TEST_FRACTION, stratify=data.y, random_state=seed
        )
    else:
        x_tr, x_te, y_tr, y_te = data.x, data.x_test, data.y, data.y_test
    idx = np.arange(len(y_tr))
    tr, va = train_test_split(idx, test_size=VAL_FRACTION, stratify=y_tr, random_state=seed)
    mean = x_tr.mean(0)
    std = x_tr.std(0)
    std[std == 0] = 1.0
    x = (np.concatenate([x_tr, x_te]) - mean) / std
    y = np.concatenate([y_tr, y_te])
    test = np.arange(len(y_tr), len(y))
    return Split(x.astype(np.float32), y, np.sort(tr), np.sort(va), test)
