"""Cost matrices: what each kind of mistake costs in the real world.

A cost matrix ``C`` (K x K) holds ``C[i, j]``, the cost of predicting class ``j`` when the truth is
class ``i`` (rows: truth, columns: prediction). It is the common currency of this package:

* the Real World Cost metric is ``RWC = sum_ij C[i, j] * count[i, j] / n``
  (see :mod:`rwwce.metrics`);
* the RWWCE loss weights map onto it by ``C[i, j] = fn[i] + FP[i, j]`` for ``i != j``, and back by
  ``fn[i] = min_{j != i} C[i, j]``, ``FP[i, j] = C[i, j] - fn[i]`` (:meth:`CostMatrix.loss_weights`).

Example::

    >>> from rwwce.costs import CostMatrix
    >>> cm = CostMatrix.binary(c_fn=2000.0, c_fp=100.0)
    >>> cm.binary_weights()
    (2000.0, 100.0)
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rwwce._validate import (
    check_class_names,
    check_finite_nonnegative,
    check_fn_matrix_diagonal,
    to_tensor,
)

__all__ = ["CostMatrix", "as_cost_matrix"]

_CORNER = "truth \\ predicted"
_MAX_REPR_CLASSES = 12


def _validate_matrix(matrix: Any, name: str) -> torch.Tensor:
    """A validated float64 CPU copy of a (K, K) cost matrix (K >= 2, finite, >= 0)."""
    m = to_tensor(matrix, name)
    if m.dtype == torch.bool:
        m = m.to(torch.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{name} has shape {tuple(m.shape)}; expected a square (K, K) cost matrix")
    if m.shape[0] < 2:
        raise ValueError(f"{name} has shape {tuple(m.shape)}; expected at least 2 classes")
    m = m.to(device="cpu", dtype=torch.float64).clone()
    check_finite_nonnegative(m, name)
    return m


def _format_number(v: float) -> str:
    """Shortest text that reads back as exactly ``v`` (integers without a trailing '.0')."""
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


class CostMatrix:
    """A validated K x K matrix of misclassification costs with class names.

    ``C[i, j]`` is the cost of predicting class ``j`` when the truth is class ``i`` (rows: truth,
    columns: prediction). Entries must be finite and >= 0. The diagonal (the cost of a correct
    decision) is usually 0; a non-zero diagonal is allowed and is used by the metrics
    (:func:`rwwce.metrics.real_world_cost`, :func:`rwwce.metrics.expected_costs`), but
    :meth:`loss_weights` and :meth:`binary_weights` ignore it, because the RWWCE loss has no
    term for correct predictions. (Subtracting ``C[i, i]`` from row ``i`` never changes the
    cost-optimal decision, so a matrix whose diagonal is not larger than its rows' other entries
    loses nothing by this.)

    The matrix is immutable: :attr:`matrix` returns a copy.

    Args:
        matrix: (K, K) costs, K >= 2: nested lists, a NumPy array or a tensor on any device.
        classes: K unique, non-empty class names; default ``("0", ..., "K-1")``.

    Example::

        >>> cm = CostMatrix([[0, 1, 5], [2, 0, 2], [9, 9, 0]], classes=["ok", "warn", "fail"])
        >>> fn, fp = cm.loss_weights()
        >>> fn.tolist(), fp[0].tolist()
        ([1.0, 2.0, 9.0], [0.0, 0.0, 4.0])
        >>> CostMatrix.from_fn_fp(fn, fp, classes=cm.classes) == cm
        True
    """

    __slots__ = ("_matrix", "_classes", "_named")

    def __init__(self, matrix: Any, classes: Sequence[str] | None = None) -> None:
        self._matrix = _validate_matrix(matrix, "matrix")
        self._classes = check_class_names(classes, self._matrix.shape[0])
        self._named = classes is not None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_fn_fp(
        cls, fn: Any, fp: Any = None, classes: Sequence[str] | None = None
    ) -> CostMatrix:
        """Build ``C`` from RWWCE loss weights: ``C[i, j] = fn[i] + FP[i, j]`` (i != j), ``C[i, i] = 0``.

        Args:
            fn: (K,) false-negative weights, or a (K, K) diagonal matrix (the paper's notebook form).
            fp: ``None`` (no FP term), a (K,) vector meaning ``FP[i, j] = fp[j]``, or a (K, K)
                matrix with a zero diagonal.
            classes: class names, as in :class:`CostMatrix`.

        Example::

            >>> CostMatrix.from_fn_fp([2000.0, 100.0]).binary_weights()
            (100.0, 2000.0)
        """
        f = to_tensor(fn, "fn").to(device="cpu", dtype=torch.float64)
        if f.ndim == 2 and f.shape[0] == f.shape[1]:
            check_fn_matrix_diagonal(f, "fn")
            f = torch.diagonal(f).clone()
        if f.ndim != 1:
            raise ValueError(f"fn has shape {tuple(f.shape)}; expected (K,) or a diagonal (K, K)")
        k = f.shape[0]
        if k < 2:
            raise ValueError(f"fn has shape {tuple(f.shape)}; expected at least 2 classes")
        check_finite_nonnegative(f, "fn")
        if fp is None:
            full = torch.zeros(k, k, dtype=torch.float64)
        else:
            p = to_tensor(fp, "fp").to(device="cpu", dtype=torch.float64)
            if p.shape == (k,):
                check_finite_nonnegative(p, "fp")
                full = p.expand(k, k).clone()
            elif p.shape == (k, k):
                check_finite_nonnegative(p, "fp")
                if bool((torch.diagonal(p) != 0).any()):
                    raise ValueError(
                        f"fp has diagonal {torch.diagonal(p).tolist()}; expected a (K, K) matrix "
                        "with a zero diagonal (a correct prediction has no false-positive cost)"
                    )
                full = p.clone()
            else:
                raise ValueError(
                    f"fp has shape {tuple(p.shape)}; expected None, ({k},) or ({k}, {k}) to "
                    f"match fn of shape ({k},)"
                )
        c = f[:, None] + full
        c.fill_diagonal_(0.0)
        return cls(c, classes)

    @classmethod
    def binary(cls, c_fn: float, c_fp: float) -> CostMatrix:
        """The 2 x 2 matrix of a binary problem, classes ``("negative", "positive")``.

        ``C[1, 0] = c_fn`` (a missed positive), ``C[0, 1] = c_fp`` (a false alarm), zero diagonal.

        Example::

            >>> CostMatrix.binary(2000, 100).matrix.tolist()
            [[0.0, 100.0], [2000.0, 0.0]]
        """
        return cls([[0.0, float(c_fp)], [float(c_fn), 0.0]], classes=("negative", "positive"))

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> CostMatrix:
        """Read a cost matrix written as a CSV table.

        The first row holds the predicted class names, the first column the true class names (in
        the same order); the top-left cell is free text. For example::

            truth \\ predicted,negative,positive
            negative,0,100
            positive,2000,0

        Blank lines are skipped and cells are stripped of surrounding whitespace. Malformed files
        (empty, not square, a non-numeric / negative / NaN / infinite cost, row names that differ
        from the column names, duplicate names) raise ValueError naming the row and column,
        1-based as a spreadsheet shows them.
        """
        p = Path(path)
        try:
            with p.open(newline="", encoding="utf-8-sig") as fh:
                rows = [
                    (n, [c.strip() for c in r])
                    for n, r in enumerate(csv.reader(fh), start=1)
                    if any(c.strip() for c in r)
                ]
        except (UnicodeDecodeError, csv.Error) as e:
            raise ValueError(f"{p}: not a readable UTF-8 CSV file ({e})") from None
        if not rows:
            raise ValueError(
                f"{p}: the file is empty; expected a CSV cost matrix with a header row"
            )
        (hdr_line, header), body = rows[0], rows[1:]
        names = header[1:]
        k = len(names)
        if k < 2:
            raise ValueError(
                f"{p}: row {hdr_line} has {k} class name(s) after the corner cell; expected at "
                "least 2"
            )
        seen: dict[str, int] = {}
        for col, name in enumerate(names, start=2):
            if not name:
                raise ValueError(f"{p}: row {hdr_line}, column {col}: empty class name")
            if name in seen:
                raise ValueError(
                    f"{p}: row {hdr_line}, column {col}: duplicate class name {name!r} (also in "
                    f"column {seen[name]}); class names must be unique"
                )
            seen[name] = col
        if len(body) != k:
            raise ValueError(
                f"{p}: {len(body)} class row(s) below the header; expected {k}, one per class "
                f"named in row {hdr_line} (the matrix must be square)"
            )
        values = np.zeros((k, k), dtype=np.float64)
        for i, (line, cells) in enumerate(body):
            if len(cells) != k + 1:
                raise ValueError(
                    f"{p}: row {line} has {len(cells)} cells; expected {k + 1} (a class name and "
                    f"{k} costs, like the header row)"
                )
            if cells[0] != names[i]:
                raise ValueError(
                    f"{p}: row {line}, column 1: row name {cells[0]!r} differs from the column "
                    f"name {names[i]!r} in row {hdr_line}, column {i + 2}; rows and columns must "
                    "name the same classes in the same order"
                )
            for j, cell in enumerate(cells[1:]):
                where = f"{p}: row {line}, column {j + 2}"
                try:
                    v = float(cell)
                except ValueError:
                    raise ValueError(
                        f"{where}: {cell!r} is not a number; expected a cost >= 0"
                    ) from None
                if not math.isfinite(v) or v < 0:
                    raise ValueError(
                        f"{where}: cost {cell!r} is invalid; expected a finite number >= 0"
                    )
                values[i, j] = v
        return cls(values, classes=names)

    # ------------------------------------------------------------------ accessors
    @property
    def matrix(self) -> torch.Tensor:
        """A copy of the (K, K) costs as a float64 CPU tensor."""
        return self._matrix.clone()

    @property
    def classes(self) -> tuple[str, ...]:
        """The K class names (rows and columns share them)."""
        return self._classes

    @property
    def named(self) -> bool:
        """Whether class names were given (else :attr:`classes` are the defaults "0", ...,
        "K-1", which name positions, not labels). A matrix pickled before this existed counts as
        named, as such matrices were treated then."""
        return getattr(self, "_named", True)

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return self._matrix.shape[0]

    def loss_weights(
        self, *, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RWWCE loss weights ``(fn, fp)`` that encode this matrix (its diagonal is ignored).

        ``fn[i] = min_{j != i} C[i, j]`` (what any mistake on a true ``i`` costs at least) and
        ``fp[i, j] = C[i, j] - fn[i]`` off the diagonal, 0 on it. ``fp`` is all zeros when each
        row's off-diagonal costs are equal (then the loss is plain class-weighted cross-entropy).
        ``CostMatrix.from_fn_fp(*cm.loss_weights())`` gives back ``cm`` with a zero diagonal.

        Args:
            dtype: of the returned tensors, float32 (default) or float64 (the matrix's own
                precision).

        Returns:
            ``fn`` (K,), ``fp`` (K, K), in ``dtype``.
        """
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64; got {dtype}")
        c = self._matrix.clone()
        k = c.shape[0]
        eye = torch.eye(k, dtype=torch.bool)
        fn = c.masked_fill(eye, math.inf).amin(dim=1)
        fp = (c - fn[:, None]).masked_fill(eye, 0.0)
        return fn.to(dtype), fp.to(dtype)

    def binary_weights(self) -> tuple[float, float]:
        """``(c_fn, c_fp) = (C[1, 0], C[0, 1])`` of a 2 x 2 matrix (class 1 is the positive class).

        Raises:
            ValueError: the matrix is not 2 x 2.
        """
        if self.num_classes != 2:
            raise ValueError(
                f"binary_weights() needs a 2 x 2 cost matrix; this one is "
                f"{self.num_classes} x {self.num_classes}"
            )
        return float(self._matrix[1, 0]), float(self._matrix[0, 1])

    # ------------------------------------------------------------------ output
    def to_csv(self, path: str | os.PathLike[str], *, corner: str = _CORNER) -> None:
        """Write the matrix as CSV (the format :meth:`from_csv` reads), atomically.

        The table goes to a temporary file in the destination folder, which then replaces
        ``path`` in one step, so readers never see a half-written file; a new file gets the
        permissions the umask gives (0644 under umask 022), a replaced one keeps its mode.
        """
        from rwwce._io import atomic_write

        buf = io.StringIO(newline="")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([corner, *self._classes])
        for name, row in zip(self._classes, self._matrix.tolist(), strict=True):
            w.writerow([name, *(_format_number(v) for v in row)])
        atomic_write(path, buf.getvalue())

    def __repr__(self) -> str:
        k = self.num_classes
        head = f"CostMatrix({k} classes; rows: truth, columns: prediction)"
        if k > _MAX_REPR_CLASSES:
            vals = self._matrix.masked_select(~torch.eye(k, dtype=torch.bool))
            return (
                f"{head[:-1]}, off-diagonal costs in [{_format_number(float(vals.min()))}, "
                f"{_format_number(float(vals.max()))}])"
            )
        cells = [[_format_number(v) for v in row] for row in self._matrix.tolist()]
        name_w = max(len(n) for n in self._classes)
        col_w = [max(len(self._classes[j]), *(len(r[j]) for r in cells)) for j in range(k)]
        lines = [
            head,
            " " * name_w
            + "".join(f"  {n:>{w}}" for n, w in zip(self._classes, col_w, strict=True)),
        ]
        for name, row in zip(self._classes, cells, strict=True):
            lines.append(
                f"{name:>{name_w}}"
                + "".join(f"  {v:>{w}}" for v, w in zip(row, col_w, strict=True))
            )
        return "\n".join(lines)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CostMatrix):
            return NotImplemented
        return self._classes == other._classes and torch.equal(self._matrix, other._matrix)

    def __hash__(self) -> int:
        return hash((self._classes, tuple(self._matrix.flatten().tolist())))


def as_cost_matrix(costs: Any, *, name: str = "costs") -> CostMatrix:
    """Return ``costs`` as a :class:`CostMatrix`.

    Args:
        costs: a :class:`CostMatrix` (returned as is) or anything array-like of shape (K, K):
            nested lists, a NumPy array, a tensor on any device.
        name: the argument name that error messages use.

    Example::

        >>> as_cost_matrix([[0, 1], [5, 0]]).binary_weights()
        (5.0, 1.0)
    """
    if isinstance(costs, CostMatrix):
        return costs
    cm = CostMatrix.__new__(CostMatrix)
    cm._matrix = _validate_matrix(costs, name)
    cm._classes = check_class_names(None, cm._matrix.shape[0])
    return cm
