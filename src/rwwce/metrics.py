"""The Real World Cost metric, cost-optimal decisions, the scikit-learn scorer and cost curves.

With a cost matrix ``C`` (``C[i, j]``: the cost of predicting ``j`` when the truth is ``i``) and
the confusion counts ``count[i, j]`` of ``n`` samples::

    real_world_cost      = sum_ij C[i, j] * count[i, j] / n
    expected_costs(p)_j  = sum_i p_i C[i, j]                 (the expected cost of deciding j)
    bayes_decision(p)    = argmin_j expected_costs(p)_j

Every ``costs`` argument accepts a :class:`rwwce.CostMatrix` or anything array-like of shape
(K, K). Labels and probabilities may be tensors on any device, NumPy arrays or lists; results are
tensors on the device of the first tensor argument (the CPU for arrays and lists).

``RealWorldCost`` (a ``torchmetrics.Metric``) is loaded on first use, so ``import rwwce`` does not
import torchmetrics. ``unweight_probabilities`` lives in :mod:`rwwce.calibration` and is
re-exported here.

Example::

    >>> from rwwce import metrics
    >>> costs = [[0, 100], [2000, 0]]          # FN costs 2000, FP costs 100
    >>> float(metrics.real_world_cost([1, 1, 0, 0], [1, 0, 1, 0], costs))
    525.0
    >>> metrics.bayes_decision([0.02, 0.06], costs).tolist()   # threshold 100 / 2100 = 0.0476
    [0, 1]
"""

from __future__ import annotations

import math
import numbers
import os
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from rwwce import _costmath
from rwwce._optional import require
from rwwce._plotting import check_figure_path, new_figure, thinned
from rwwce._validate import check_choice, check_num_classes, to_tensor
from rwwce.calibration import unweight_probabilities
from rwwce.costs import as_cost_matrix

if TYPE_CHECKING:
    from rwwce._torchmetrics import RealWorldCost

__all__ = [
    "RealWorldCost",
    "bayes_decision",
    "confusion_matrix",
    "cost_curve",
    "expected_costs",
    "make_cost_scorer",
    "plot_cost_curve",
    "plot_prediction_costs",
    "real_world_benefit",
    "real_world_cost",
    "unweight_probabilities",
]

_LAZY = ("RealWorldCost",)


