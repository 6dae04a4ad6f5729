"""``RealWorldCost`` as a ``torchmetrics.Metric``.

Private: this module imports torchmetrics, so it is only loaded through
``rwwce.metrics.RealWorldCost`` (a lazy module attribute), never by ``import rwwce``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torchmetrics import Metric

from rwwce.costs import _as_tensor, as_cost_matrix
from rwwce.metrics import bayes_decision

__all__ = ["RealWorldCost"]


class RealWorldCost(Metric):
    """The Real World Cost, accumulated over batches and synchronised across processes.

    ``RWC = sum_ij C[i, j] * count[i, j] / n`` (``reduction="mean"``) or without ``/ n``
    (``"sum"``), where ``count`` is the confusion matrix of everything passed to ``update``
    since the last ``reset``. Under ``torch.distributed`` the confusion counts are summed over
    processes (``dist_reduce_fx="sum"``) before ``compute``, so every rank gets the global cost.

    Args:
        costs: a :class:`rwwce.CostMatrix` or a (K, K) array-like.
        reduction: ``"mean"`` (cost per sample, default) or ``"sum"`` (total cost).
        decision: how scores become decisions: ``"argmax"`` (default; logits or probabilities)
            or ``"bayes"`` (the cost-optimal class, :func:`rwwce.metrics.bayes_decision`; needs
            probabilities). Ignored for class-index predictions.
        validate_args: check label ranges in ``update`` (reads from the device; turn off in a
            hot loop once the pipeline is trusted).
        **kwargs: passed to ``torchmetrics.Metric`` (``sync_on_compute``, ``process_group``, ...).

    ``update(preds, target)``: ``target`` holds class indices, shape (N,) or (N, d1, ...);
    ``preds`` holds class indices of the same shape, or scores of shape (N, K) / (N, K, d1, ...)
    (logits or probabilities, class dimension 1).

    ``compute()`` returns a 0-dim float64 tensor (float32 on MPS); NaN before any update
    with ``reduction="mean"``.

    Example::

        >>> import torch
        >>> from rwwce.metrics import RealWorldCost
        >>> metric = RealWorldCost([[0, 100], [2000, 0]])
        >>> metric.update(torch.tensor([[2.0, -1.0], [0.1, 0.3]]), torch.tensor([1, 1]))
        >>> float(metric.compute())   # one missed positive (2000) and one hit, over 2 samples
        1000.0
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    confmat: torch.Tensor

    def __init__(
        self,
        costs: Any,
        *,
        reduction: Literal["mean", "sum"] = "mean",
        decision: Literal["argmax", "bayes"] = "argmax",
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction is {reduction!r}; expected 'mean' or 'sum'")
        if decision not in ("argmax", "bayes"):
            raise ValueError(f"decision is {decision!r}; expected 'argmax' or 'bayes'")
        self.cost_matrix = as_cost_matrix(costs)
        self.num_classes = self.cost_matrix.num_classes
        self.reduction = reduction
        self.decision = decision
        self.validate_args = validate_args
        k = self.num_classes
        self.add_state("confmat", torch.zeros(k, k, dtype=torch.int64), dist_reduce_fx="sum")

    def _decide(self, scores: torch.Tensor) -> torch.Tensor:
        if self.decision == "argmax":
            return scores.argmax(dim=1)
        k = self.num_classes
        flat = scores.movedim(1, -1).reshape(-1, k)
        pred = bayes_decision(flat, self.cost_matrix)
        return pred.reshape(scores.movedim(1, -1).shape[:-1])

    def update(self, preds: Any, target: Any) -> None:
        """Add a batch: ``preds`` class indices or (N, K, ...) scores, ``target`` class indices."""
        k = self.num_classes
        p = _as_tensor(preds, "preds").to(self.device)
        t = _as_tensor(target, "target").to(self.device)
        if t.is_floating_point() or t.is_complex():
            raise TypeError(f"target has dtype {t.dtype}; expected integer class indices")
        if p.ndim == t.ndim + 1:
            if p.shape[1] != k or p.shape[:1] + p.shape[2:] != t.shape:
                raise ValueError(
                    f"preds has shape {tuple(p.shape)} and target {tuple(t.shape)}; expected "
                    f"scores of shape (N, {k}, ...) with target (N, ...)"
                )
            p = self._decide(p)
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
        p = p.to(torch.int64).reshape(-1)
        t = t.to(torch.int64).reshape(-1)
        if self.validate_args and t.numel():
            for name, v in (("target", t), ("preds", p)):
                lo, hi = int(v.min()), int(v.max())
                if lo < 0 or hi >= k:
                    raise ValueError(
                        f"{name} contains the label {lo if lo < 0 else hi}; expected class "
                        f"indices in [0, {k})"
                    )
        self.confmat += torch.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def compute(self) -> torch.Tensor:
        """The mean (or total) Real World Cost of everything seen since the last reset."""
        dtype = torch.float32 if self.confmat.device.type == "mps" else torch.float64
        c = self.cost_matrix.matrix.to(self.confmat.device, dtype)
        counts = self.confmat.to(dtype)
        total = (counts * c).sum()
        return total / counts.sum() if self.reduction == "mean" else total
