"""Class weights for imbalanced data, and counting classes in any kind of dataset.

:func:`count_classes` counts labels in a tensor, a ``Dataset``, a ``DataLoader`` or any iterable
of batches (summed over all processes under ``torch.distributed``); :func:`class_weights` turns
labels or counts into per-class weights with the usual recipes, ready to pass as ``fn_weight``.

Example::

    >>> import torch
    >>> from rwwce.weights import class_weights, count_classes
    >>> counts = count_classes(torch.tensor([0, 0, 0, 1]), num_classes=2)
    >>> counts.tolist()
    [3, 1]
    >>> class_weights(counts.double()).tolist()   # floats are counts: n / (K * n_c)
    [0.6666666865348816, 2.0]
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from rwwce import _costmath
from rwwce._validate import (
    check_finite_nonnegative,
    check_ignore_index,
    check_num_classes,
    to_tensor,
)
from rwwce.costs import as_cost_matrix

__all__ = ["AdjustedWeights", "adjust_class_weights", "class_weights", "count_classes"]

Scheme = Literal["balanced", "inverse", "inverse_sqrt", "effective_number", "median_frequency"]
_SCHEMES = ("balanced", "inverse", "inverse_sqrt", "effective_number", "median_frequency")
_NORMALIZE = (None, "mean", "sum")

#: count_classes shows a progress bar only for data longer than this (items or batches).
PROGRESS_MIN_LENGTH = 5000

_TARGET_KEYS = ("target", "targets", "label", "labels", "y")


def _labels_tensor(x: Any, name: str) -> torch.Tensor:
    """Integer class indices from a tensor, array or list (bool counts as 0/1), flattened."""
    t = to_tensor(x, name)
    if t.dtype == torch.bool:
        t = t.to(torch.int64)
    if t.is_floating_point() or t.is_complex():
        raise TypeError(
            f"{name} has dtype {t.dtype}; expected integer class indices (for soft targets or "
            "probabilities, take the argmax first)"
        )
    return t.reshape(-1).to(torch.int64)


def _bincount(
    labels: torch.Tensor, num_classes: int, name: str, ignore_index: int | None
) -> torch.Tensor:
    """Per-class counts (int64, K) of a flat int64 tensor, with a range check."""
    if ignore_index is not None:
        labels = labels[labels != ignore_index]
    if labels.numel() == 0:
        return torch.zeros(num_classes, dtype=torch.int64, device=labels.device)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        hint = (
            "" if ignore_index is not None else " (pass ignore_index= to skip a placeholder label)"
        )
        raise ValueError(
            f"{name} contains the label {bad}; expected class indices in [0, {num_classes})" + hint
        )
    return torch.bincount(labels, minlength=num_classes)


def class_weights(
    labels_or_counts: Any,
    scheme: Scheme = "balanced",
    *,
    num_classes: int | None = None,
    beta: float = 0.999,
    normalize: Literal["mean", "sum"] | None = None,
) -> torch.Tensor:
    """Per-class weights for imbalanced data, e.g. the ``fn_weight`` of the RWWCE loss.

    With ``n_c`` the number of samples of class ``c``, ``n = sum_c n_c`` and ``K`` classes:

    * ``"balanced"``: ``w_c = n / (K * n_c)``, identical to scikit-learn's
      ``compute_class_weight("balanced", ...)``; the count-weighted mean of ``w`` is 1.
    * ``"inverse"``: ``w_c = 1 / n_c``.
    * ``"inverse_sqrt"``: ``w_c = 1 / sqrt(n_c)``.
    * ``"effective_number"`` (Cui et al., CVPR 2019, "Class-Balanced Loss Based on Effective
      Number of Samples"): ``w_c = (1 - beta) / (1 - beta ** n_c)``, rescaled to sum to ``K``.
    * ``"median_frequency"`` (Eigen & Fergus 2015): ``w_c = median(f) / f_c`` with
      ``f_c = n_c / n`` (``numpy.median``: the mean of the two middle values for even ``K``).

    ``normalize`` then rescales: ``None`` keeps the scheme's own scale, ``"mean"`` makes the
    weights average 1, ``"sum"`` makes them sum to 1.

    What the first argument means is decided by its dtype, never by its values:

    * integer (or bool) tensor / array / list of ints: **labels**, any shape (flattened), values
      in ``[0, num_classes)``; ``num_classes`` defaults to ``max(label) + 1``;
    * floating tensor / array / list of floats: **counts**, shape (K,), finite and >= 0 (they may be
      fractional, e.g. weighted counts). ``count_classes`` returns int64 counts: pass them as
      ``counts.double()``.

    Args:
        labels_or_counts: labels (integer dtype) or per-class counts (floating dtype), see above.
        scheme: one of the recipes above. Default ``"balanced"``.
        num_classes: K. Required to be >= the largest label + 1; for counts it must equal their
            length when given.
        beta: ``effective_number``'s hyper-parameter, in [0, 1). Default 0.999.
        normalize: ``None``, ``"mean"`` or ``"sum"``.

    Returns:
        float32 tensor of shape (K,), on the input tensor's device (CPU for arrays and lists).

    Raises:
        ValueError: a class has no samples (weights would be infinite; the message lists the
            classes), a label is negative or >= ``num_classes``, counts are negative / NaN / not
            1-D, or an option is invalid.

    Example::

        >>> class_weights([0, 0, 0, 1, 1, 2]).tolist()          # labels
        [0.6666666865348816, 1.0, 2.0]
        >>> class_weights([3.0, 2.0, 1.0], "inverse", normalize="sum").tolist()   # counts
        [0.1818181872367859, 0.27272728085517883, 0.5454545617103577]
    """
    if scheme not in _SCHEMES:
        raise ValueError(f"scheme is {scheme!r}; expected one of {', '.join(map(repr, _SCHEMES))}")
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize is {normalize!r}; expected None, 'mean' or 'sum'")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= beta < 1.0:
        raise ValueError(f"beta is {beta!r}; expected a float in [0, 1)")
    k = check_num_classes(num_classes, required=False)

    x = to_tensor(labels_or_counts, "labels_or_counts")
    device = x.device
    if x.is_floating_point():
        if x.ndim != 1 or x.numel() == 0:
            raise ValueError(
                f"labels_or_counts is a floating tensor of shape {tuple(x.shape)}, so it is read as "
                "per-class counts; expected shape (K,) with K >= 1 (integer dtype means labels)"
            )
        if k is not None and k != x.numel():
            raise ValueError(
                f"num_classes is {k} but labels_or_counts holds {x.numel()} per-class counts; "
                "expected them to agree"
            )
        counts = x.to("cpu", torch.float64)
        check_finite_nonnegative(counts, "labels_or_counts", "finite counts >= 0")
    else:
        labels = _labels_tensor(x, "labels_or_counts")
        if labels.numel() == 0:
            raise ValueError("labels_or_counts is empty; expected at least one label")
        if k is None:
            lo = int(labels.min())
            if lo < 0:
                raise ValueError(
                    f"labels_or_counts contains the label {lo}; expected class indices >= 0"
                )
            k = int(labels.max()) + 1
        counts = _bincount(labels, k, "labels_or_counts", None).to("cpu", torch.float64)

    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        which = f"class {empty[0]} has" if len(empty) == 1 else f"classes {empty} have"
        raise ValueError(
            f"{which} no samples, so its weight would be infinite; expected every class in "
            f"[0, {counts.numel()}) to occur at least once (remap the labels to drop classes "
            "that never occur)"
        )

    w = _scheme_weights(counts, scheme, float(beta))
    if normalize == "mean":
        w = w * (w.numel() / w.sum())
    elif normalize == "sum":
        w = w / w.sum()
    return w.to(device=device, dtype=torch.float32)


def _scheme_weights(counts: torch.Tensor, scheme: str, beta: float) -> torch.Tensor:
    """float64 weights from float64 counts, all > 0."""
    k = counts.numel()
    n = counts.sum()
    if scheme == "balanced":
        return n / (k * counts)
    if scheme == "inverse":
        return 1.0 / counts
    if scheme == "inverse_sqrt":
        return counts.rsqrt()
    if scheme == "effective_number":
        if beta == 0.0:
            w = torch.ones_like(counts)
        else:
            # 1 - beta**n computed as -expm1(n log beta): exact for beta near 1 and small n.
            log_beta = math.log(beta)
            w = -math.expm1(log_beta) / -torch.expm1(counts * log_beta)
        return w * (k / w.sum())
    # median_frequency
    freq = counts / n
    return float(np.median(freq.numpy())) / freq


def _target_of(item: Any, where: str) -> Any:
    """The target of one dataset item or batch: ``y`` of ``(x, y, ...)``, a dict's label key,
    or the item itself when it is a tensor / array / number."""
    if isinstance(item, (torch.Tensor, np.ndarray, numbers.Integral)):
        return item
    if isinstance(item, (tuple, list)):
        if len(item) < 2:
            raise ValueError(
                f"{where} is a {type(item).__name__} of length {len(item)}; expected (x, y, ...) "
                "with the target second, or a tensor of labels"
            )
        return item[1]
    if isinstance(item, Mapping):
        for key in _TARGET_KEYS:
            if key in item:
                return item[key]
        raise ValueError(
            f"{where} is a dict with keys {sorted(map(str, item))}; expected one of "
            f"{list(_TARGET_KEYS)} to hold the target"
        )
    raise TypeError(
        f"{where} is a {type(item).__name__}; expected a tensor of labels, an (x, y) pair or a "
        "dict with a 'label' / 'target' key"
    )


def _progress(it: Iterable[Any], total: int | None, enabled: bool) -> Iterable[Any]:
    """Wrap ``it`` in a progress bar (tqdm, else rich, else none) when it is long."""
    if not enabled or total is None or total <= PROGRESS_MIN_LENGTH:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:
        pass
    else:
        return tqdm(it, total=total, desc="counting classes", leave=False)
    try:
        from rich.progress import track
    except ImportError:
        return it
    return track(it, total=total, description="counting classes", transient=True)


def _is_label_list(data: Any) -> bool:
    return isinstance(data, (list, tuple)) and all(isinstance(v, numbers.Integral) for v in data)


def _dist_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def count_classes(
    data: Any,
    num_classes: int,
    *,
    progress: bool = True,
    ignore_index: int | None = None,
    all_reduce: bool = True,
) -> torch.Tensor:
    """Count how often each class occurs: ``counts[c] = #{labels == c}``.

    ``data`` may be

    * a tensor, NumPy array or list of integer labels (any shape);
    * a ``torch.utils.data.Dataset`` of ``(x, y, ...)`` items (``y`` a label or a tensor of labels,
      e.g. a segmentation mask), of bare labels, or of dicts with a ``"label"`` / ``"target"`` key;
    * a ``DataLoader`` or any iterable of batches in the same forms (``y`` as a tensor or as the
      second element of ``(x, y)``).

    Under ``torch.distributed`` (available and initialised) the counts are all-reduced (SUM) over
    the default process group, so every rank gets the global counts: give each rank its own shard
    (e.g. a ``DataLoader`` with a ``DistributedSampler``, whose padding repeats a few samples), and
    call it on every rank. Pass ``all_reduce=False`` when every rank already sees all the data.

    Args:
        data: labels, a Dataset, a DataLoader or an iterable of batches (see above).
        num_classes: K.
        progress: show a progress bar (tqdm, else rich, else none) on rank 0 when ``data`` has more
            than ``PROGRESS_MIN_LENGTH`` (5000) items or batches.
        ignore_index: a label value to skip (e.g. -100 or 255); ``None`` skips nothing.
        all_reduce: sum the counts over processes when ``torch.distributed`` is initialised.

    Returns:
        int64 tensor of shape (K,) on the CPU.

    Raises:
        ValueError: a label outside ``[0, num_classes)`` (other than ``ignore_index``), or a batch
            whose target cannot be found. TypeError: floating-point labels.

    Example::

        >>> import torch
        >>> from torch.utils.data import TensorDataset, DataLoader
        >>> ds = TensorDataset(torch.randn(6, 2), torch.tensor([0, 1, 1, 2, 2, 2]))
        >>> count_classes(DataLoader(ds, batch_size=4), num_classes=3).tolist()
        [1, 2, 3]
    """
    k = int(check_num_classes(num_classes, required=True) or 0)
    ignore_index = check_ignore_index(ignore_index, optional=True)

    if isinstance(data, (torch.Tensor, np.ndarray)) or _is_label_list(data):
        counts = _bincount(_labels_tensor(data, "data"), k, "data", ignore_index).cpu()
    else:
        counts = _count_iterable(data, k, progress, ignore_index)

    if all_reduce and _dist_initialized():
        import torch.distributed as dist

        dev = torch.device("cpu")
        if dist.get_backend() == "nccl":
            dev = torch.device("cuda", torch.cuda.current_device())
        buf = counts.to(dev)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        counts = buf.cpu()
    return counts


def _count_iterable(data: Any, k: int, progress: bool, ignore_index: int | None) -> torch.Tensor:
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    is_loader = isinstance(data, DataLoader)
    kind = "batch" if is_loader or not isinstance(data, Dataset) else "item"
    items: Iterable[Any]
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset) and not is_loader:
        if not hasattr(data, "__len__"):
            raise TypeError("data is a map-style Dataset without __len__; cannot iterate over it")
        items = _dataset_items(data)
    elif isinstance(data, Iterable):
        items = data
    else:
        raise TypeError(
            f"data is a {type(data).__name__}; expected labels (tensor, array, list), a Dataset, "
            "a DataLoader or an iterable of batches"
        )
    try:
        total: int | None = len(data)
    except TypeError:
        total = None
    rank0 = not _dist_initialized() or torch.distributed.get_rank() == 0

    counts = torch.zeros(k, dtype=torch.int64)
    scalars: list[int] = []  # single labels (one per Dataset item) are counted in chunks
    first_scalar = 0
    for i, item in enumerate(_progress(items, total, progress and rank0)):
        where = f"data {kind} {i}"
        y = _target_of(item, where)
        if isinstance(y, torch.Tensor) and y.ndim == 0 and not y.is_floating_point():
            y = int(y)
        if isinstance(y, numbers.Integral) and not isinstance(y, bool):
            if not scalars:
                first_scalar = i
            scalars.append(int(y))
            if len(scalars) >= 65536:
                counts += _count_scalars(scalars, k, kind, first_scalar, ignore_index)
                scalars = []
            continue
        labels = _labels_tensor(y, f"the target of {where}")
        counts += _bincount(labels, k, where, ignore_index).cpu()
    if scalars:
        counts += _count_scalars(scalars, k, kind, first_scalar, ignore_index)
    return counts


def _count_scalars(
    scalars: list[int], k: int, kind: str, first: int, ignore_index: int | None
) -> torch.Tensor:
    labels = torch.tensor(scalars, dtype=torch.int64)
    keep = (
        labels != ignore_index
        if ignore_index is not None
        else torch.ones_like(labels, dtype=torch.bool)
    )
    bad = keep & ((labels < 0) | (labels >= k))
    if bool(bad.any()):
        j = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"data {kind} {first + j} has the label {scalars[j]}; expected class indices in "
            f"[0, {k})"
            + (
                ""
                if ignore_index is not None
                else " (pass ignore_index= to skip a placeholder label)"
            )
        )
    return torch.bincount(labels[keep], minlength=k)


def _dataset_items(ds: Any) -> Iterator[Any]:
    for i in range(len(ds)):
        yield ds[i]


class AdjustedWeights(NamedTuple):
    """New loss weights proposed by :func:`adjust_class_weights`."""

    fn_weight: torch.Tensor
    fp_weight: torch.Tensor | None
    factors: torch.Tensor
    cost_per_sample: torch.Tensor


def adjust_class_weights(
    confusion: Any,
    costs: Any,
    fn_weight: Any,
    fp_weight: Any = None,
    *,
    damping: float = 0.5,
    max_factor: float = 10.0,
    normalize: Literal["mean"] | None = "mean",
    max_span: float = 1e4,
    max_scale: float = 1e3,
) -> AdjustedWeights:
    """Propose new false-negative weights from what the validation set cost, class by class.

    With the validation confusion counts ``count[i, j]`` and the costs ``C[i, j]``, class i's
    samples cost on average ``r_i = sum_j C[i, j] count[i, j] / n_i``, against ``r = RWC`` for
    all samples (``r_i / r`` is class i's share of the cost divided by its share of the samples).
    Each FN weight is rescaled by that ratio, shrunk halfway towards 1, damped and bounded::

        factor_i = clamp((r_i / r + 1) / 2, 1 / max_factor, max_factor) ** damping
        fn_i    <- fn_i * factor_i

    so classes whose samples cost more than average get more weight, and a class without a single
    costly mistake loses at most half its weight (before damping) per round, instead of being
    driven to 0 over a few rounds by a validation set where it happened to be perfect. A class
    absent from the validation set, or a validation set with zero cost, keeps its weight.
    ``normalize="mean"`` then divides the FN weights *and* the FP weights by the FN weights' mean,
    so the loss keeps the scale of plain cross-entropy (the learning rate keeps its meaning) and the
    FN / FP balance is unchanged. This is a heuristic, not an optimiser: apply it for a few rounds
    and keep the weights with the lowest validation cost, checked on held-out data
    (``examples/adjust_weights.py`` measures it).

    Warns (``UserWarning``) when the new FN weights span more than ``max_span`` (largest / smallest
    positive weight; the rare classes' gradients then drown the rest, or vanish) or when the
    largest FN + FP weight exceeds ``max_scale`` (the loss, and its gradient, are that many times
    plain cross-entropy's: lower the learning rate or normalise).

    Args:
        confusion: (K, K) validation confusion counts, rows: truth (e.g.
            :func:`rwwce.metrics.confusion_matrix` or a :class:`rwwce.CostMonitor` record's
            ``"confusion_matrix"``).
        costs: a :class:`rwwce.CostMatrix` or a (K, K) array-like.
        fn_weight: (K,) the FN weights the model was trained with.
        fp_weight: ``None`` or the FP weights it was trained with ((K,) or (K, K)); only rescaled
            by the normalisation.
        damping: exponent in (0, 1]: 1 rescales fully, 0.5 (default) by the square root.
        max_factor: bound on the shrunk ratio (and its inverse) per round. Default 10.
        normalize: ``"mean"`` (default) or ``None``.
        max_span, max_scale: warning thresholds (defaults 1e4 and 1e3).

    Returns:
        ``AdjustedWeights(fn_weight, fp_weight, factors, cost_per_sample)``: float32 tensors on
        ``fn_weight``'s device (``fp_weight`` None when not given), the applied factors (K,) and
        ``r_i`` (K,) (NaN for absent classes).

    Example::

        >>> confusion = [[50, 0], [6, 4]]             # half the positives are missed
        >>> new = adjust_class_weights(confusion, [[0, 1], [20, 0]], [1.0, 20.0])
        >>> [round(v, 3) for v in new.fn_weight.tolist()]   # the positive class gets more weight
        [0.037, 1.963]
    """
    cm = as_cost_matrix(costs)
    k = cm.num_classes
    counts = to_tensor(confusion, "confusion").to("cpu", torch.float64)
    if counts.shape != (k, k):
        raise ValueError(
            f"confusion has shape {tuple(counts.shape)}; expected ({k}, {k}) to match the costs"
        )
    check_finite_nonnegative(counts, "confusion", "finite, non-negative counts")
    fn_given = to_tensor(fn_weight, "fn_weight")
    fn = fn_given.to("cpu", torch.float64)
    if fn.shape != (k,):
        raise ValueError(f"fn_weight has shape {tuple(fn.shape)}; expected ({k},)")
    check_finite_nonnegative(fn, "fn_weight", "finite weights >= 0")
    fp = None if fp_weight is None else to_tensor(fp_weight, "fp_weight").to("cpu", torch.float64)
    if fp is not None and fp.shape not in ((k,), (k, k)):
        raise ValueError(f"fp_weight must be None, ({k},) or ({k}, {k}); got {tuple(fp.shape)}")
    for name, value in (("damping", damping), ("max_factor", max_factor)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number; got {value!r}")
    if not 0 < damping <= 1:
        raise ValueError(f"damping is {damping!r}; expected a number in (0, 1]")
    if not max_factor >= 1:
        raise ValueError(f"max_factor is {max_factor!r}; expected a number >= 1")
    if normalize not in (None, "mean"):
        raise ValueError(f"normalize is {normalize!r}; expected 'mean' or None")

    seen = _costmath.confusion_costs(counts, cm.matrix)
    n_i, per_sample = seen.support, seen.class_mean  # NaN for a class without samples
    n, total = float(seen.samples), float(seen.total)
    factors = torch.ones(k, dtype=torch.float64)
    if n > 0 and total > 0:
        ratio = ((per_sample / (total / n) + 1) / 2).clamp(1 / max_factor, max_factor)
        factors = torch.where(n_i > 0, ratio ** float(damping), 1.0)
    new_fn = fn * factors
    new_fp = fp
    if normalize == "mean":
        mean = float(new_fn.mean())
        if mean > 0:
            new_fn = new_fn / mean
            new_fp = None if fp is None else fp / mean
    _warn_weight_scale(new_fn, new_fp, max_span, max_scale)
    device = fn_given.device
    return AdjustedWeights(
        new_fn.to(device, torch.float32),
        None if new_fp is None else new_fp.to(device, torch.float32),
        factors.to(device, torch.float32),
        per_sample.to(device, torch.float32),
    )


def _warn_weight_scale(
    fn: torch.Tensor, fp: torch.Tensor | None, max_span: float, max_scale: float
) -> None:
    positive = fn[fn > 0]
    if positive.numel() and float(positive.max() / positive.min()) > max_span:
        warnings.warn(
            f"the FN weights span {float(positive.max() / positive.min()):.3g}x (from "
            f"{float(positive.min()):.3g} to {float(positive.max()):.3g}), more than {max_span:g}x:"
            " the light classes' gradients all but vanish; stop adjusting, or lower damping",
            UserWarning,
            stacklevel=3,
        )
    largest = float(fn.max()) + (0.0 if fp is None else float(fp.max()))
    if largest > max_scale:
        warnings.warn(
            f"the largest FN + FP weight is {largest:.3g}: the loss and its gradient are up to "
            f"that many times plain cross-entropy's; use normalize='mean' or lower the learning "
            "rate",
            UserWarning,
            stacklevel=3,
        )