def __getattr__(name: str) -> Any:
    # RealWorldCost subclasses torchmetrics.Metric: import torchmetrics only when it is asked for.
    if name in _LAZY:
        from rwwce import _torchmetrics

        value = getattr(_torchmetrics, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# ---------------------------------------------------------------------- input checks
# ---------------------------------------------------------------------- confusion and cost
def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> torch.Tensor:
    """Confusion counts ``count[i, j] = #{y_true == i and y_pred == j}`` (rows: truth).

    Equals ``sklearn.metrics.confusion_matrix(y_true, y_pred, labels=range(num_classes))``.

    Args:
        y_true: class indices in ``[0, num_classes)``, any shape.
        y_pred: class indices, the same shape as ``y_true``.
        num_classes: K.

    Returns:
        int64 tensor of shape (K, K) on ``y_true``'s device.

    Example::

        >>> confusion_matrix([0, 1, 1], [0, 0, 1], num_classes=2).tolist()
        [[1, 0], [1, 1]]
    """
    k = check_num_classes(num_classes)
    t, p = _label_pair(y_true, y_pred, k)
    flat = (t * k + p).reshape(-1)
    return torch.bincount(flat, minlength=k * k).reshape(k, k)


def _label_pair(y_true: Any, y_pred: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = _costmath.class_indices(y_true, "y_true", k)
    p = _costmath.class_indices(y_pred, "y_pred", k, device=t.device)
    if t.shape != p.shape:
        raise ValueError(
            f"y_true has shape {tuple(t.shape)} and y_pred has shape {tuple(p.shape)}; expected "
            "the same shape (one prediction per label)"
        )
    return t, p


def _decided_costs(
    y_true: Any, y_pred: Any, costs: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(labels, predictions, float64 costs on the labels' device), checked against each other."""
    c = _costmath.as_costs(costs)
    t, p = _label_pair(y_true, y_pred, c.shape[-1])
    if t.numel() == 0:
        raise ValueError("y_true is empty; expected at least one sample")
    if c.ndim == 3 and t.ndim == 0:
        raise ValueError("y_true is a scalar; per-sample costs need labels of shape (N, ...)")
    return t, p, c.to(t.device)


def real_world_cost(
    y_true: Any, y_pred: Any, costs: Any, *, reduction: Literal["mean", "sum"] = "mean"
) -> torch.Tensor:
    """The Real World Cost of a set of decisions.

    ``RWC = sum_ij C[i, j] * count[i, j] / n`` for ``reduction="mean"`` (the average cost per
    sample, in the units of ``C``), without the ``/ n`` for ``"sum"``. Binary with a zero
    diagonal: ``(FN * c_fn + FP * c_fp) / n``. With per-sample costs (a fraud's cost is its
    amount): ``RWC = sum_n C[n, t_n, p_n] / n``.

    Args:
        y_true: true class indices, shape (N, ...), values in ``[0, K)``.
        y_pred: predicted class indices, the same shape.
        costs: a :class:`rwwce.CostMatrix` or a (K, K) array-like; or (N, K, K) per-sample
            matrices (sample ``n``'s matrix applies to every element of ``y_true[n]``).
        reduction: ``"mean"`` (default, divide by the number of elements) or ``"sum"``.

    Returns:
        A 0-dim float64 tensor on ``y_true``'s device.

    Example::

        >>> cost = real_world_cost([1, 1, 0], [0, 1, 1], [[0, 1], [10, 0]])   # one FN, one FP
        >>> round(float(cost), 4)
        3.6667
        >>> amounts = torch.tensor([250.0, 40.0, 0.0])     # a missed fraud costs its amount
        >>> per_sample = torch.zeros(3, 2, 2)
        >>> per_sample[:, 1, 0], per_sample[:, 0, 1] = amounts, 5.0   # a false alarm costs 5
        >>> float(real_world_cost([1, 1, 0], [0, 1, 1], per_sample, reduction="sum"))
        255.0
    """
    check_choice("reduction", reduction, ("mean", "sum"))
    t, p, c = _decided_costs(y_true, y_pred, costs)
    if c.ndim == 2:
        total = _costmath.confusion_costs(confusion_matrix(t, p, c.shape[0]), c).total
    else:
        total = _costmath.element_costs(t, p, c).sum()
    return total / t.numel() if reduction == "mean" else total


def real_world_benefit(
    y_true: Any,
    y_pred: Any,
    costs: Any,
    *,
    reduction: Literal["mean", "sum"] = "mean",
    baseline: int = 0,
) -> torch.Tensor:
    """The cost the model saves compared with doing nothing: predicting ``baseline`` for every sample.

    ``benefit = (sum_i n_i C[i, b] - sum_ij C[i, j] count[i, j]) / n`` with ``n_i`` the number of
    samples of true class ``i`` and ``b = baseline`` (default 0, the negative class): the cost of
    the all-negative baseline minus the model's Real World Cost. Binary with a zero diagonal it is
    ``(P * c_fn - (FN * c_fn + FP * c_fp)) / n``, i.e. ``(TP * c_fn - FP * c_fp) / n``: every caught
    positive saves ``c_fn``, every false alarm spends ``c_fp``. Positive means the model is worth
    deploying; the maximum, ``P * c_fn / n``, is reached by a perfect model. ``"sum"`` drops the
    ``/ n``. Written for the binary case; any K works, and so do (N, K, K) per-sample costs.

    Args:
        y_true, y_pred, costs, reduction: as in :func:`real_world_cost`.
        baseline: the class the reference policy predicts for every sample. Default 0.

    Example::

        >>> float(real_world_benefit([1, 1, 0, 0], [1, 0, 1, 0], [[0, 100], [2000, 0]]))
        475.0
    """
    check_choice("reduction", reduction, ("mean", "sum"))
    t, p, c = _decided_costs(y_true, y_pred, costs)
    k = c.shape[-1]
    if (
        isinstance(baseline, bool)
        or not isinstance(baseline, numbers.Integral)
        or not 0 <= baseline < k
    ):
        raise ValueError(f"baseline is {baseline!r}; expected a class index in [0, {k})")
    if c.ndim == 2:
        model = _costmath.confusion_costs(confusion_matrix(t, p, k), c)
        total = (model.support * c[:, baseline]).sum() - model.total
    else:
        total = (
            _costmath.element_costs(t, torch.full_like(t, baseline), c)
            - _costmath.element_costs(t, p, c)
        ).sum()
    return total / t.numel() if reduction == "mean" else total


# ---------------------------------------------------------------------- decisions
def expected_costs(probs: Any, costs: Any) -> torch.Tensor:
    """The expected cost of each decision: ``E[n, j] = sum_i p[n, i] C[i, j]``, i.e. ``probs @ C``.

    Args:
        probs: (N, K) class probabilities (non-negative rows summing to 1), or for 2 x 2 costs
            (N,) probabilities of the positive class.
        costs: a :class:`rwwce.CostMatrix` or a (K, K) array-like, or (N, K, K) per-sample
            matrices (``E[n, j] = sum_i p[n, i] C[n, i, j]``).

    Returns:
        (N, K) tensor in ``probs``' dtype promoted to float32 at least, on ``probs``' device.

    Example::

        >>> expected_costs([[0.9, 0.1]], [[0, 100], [2000, 0]]).tolist()
        [[200.0, 90.0]]
    """
    c = _costmath.as_costs(costs)
    p = _costmath.probabilities(probs, "probs", c.shape[-1])
    _costmath.check_rows(c, p.shape[0], "probs")
    return _costmath.expected(p, c.to(p.device, p.dtype))


def bayes_decision(probs: Any, costs: Any) -> torch.Tensor:
    """The cost-optimal class for each sample: ``argmin_j sum_i p_i C[i, j]``.

    With a 2 x 2 cost matrix with a zero diagonal and (N,) probabilities of the positive class,
    this is the threshold rule ``predict 1 when p > c_fp / (c_fp + c_fn)``. Ties go to the lower
    class index. Per-sample costs (N, K, K) give each sample its own rule (binary: its own
    threshold).

    Args:
        probs: (N, K) class probabilities, or (N,) probabilities of the positive class for 2 x 2
            costs. Feed calibrated probabilities (:mod:`rwwce.calibration`): a model trained with
            RWWCE already leans towards the costly classes, see
            :func:`rwwce.calibration.unweight_probabilities`.
        costs: a :class:`rwwce.CostMatrix`, a (K, K) array-like or (N, K, K) per-sample costs.

    Returns:
        int64 tensor of shape (N,) on ``probs``' device.

    Example::

        >>> bayes_decision([[0.5, 0.3, 0.2]], [[0, 1, 1], [1, 0, 1], [20, 20, 0]]).tolist()
        [2]
    """
    c = _costmath.as_costs(costs)
    raw = to_tensor(probs, "probs")
    if raw.ndim == 1 and c.shape == (2, 2) and float(c[0, 0]) == 0 and float(c[1, 1]) == 0:
        p = _costmath.probabilities(raw, "probs", 2)[:, 1]
        c_fn, c_fp = float(c[1, 0]), float(c[0, 1])
        if c_fn + c_fp == 0:
            return torch.zeros(p.shape, dtype=torch.int64, device=p.device)
        return (p > c_fp / (c_fp + c_fn)).to(torch.int64)
    return expected_costs(raw, c).argmin(dim=1)


# ---------------------------------------------------------------------- scikit-learn scorer
def make_cost_scorer(costs: Any, *, labels: Any = None) -> Any:
    """A scikit-learn scorer: minus the Real World Cost of ``estimator.predict(X)``.

    For ``cross_val_score``, ``GridSearchCV(scoring=...)`` and ``TunedThresholdClassifierCV``
    (higher is better, so the cost is negated; ``sample_weight`` is honoured).

    Args:
        costs: a :class:`rwwce.CostMatrix` or a (K, K) array-like.
        labels: the class label of each row of ``costs`` (e.g. ``estimator.classes_``). Default:
            integer labels are row indices; other labels are matched against the
            ``CostMatrix``'s class names.

    Returns:
        A scorer made by ``sklearn.metrics.make_scorer`` (needs scikit-learn, the
        ``experiments`` extra).

    Example::

        >>> from sklearn.datasets import load_breast_cancer
        >>> from sklearn.linear_model import LogisticRegression
        >>> from sklearn.model_selection import cross_val_score
        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.preprocessing import StandardScaler
        >>> X, y = load_breast_cancer(return_X_y=True)
        >>> y = 1 - y                            # 1 = malignant: missing one costs 10
        >>> scorer = make_cost_scorer([[0, 1], [10, 0]])
        >>> model = make_pipeline(StandardScaler(), LogisticRegression())
        >>> round(float(cross_val_score(model, X, y, cv=5, scoring=scorer).mean()), 4)
        -0.1456
    """
    cm = as_cost_matrix(costs)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1).tolist()
        if len(labels) != cm.num_classes:
            raise ValueError(
                f"labels has {len(labels)} entries; expected {cm.num_classes}, one per row of costs"
            )
    require("sklearn", "make_cost_scorer", "scikit-learn")
    from sklearn.metrics import make_scorer

    return make_scorer(_costmath.label_cost, greater_is_better=False, costs=cm, labels=labels)


# ---------------------------------------------------------------------- cost curves
def _binary_scores(y_true: Any, scores: Any) -> tuple[torch.Tensor, torch.Tensor]:
    t = _costmath.class_indices(y_true, "y_true", 2).reshape(-1)
    s = to_tensor(scores, "scores")
    if s.is_complex():
        raise TypeError("scores is complex; expected real scores")
    if s.ndim != 1 or s.shape[0] != t.shape[0]:
        hint = " (for (N, 2) probabilities pass probs[:, 1])" if s.ndim == 2 else ""
        raise ValueError(
            f"scores has shape {tuple(s.shape)}; expected ({t.shape[0]},), one score of the "
            f"positive class per label{hint}"
        )
    s = s.to(t.device, torch.float64)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores contains NaN or infinite values; expected finite scores")
    positives = int(t.sum())
    if positives in (0, t.shape[0]):
        raise ValueError(
            f"y_true holds {'no' if positives == 0 else 'only'} positive labels; a cost curve "
            "needs both classes"
        )
    return t, s


def _operating_points(
    t: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every classifier ``predict 1 iff score >= threshold``: (thresholds, TP, FP), descending
    thresholds from ``+inf`` (all negative) to the lowest score (all positive)."""
    order = torch.argsort(s, descending=True, stable=True)
    ss, ts = s[order], t[order].to(torch.float64)
    tp, fp = torch.cumsum(ts, 0), torch.cumsum(1.0 - ts, 0)
    last = torch.ones_like(ss, dtype=torch.bool)
    last[:-1] = ss[1:] != ss[:-1]  # the last of each run of equal scores
    zero = torch.zeros(1, dtype=torch.float64, device=s.device)
    inf = torch.full((1,), math.inf, dtype=torch.float64, device=s.device)
    return torch.cat([inf, ss[last]]), torch.cat([zero, tp[last]]), torch.cat([zero, fp[last]])


def cost_curve(y_true: Any, scores: Any, *, points: int = 101) -> tuple[torch.Tensor, torch.Tensor]:
    """The Drummond-Holte cost curve of a binary scorer: its best normalised expected cost.

    For each probability cost ``pc`` on ``linspace(0, 1, points)`` the lower envelope, over all
    thresholds (``predict positive iff score >= threshold``) and the two trivial classifiers,
    of ``FNR * pc + FPR * (1 - pc)``. With prevalence ``pi`` and costs ``c_fn``, ``c_fp``, a
    deployment sits at ``pc = pi c_fn / (pi c_fn + (1 - pi) c_fp)``, and the curve's value there
    times ``pi c_fn + (1 - pi) c_fp`` is the lowest Real World Cost any threshold achieves on
    this data. Below the diagonals ``pc`` and ``1 - pc`` (the trivial classifiers) the model
    pays for itself. Drummond & Holte, "Cost curves", Machine Learning 65, 2006.

    Args:
        y_true: (N,) binary labels (0/1 or bool) with both classes present.
        scores: (N,) scores of the positive class (probabilities, logits or any monotone score).
        points: number of probability costs, at least 2. Default 101.

    Returns:
        ``(probability_cost, normalized_expected_cost)``: two float64 tensors of shape
        ``(points,)`` on ``scores``' device.

    Example::

        >>> pc, nec = cost_curve([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], points=5)
        >>> nec.tolist()
        [0.0, 0.125, 0.25, 0.125, 0.0]
    """
    if isinstance(points, bool) or not isinstance(points, numbers.Integral) or points < 2:
        raise ValueError(f"points is {points!r}; expected an int >= 2")
    t, s = _binary_scores(y_true, scores)
    _, tp, fp = _operating_points(t, s)
    positives = tp[-1]
    fnr, fpr = 1.0 - tp / positives, fp / fp[-1]
    pc = torch.linspace(0, 1, int(points), dtype=torch.float64, device=s.device)
    nec = torch.full_like(pc, math.inf)
    step = max(1, (1 << 22) // int(points))  # bound the (points, thresholds) block in memory
    for i in range(0, fnr.shape[0], step):
        block = fnr[None, i : i + step] * pc[:, None] + fpr[None, i : i + step] * (1 - pc[:, None])
        nec = torch.minimum(nec, block.min(dim=1).values)
    return pc, nec


# ---------------------------------------------------------------------- plots
def plot_cost_curve(
    y_true: Any,
    scores: Any,
    costs: Any = None,
    *,
    points: int = 101,
    axes: Any = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Draw the cost curve (:func:`cost_curve`) beside the cost-versus-threshold curve.

    Left: the normalised expected cost against the probability cost, with the two trivial
    classifiers (dashed); with ``costs``, a marker at the deployment's probability cost.
    Right: the Real World Cost per sample of ``predict 1 iff score >= threshold`` on this data
    against the threshold, with its minimum and, for probability scores, the Bayes threshold
    ``c_fp / (c_fp + c_fn)``. Needs matplotlib (``pip install 'rwwce[experiments]'``).

    Args:
        y_true: (N,) binary labels.
        scores: (N,) scores of the positive class.
        costs: a 2 x 2 :class:`rwwce.CostMatrix` or array-like; default the 0-1 cost (errors).
        points: resolution of the cost curve.
        axes: two matplotlib ``Axes`` to draw into; default a new figure.
        path: if given, the figure is saved there atomically (format from the suffix).

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    require("matplotlib", "plot_cost_curve")
    from rwwce._io import save_figure

    if path is not None:
        check_figure_path(path)
    cm = as_cost_matrix([[0, 1], [1, 0]] if costs is None else costs)
    if cm.num_classes != 2:
        raise ValueError(f"costs has {cm.num_classes} classes; a cost curve needs 2 x 2 costs")
    c = cm.matrix.numpy()
    pc, nec = cost_curve(y_true, scores, points=points)
    t, s = _binary_scores(y_true, scores)
    thresholds, tp, fp = _operating_points(t, s)
    n, positives = t.shape[0], float(tp[-1])
    tp, fp = tp.cpu().numpy(), fp.cpu().numpy()
    fn, tn = positives - tp, (n - positives) - fp
    cost = (fn * c[1, 0] + fp * c[0, 1] + tp * c[1, 1] + tn * c[0, 0]) / n
    thr = thresholds.cpu().numpy()
    if axes is None:
        fig, axes = new_figure(1, 2, (9.0, 3.8))
    left, right = axes
    fig = left.figure
    pc_np, nec_np = pc.cpu().numpy(), nec.cpu().numpy()
    left.plot(pc_np, nec_np, color="tab:blue", label="model (lower envelope)")
    left.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="always negative / positive")
    left.plot([0, 1], [1, 0], "--", color="gray", linewidth=1)
    c_fn, c_fp = c[1, 0] - c[1, 1], c[0, 1] - c[0, 0]  # regrets: what a wrong call adds
    prior = positives / n
    if costs is not None and prior * c_fn + (1 - prior) * c_fp > 0:
        op = prior * c_fn / (prior * c_fn + (1 - prior) * c_fp)
        left.axvline(op, color="tab:red", linewidth=1, label=f"these costs: pc = {op:.3g}")
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    left.set_xlabel("probability cost pc")
    left.set_ylabel("normalised expected cost")
    left.set_title("cost curve")
    left.legend(loc="upper right", fontsize=8)
    finite = np.isfinite(thr)
    x, y = thinned(thr[finite], cost[finite])
    right.step(x, y, where="post", color="tab:blue", label="predict 1 iff score >= threshold")
    best = int(np.argmin(cost))
    best_thr = thr[best] if np.isfinite(thr[best]) else thr[finite].max()
    right.plot([best_thr], [cost[best]], "o", color="tab:green", label=f"lowest: {cost[best]:.4g}")
    s_np = s.cpu().numpy()
    if (s_np >= 0).all() and (s_np <= 1).all() and c_fn + c_fp > 0:
        bayes = c_fp / (c_fp + c_fn)
        right.axvline(bayes, color="tab:red", linewidth=1, label=f"Bayes threshold {bayes:.3g}")
    right.set_xlabel("threshold on the score")
    right.set_ylabel("Real World Cost per sample" if costs is not None else "error rate")
    right.set_title("cost versus threshold")
    right.legend(loc="best", fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_prediction_costs(
    y_true: Any,
    costs: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    probs: Any = None,
    y_pred: Any = None,
) -> Any:
    """The picture for a predictions file (``rwwce cost ... --plot FILE.png``).

    Binary with probabilities: :func:`plot_cost_curve` of ``P(positive)``. Otherwise bars: for
    each true class, the cost its samples contribute to the Real World Cost per sample (bars of
    one colour sum to it), for ``y_pred`` and, from ``probs``, the arg-max and the Bayes
    decisions. Needs matplotlib.

    Args:
        y_true: (N,) class indices.
        costs: a :class:`rwwce.CostMatrix` or (K, K) array-like (class names label the bars).
        path: if given, the figure is saved there atomically.
        probs: (N, K) class probabilities, or ``None``.
        y_pred: (N,) predicted class indices, or ``None``. At least one of the two.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    require("matplotlib", "plot_prediction_costs")
    from rwwce._io import save_figure

    if path is not None:
        check_figure_path(path)
    if probs is None and y_pred is None:
        raise ValueError("probs and y_pred are both None; expected at least one of them")
    cm = as_cost_matrix(costs)
    k = cm.num_classes
    if probs is not None:
        p = _costmath.probabilities(probs, "probs", k)
        if k == 2:
            return plot_cost_curve(y_true, p[:, 1], cm, path=path)
    t = _costmath.class_indices(y_true, "y_true", k).reshape(-1)
    rules: dict[str, Any] = {}
    if y_pred is not None:
        rules["y_pred"] = y_pred
    if probs is not None:
        rules["arg-max"] = p.argmax(dim=1)
        rules["Bayes decision"] = bayes_decision(p, cm)
    fig, ax = new_figure(1, 1, (max(5.0, 0.9 * k + 2.5), 3.8))
    width = 0.8 / len(rules)
    x = np.arange(k)
    for r, (name, pred) in enumerate(rules.items()):
        share = _costmath.confusion_costs(confusion_matrix(t, pred, k), cm.matrix).class_cost
        share = share.cpu() / t.numel()
        total = float(share.sum())
        ax.bar(
            x + (r - (len(rules) - 1) / 2) * width,
            share.numpy(),
            width,
            label=f"{name}: {total:.4g}",
        )
    ax.set_xticks(x, list(cm.classes), rotation=30 if k > 6 else 0)
    ax.set_xlabel("true class")
    ax.set_ylabel("cost per sample (its share)")
    ax.set_title("Real World Cost by true class")
    ax.legend(fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig
