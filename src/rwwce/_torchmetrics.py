"""``RealWorldCost`` as a ``torchmetrics.Metric``.

Private: this module imports torchmetrics, so it is only loaded through
``rwwce.metrics.RealWorldCost`` (a lazy module attribute), never by ``import rwwce``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torchmetrics import Metric

from rwwce import _costmath
from rwwce._validate import check_choice, check_finite_nonnegative, check_num_classes, to_tensor
from rwwce.costs import as_cost_matrix

__all__ = ["RealWorldCost"]


class RealWorldCost(Metric):
    """The Real World Cost, accumulated over batches and synchronised across processes.

    ``RWC = sum_ij C[i, j] * count[i, j] / n`` (``reduction="mean"``) or without ``/ n``
    (``"sum"``), where ``count`` is the confusion matrix of everything passed to ``update``
    since the last ``reset``. With per-sample costs (``RealWorldCost(num_classes=K)`` and
    ``update(preds, target, costs)``, costs of shape (N, K, K)): ``RWC = sum_n C[n, t_n, p_n] / n``.
    Under ``torch.distributed`` the states are summed over processes (``dist_reduce_fx="sum"``)
    before ``compute``, so every rank gets the global cost.

    ``update`` never synchronises with an accelerator: it accumulates on the device (no
    ``.item()``, no data-dependent branch, no ``bincount`` (which reads the maximum on CUDA)).
    Its data checks (label ranges, probabilities, per-sample cost values) run for CPU tensors
    only, unless ``validate_args=True`` asks for them everywhere. Labels outside ``[0, K)`` that
    no check caught are left out of the counts and make ``compute()`` return NaN.

    Args:
        costs: a :class:`rwwce.CostMatrix` or a (K, K) array-like; ``None`` for per-sample
            costs given to each ``update`` (then ``num_classes`` is required).
        num_classes: K, for per-sample costs (ignored when ``costs`` is given, which sets K).
        reduction: ``"mean"`` (cost per sample, default) or ``"sum"`` (total cost).
        decision: how scores become decisions: ``"argmax"`` (default; logits or probabilities)
            or ``"bayes"`` (the cost-optimal class ``argmin_j sum_i p_i C[i, j]``, see
            :func:`rwwce.metrics.bayes_decision`; needs probabilities). Ignored for class-index
            predictions.
        validate_args: ``None`` (default): check data of CPU tensors only; ``True``: check
            everywhere (reads from the device: a synchronisation per batch); ``False``: never.
        **kwargs: passed to ``torchmetrics.Metric`` (``sync_on_compute``, ``process_group``, ...).

    ``update(preds, target, costs=None)``: ``target`` holds class indices, shape (N,) or
    (N, d1, ...); ``preds`` holds class indices of the same shape, or scores of shape (N, K) /
    (N, K, d1, ...) (logits or probabilities, class dimension 1); ``costs`` (per-sample mode
    only): (N, K, K), sample ``n``'s matrix applies to every element of ``target[n]``.

    ``compute()`` returns a 0-dim float64 tensor (float32 on MPS, where per-sample costs are not
    available); NaN before any update with ``reduction="mean"``.

    Example::

        >>> import torch
        >>> from rwwce.metrics import RealWorldCost
        >>> metric = RealWorldCost([[0, 100], [2000, 0]])
        >>> metric.update(torch.tensor([[2.0, -1.0], [0.1, 0.3]]), torch.tensor([1, 1]))
        >>> float(metric.compute())   # one missed positive (2000) and one hit, over 2 samples
        1000.0
        >>> fraud = RealWorldCost(num_classes=2, reduction="sum")   # a miss costs the amount
        >>> costs = torch.zeros(2, 2, 2)
        >>> costs[:, 1, 0] = torch.tensor([250.0, 40.0])
        >>> fraud.update(torch.tensor([0, 1]), torch.tensor([1, 1]), costs)
        >>> float(fraud.compute())
        250.0
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    confmat: torch.Tensor
    invalid: torch.Tensor
    cost_sum: torch.Tensor
    count: torch.Tensor

    def __init__(
        self,
        costs: Any = None,
        *,
        num_classes: int | None = None,
        reduction: Literal["mean", "sum"] = "mean",
        decision: Literal["argmax", "bayes"] = "argmax",
        validate_args: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("reduction", reduction, ("mean", "sum"))
        _costmath.check_decision(decision)
        if validate_args not in (None, True, False):
            raise ValueError(f"validate_args is {validate_args!r}; expected None, True or False")
        if costs is None:
            if num_classes is None:
                raise ValueError(
                    "costs is None and num_classes is None; expected a (K, K) cost matrix, or "
                    "num_classes=K with per-sample costs passed to update(preds, target, costs)"
                )
            self.cost_matrix = None
            k = check_num_classes(num_classes)
            if k < 2:
                raise ValueError(f"num_classes is {k}; expected at least 2 classes")
        else:
            shape = getattr(costs, "shape", None)
            if shape is not None and len(shape) == 3:
                raise ValueError(
                    f"costs has shape {tuple(shape)}; per-sample costs go to each update: "
                    "RealWorldCost(num_classes=K) and metric.update(preds, target, costs)"
                )
            self.cost_matrix = as_cost_matrix(costs)
            k = self.cost_matrix.num_classes
            # float32 suffices for decisions and moves with .to() onto any device (MPS included)
            self.register_buffer(
                "decision_costs", self.cost_matrix.matrix.to(torch.float32), persistent=False
            )
        self.num_classes = k
        self.reduction = reduction
        self.decision = decision
        self.validate_args = validate_args
        self.add_state("confmat", torch.zeros(k, k, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("invalid", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        if self.cost_matrix is None:
            self.add_state("cost_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    # -------------------------------------------------------------------- helpers (no syncs)
    def _check(self, *tensors: torch.Tensor) -> bool:
        if self.validate_args is not None:
            return self.validate_args
        return all(t.device.type == "cpu" for t in tensors)

    def _decide(self, scores: torch.Tensor, costs: torch.Tensor | None) -> torch.Tensor:
        """Class indices of the target's shape from (N, K, ...) scores."""
        if self.decision == "bayes" and self._check(scores):
            k = self.num_classes
            _costmath.probabilities(scores.movedim(1, -1).reshape(-1, k), "preds", k)
        if costs is None and self.cost_matrix is not None:
            costs = self.decision_costs
        return _costmath.decide(scores, self.decision, costs)

    def _sample_costs(self, costs: Any, target: torch.Tensor) -> torch.Tensor:
        k = self.num_classes
        c = to_tensor(costs, "costs")
        n = target.shape[0] if target.ndim else 1
        if c.ndim != 3 or c.shape != (n, k, k):
            raise ValueError(
                f"costs has shape {tuple(c.shape)}; expected ({n}, {k}, {k}): one {k} x {k} "
                "matrix per sample of the target"
            )
        if c.is_complex() or c.dtype == torch.bool:
            raise TypeError(f"costs has dtype {c.dtype}; expected real numbers")
        c = c.to(self.device, _costmath.float_dtype(target), non_blocking=c.device.type == "cpu")
        if self._check(c):
            check_finite_nonnegative(c, "costs")
        return c

    # -------------------------------------------------------------------- Metric interface
    def update(self, preds: Any, target: Any, costs: Any = None) -> None:
        """Add a batch: ``preds`` class indices or (N, K, ...) scores, ``target`` class indices.

        ``costs``: (N, K, K) per-sample costs, required with ``RealWorldCost(num_classes=K)``
        and refused otherwise.
        """
        k = self.num_classes
        to_device = self.device.type != "cpu"
        p = to_tensor(preds, "preds").to(self.device, non_blocking=to_device)
        t = to_tensor(target, "target").to(self.device, non_blocking=to_device)
        if t.is_floating_point() or t.is_complex():
            raise TypeError(f"target has dtype {t.dtype}; expected integer class indices")
        if self.cost_matrix is None:
            if costs is None:
                raise ValueError(
                    "costs is None; this RealWorldCost was built for per-sample costs "
                    f"(num_classes={k}): pass update(preds, target, costs) with costs of shape "
                    f"(N, {k}, {k})"
                )
            if t.ndim == 0:
                raise ValueError("target is a scalar; per-sample costs need shape (N, ...)")
            c = self._sample_costs(costs, t)
        elif costs is not None:
            raise ValueError(
                "costs was given to update, but this RealWorldCost has a fixed cost matrix; for "
                "per-sample costs build RealWorldCost(num_classes=K)"
            )
        else:
            c = None
        if p.ndim == t.ndim + 1:
            if p.shape[1] != k or p.shape[:1] + p.shape[2:] != t.shape:
                raise ValueError(
                    f"preds has shape {tuple(p.shape)} and target {tuple(t.shape)}; expected "
                    f"scores of shape (N, {k}, ...) with target (N, ...)"
                )
            p = self._decide(p, c)
        elif p.shape != t.shape:
            raise ValueError(
                f"preds has shape {tuple(p.shape)} and target {tuple(t.shape)}; expected class "
                f"indices of the target's shape or scores of shape (N, {k}, ...)"
            )
        elif p.is_floating_point():
            raise TypeError(
                f"preds has dtype {p.dtype} and the target's shape {tuple(t.shape)}; expected "
                f"integer class indices, or scores with a class dimension of size {k}"
            )
        if self._check(t, p):  # CPU (or asked for): the labels are known to be in range
            t, p = _costmath.class_indices(t, "target", k), _costmath.class_indices(p, "preds", k)
            self.confmat += torch.bincount((t * k + p).reshape(-1), minlength=k * k).view(k, k)
            valid = None
        else:
            # Masks, not branches: labels no check caught are counted apart, never indexed with.
            t, p = t.to(torch.int64), p.to(torch.int64)
            valid = (t >= 0) & (t < k) & (p >= 0) & (p < k)
            self.confmat += _costmath.masked_confusion(t, p, k, valid)
            t, p = t.where(valid, 0), p.where(valid, 0)
            self.invalid += (~valid).sum()
        if c is not None:
            per = _costmath.element_costs(t, p, c)
            self.cost_sum += (per if valid is None else per * valid).sum()

    def compute(self) -> torch.Tensor:
        """The mean (or total) Real World Cost of everything seen since the last reset."""
        if self.cost_matrix is None:
            total = self.cost_sum.to(_costmath.float_dtype(self.confmat))
            samples = self.confmat.sum().to(total.dtype)
        else:
            seen = _costmath.confusion_costs(self.confmat, self.cost_matrix.matrix)
            total, samples = seen.total, seen.samples
        value = total / samples if self.reduction == "mean" else total
        return value.where(self.invalid == 0, torch.nan)
