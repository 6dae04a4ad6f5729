"""The loss in the user's own loop: where it comes from, and what validation says.

* :func:`loss_breakdown` splits an RWWCE loss exactly into its false-negative term per true class
  and its false-positive term per (true class, other class), with each true class's share of the
  gradient, and prints them as a table.
* :class:`CostMonitor` follows the Real World Cost of the validation set epoch by epoch (any loop,
  any number of processes): best epoch, early stopping, per-class recall, an overfitting flag and
  learning-curve plots.

Example::

    >>> import torch, rwwce
    >>> costs = [[0, 1, 5], [1, 0, 1], [20, 1, 0]]
    >>> monitor = rwwce.CostMonitor(costs, patience=2, classes=["ok", "warn", "fail"])
    >>> monitor.update(torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]), torch.tensor([0, 2]))
    >>> record = monitor.end_epoch(val_loss=0.4)
    >>> record["real_world_cost"], record["recall"]["fail"], monitor.best_epoch
    (0.0, 1.0, 1)
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from rwwce import _costmath
from rwwce import _validate as V
from rwwce._optional import require
from rwwce._plotting import check_figure_path, new_figure
from rwwce._problem import classes_last, prepare
from rwwce._validate import check_call, check_class_names, to_tensor
from rwwce.costs import as_cost_matrix
from rwwce.functional import real_world_weight_cross_entropy
from rwwce.kernels.reference import log_one_minus_softmax

__all__ = ["CostMonitor", "LossBreakdown", "loss_breakdown"]


# ---------------------------------------------------------------------- loss breakdown
@dataclass(frozen=True)
class LossBreakdown:
    """Where an RWWCE loss comes from (see :func:`loss_breakdown`).

    Attributes:
        fn: (K,) FN-term total per class k: ``sum_r s_r y_rk fn_k (-log p_rk)``.
        fp: (K, K) FP-term total per (true class t, other class j), zero diagonal:
            ``FP[t, j] * sum_r s_r y_rt (-log(1 - p_rj))``.
        total: the loss with ``reduction="sum"``, as the loss function returns it (0-dim).
        support: (K,) (sample-weighted) number of elements of each true class.
        grad_sq_norm: (K,) squared Frobenius norm of d total / d input contributed by the rows of
            each true class (a soft-target row is split by its target probabilities).
        classes: the K class names.

    ``fn.sum() + fp.sum()`` equals ``total`` up to float64 rounding. Breakdowns of several batches
    add up with ``+`` (e.g. over a validation epoch).
    """

    fn: Tensor
    fp: Tensor
    total: Tensor
    support: Tensor
    grad_sq_norm: Tensor
    classes: tuple[str, ...]

    @property
    def per_class(self) -> Tensor:
        """(K,) the loss of each true class's elements: ``fn + fp.sum(dim=1)``."""
        return self.fn + self.fp.sum(dim=1)

    @property
    def grad_share(self) -> Tensor:
        """(K,) each true class's fraction of the squared gradient norm (sums to 1; 0 if no
        gradient)."""
        total = self.grad_sq_norm.sum()
        return torch.where(total > 0, self.grad_sq_norm / total.clamp_min(1e-300), 0.0)

    def __add__(self, other: LossBreakdown) -> LossBreakdown:
        if not isinstance(other, LossBreakdown):
            return NotImplemented
        if other.classes != self.classes:
            raise ValueError(
                f"cannot add breakdowns of different classes: {self.classes} and {other.classes}"
            )
        return LossBreakdown(
            self.fn + other.fn,
            self.fp + other.fp,
            self.total + other.total.to(self.total.device),
            self.support + other.support,
            self.grad_sq_norm + other.grad_sq_norm,
            self.classes,
        )

    def table(self, top: int = 5) -> str:
        """A text table: per true class its elements, FN and FP terms, share of the loss and of
        the gradient; then the ``top`` largest FP terms (true class -> other class)."""
        fn, fp = self.fn.double().cpu(), self.fp.double().cpu()
        per_class, total = fn + fp.sum(dim=1), float(fn.sum() + fp.sum())
        share = per_class / total if total > 0 else torch.zeros_like(per_class)
        grad_share = self.grad_share.double().cpu()
        support = self.support.double().cpu()
        fn_total, fp_total = float(fn.sum()), float(fp.sum())
        pct = (lambda v: 100 * v / total) if total > 0 else (lambda v: 0.0)
        lines = [
            f"loss (sum) {total:.6g} over {float(support.sum()):g} elements: "
            f"FN term {fn_total:.6g} ({pct(fn_total):.1f}%), FP term {fp_total:.6g} "
            f"({pct(fp_total):.1f}%)"
        ]
        name_w = max(10, *(len(c) for c in self.classes))
        header = ("true class", "elements", "FN term", "FP term", "loss", "% loss", "% grad")
        lines.append(f"{header[0]:<{name_w}}" + "".join(f"  {h:>10}" for h in header[1:]))
        for k, name in enumerate(self.classes):
            cells = (
                f"{float(support[k]):g}",
                f"{float(fn[k]):.4g}",
                f"{float(fp[k].sum()):.4g}",
                f"{float(per_class[k]):.4g}",
                f"{100 * float(share[k]):.1f}",
                f"{100 * float(grad_share[k]):.1f}",
            )
            lines.append(f"{name:<{name_w}}" + "".join(f"  {c:>10}" for c in cells))
        flat = fp.flatten()
        order = [int(i) for i in flat.argsort(descending=True)[:top] if float(flat[i]) > 0]
        if order:
            k = fp.shape[0]
            lines.append("largest FP terms (true -> probability put on):")
            for i in order:
                t, j = divmod(i, k)
                lines.append(
                    f"  {self.classes[t]} -> {self.classes[j]}: {float(flat[i]):.4g} "
                    f"({pct(float(flat[i])):.1f}%)"
                )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@V.torch_keywords(V.CROSS_ENTROPY_KEYWORDS)
def loss_breakdown(
    input: Tensor,
    target: Tensor,
    fn_weight: Tensor | None = None,
    fp_weight: Tensor | None = None,
    *,
    sample_weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    input_type: V.InputType = "logits",
    validate: bool | None = None,
    backend: V.Backend = "auto",
    classes: Sequence[str] | None = None,
) -> LossBreakdown:
    r"""Split an RWWCE loss into its terms: which classes and which confusions it comes from.

    With p = softmax(z), targets y (one-hot, smoothed, or given as probabilities) and per-element
    weights s (``sample_weight`` times the ignore mask), the 'sum' loss is exactly

    .. math::
        \sum_k \underbrace{fn_k \sum_r s_r y_{rk} (-\log p_{rk})}_{\text{fn}[k]}
        \;+\; \sum_{t \ne j} \underbrace{FP_{tj} \sum_r s_r y_{rt} (-\log(1 - p_{rj}))}_{
        \text{fp}[t, j]}

    ``fn[k]`` is what missing class k costs the loss, ``fp[t, j]`` what putting probability on
    class j costs when the truth is t. ``log(1 - p)`` is taken in log space as in the loss (no
    clipping), so masked (-inf) logits and huge logit gaps give finite terms. The terms are
    computed in float64. The gradient share comes from the loss's own backward (``'sum'``; the
    shares are the same under ``'mean'`` and ``'weighted_mean'``, which only rescale it).

    Args:
        input, target, fn_weight, fp_weight, sample_weight, ignore_index, label_smoothing,
        input_type, validate, backend: as in :func:`rwwce.real_world_weight_cross_entropy`
            (pass a module's ``criterion.fn_weight``, ``criterion.fp_weight`` and options).
        classes: K class names for the table; default "0", ..., "K-1".

    Returns:
        A :class:`LossBreakdown` with ``.fn`` (K,), ``.fp`` (K, K), ``.total``, ``.support``,
        ``.grad_share`` and ``.table()``; ``print()`` shows the table.

    Shape:
        As the loss: input (K,), (N, K) or (N, K, d1, ..., dk); target of class indices or
        probabilities. ``.fn`` and ``.fp`` are float64 on the input's device.

    Example::

        >>> import torch, rwwce
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [0.0, 4.0, 0.0]])
        >>> fp = torch.tensor([[0, 1, 1], [9, 0, 1], [1, 1, 0]], dtype=torch.float32)
        >>> b = rwwce.loss_breakdown(logits, torch.tensor([0, 1, 1]), fp_weight=fp)
        >>> torch.allclose(b.fn.sum() + b.fp.sum(), b.total.double())
        True
        >>> b.fp.argmax().item() == 1 * 3 + 2    # truth 1, probability on class 2: the big term
        True
    """
    # Works under torch.no_grad() and torch.inference_mode() (Lightning's validation): the
    # gradient is taken on a normal copy of the input, outside inference mode.
    options = dict(
        sample_weight=sample_weight,
        ignore_index=ignore_index,
        reduction="sum",
        label_smoothing=label_smoothing,
        input_type=input_type,
    )
    with torch.inference_mode(False), torch.enable_grad():
        x = input.detach().clone().requires_grad_(True) if isinstance(input, Tensor) else input
        total = real_world_weight_cross_entropy(
            x, target, fn_weight, fp_weight, **options, validate=validate, backend=backend
        )
        (grad,) = torch.autograd.grad(total, x)
    # The call above validated every argument; the rest is float64 bookkeeping on the rows the
    # loss itself was given.
    dtype = torch.float32 if input.device.type == "mps" else torch.float64
    with torch.no_grad():
        call = check_call(
            input.detach(),
            target.detach(),
            fn_weight,
            fp_weight,
            **options,
            validate=False,
            dtype=dtype,
        )
        prepared = prepare(call)
    problem = prepared.problem
    k = problem.logits.shape[1]
    names = check_class_names(classes, k)
    z = problem.logits.detach().to(dtype)
    g = classes_last(grad.unsqueeze(0) if prepared.unbatched else grad).to(dtype)
    fn = problem.fn_weight.detach()
    fp = None if problem.fp_weight is None else problem.fp_weight.detach()
    if fp is not None and fp.dim() == 1:  # FP[t, j] = v[j] for t != j
        fp = fp.expand(k, k) * (1 - torch.eye(k, dtype=dtype, device=z.device))
    row_weight = prepared.row_weight.detach()
    if prepared.valid is None:  # class probabilities; the problem's target is smoothed
        owner, y = prepared.classes.detach(), problem.target.detach()
    else:
        owner = torch.nn.functional.one_hot(prepared.classes, k).to(dtype)
        y = owner * (1.0 - label_smoothing) + label_smoothing / k
        owner = owner * prepared.valid.unsqueeze(1)
    sy = y * row_weight.unsqueeze(1)

    neg_log_p = -torch.log_softmax(z, dim=1)
    fn_coef = sy * fn
    # 0 * inf would be NaN where a class is masked (p = 0) and not a target: those terms are 0.
    fn_terms = torch.where(fn_coef > 0, fn_coef * neg_log_p, 0.0).sum(dim=0)
    if fp is None:
        fp_terms = torch.zeros(k, k, dtype=dtype, device=z.device)
    else:
        big = torch.finfo(dtype).max  # -log(1 - p) = +inf only where p = 1 exactly
        neg_log_not_p = (-log_one_minus_softmax(z)).clamp_max(big)
        fp_terms = fp * (sy.T @ neg_log_not_p)
    row_sq = (g * g).sum(dim=1)
    return LossBreakdown(
        fn=fn_terms,
        fp=fp_terms,
        total=total.detach(),
        support=(owner * row_weight.unsqueeze(1)).sum(dim=0),
        grad_sq_norm=owner.T @ row_sq,
        classes=names,
    )


# ---------------------------------------------------------------------- cost monitor
class CostMonitor:
    """Validation Real World Cost, epoch by epoch, in any training loop.

    Per validation batch call :meth:`update` (it adds the batch's confusion counts on the batch's
    device, without a host synchronisation); after the epoch call :meth:`end_epoch`, which reduces
    the counts over processes under ``torch.distributed`` (so every rank sees the same global
    cost and the same ``should_stop``) and returns the epoch's record::

        {"epoch": 3, "real_world_cost": 0.41, "recall": {"ok": 0.97, ...}, "train_loss": 0.52,
         "val_loss": 0.61, "overfitting": False, "is_best": True, "samples": 360,
         "confusion_matrix": [[...], ...]}

    ``real_world_cost = sum_ij C[i, j] count[i, j] / n`` over the epoch's validation elements;
    ``recall[c] = count[c, c] / sum_j count[c, j]`` (NaN for a class absent from the epoch);
    ``overfitting`` is True when the validation loss rose and the training loss fell since the
    previous epoch that had both (None when that cannot be told).

    Args:
        costs: a :class:`rwwce.CostMatrix` or a (K, K) array-like, C[truth, prediction].
        patience: :attr:`should_stop` becomes True after this many epochs without a lower cost
            (``None``: never).
        decision: ``"argmax"`` (default) or ``"bayes"``: the cost-optimal class
            ``argmin_j sum_i p_i C[i, j]`` (:func:`rwwce.metrics.bayes_decision`, whose checks of
            the probabilities read them on the host once per batch).
        classes: K class names; default the cost matrix's.
        input_type: scores given to :meth:`update` are ``"logits"`` (default) or ``"probs"``
            (matters only for ``decision="bayes"``).
        ignore_index: targets equal to it are skipped. Default -100. Other labels outside
            ``[0, K)`` are a ``ValueError`` for CPU tensors; on an accelerator (where reading
            them would synchronise) they are left out and make the epoch's cost NaN, with a
            warning from :meth:`end_epoch`. The same rule as ``RealWorldCost``.
        min_delta: a cost must drop by more than this to count as an improvement. Default 0.

    Under torch.distributed every rank must call :meth:`end_epoch` (it is a collective); call
    :meth:`plot` on one rank.
    """

    def __init__(
        self,
        costs: Any,
        *,
        patience: int | None = None,
        decision: Literal["argmax", "bayes"] = "argmax",
        classes: Sequence[str] | None = None,
        input_type: V.InputType = "logits",
        ignore_index: int = -100,
        min_delta: float = 0.0,
    ) -> None:
        self.cost_matrix = as_cost_matrix(costs)
        self._device_costs: Tensor | None = None  # the matrix on the scores' device, for "bayes"
        self.num_classes = self.cost_matrix.num_classes
        if patience is not None and (
            isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 1
        ):
            raise ValueError(f"patience is {patience!r}; expected None or an int >= 1")
        _costmath.check_decision(decision)
        V.check_choice("input_type", input_type, V.INPUT_TYPES)
        V.check_ignore_index(ignore_index)
        if not isinstance(min_delta, numbers.Real) or not min_delta >= 0:
            raise ValueError(f"min_delta is {min_delta!r}; expected a number >= 0")
        self.classes = (
            self.cost_matrix.classes
            if classes is None
            else check_class_names(classes, self.num_classes)
        )
        self.patience = None if patience is None else int(patience)
        self.decision = decision
        self.input_type = input_type
        self.ignore_index = int(ignore_index)
        self.min_delta = float(min_delta)
        self.history: list[dict[str, Any]] = []
        self._counts: Tensor | None = None  # K * K confusion counts, then the invalid labels

    # ------------------------------------------------------------------ per batch
    def update(self, preds: Any, target: Any) -> None:
        """Add a batch.

        Args:
            preds: scores (N, K) or (N, K, d1, ...) (logits or probabilities, class dim 1), class
                indices of the target's shape (an integer dtype), or for K == 2 a floating tensor
                of the target's shape holding the positive class's logit (probability with
                ``input_type="probs"``).
            target: class indices (N,) or (N, d1, ...); ``ignore_index`` entries are skipped.
        """
        k = self.num_classes
        t = to_tensor(target, "target")
        p = to_tensor(preds, "preds").to(t.device)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"target has dtype {t.dtype}; expected integer class indices")
        if p.ndim == t.ndim + 1:
            if p.shape[1] != k or p.shape[:1] + p.shape[2:] != t.shape:
                raise ValueError(
                    f"preds has shape {tuple(p.shape)} and target {tuple(t.shape)}; expected "
                    f"scores of shape (N, {k}, ...) with target (N, ...)"
                )
            pred = self._decide(p)
        elif p.shape == t.shape and p.is_floating_point():
            if k != 2:
                raise ValueError(
                    f"preds has the target's shape {tuple(t.shape)} and a floating dtype, i.e. "
                    f"binary scores, but costs has {k} classes; expected scores (N, {k}, ...)"
                )
            # two-class scores: logits (0, z), or probabilities (1 - p, p)
            other = torch.zeros_like(p) if self.input_type == "logits" else 1 - p
            pred = self._decide(torch.stack([other, p], dim=1))
        elif p.shape == t.shape:
            pred = p
        else:
            raise ValueError(
                f"preds has shape {tuple(p.shape)} and target {tuple(t.shape)}; expected scores "
                f"(N, {k}, ...) or class indices of the target's shape"
            )
        counts, _, invalid = _costmath.streaming_confusion(
            t, pred, k, self.ignore_index, check=t.device.type == "cpu"
        )
        if self._counts is None:
            with torch.inference_mode(False):  # a normal tensor: updatable in and out of it
                self._counts = torch.zeros(k * k + 1, dtype=torch.int64, device=t.device)
        self._counts.add_(torch.cat([counts.reshape(-1), invalid.reshape(1)]).to(self._counts))

    def _decide(self, scores: Tensor) -> Tensor:
        """(N, K, ...) scores -> (N, ...) decisions, without bayes_decision's data checks (they
        synchronise)."""
        costs = self._costs_on(scores.device) if self.decision == "bayes" else None
        return _costmath.decide(scores, self.decision, costs, logits=self.input_type == "logits")

    def _costs_on(self, device: torch.device) -> Tensor:
        """The cost matrix on ``device`` (float32), copied once, not on every batch."""
        if self._device_costs is None or self._device_costs.device != device:
            self._device_costs = self.cost_matrix.matrix.to(device, torch.float32)
        return self._device_costs

    # ------------------------------------------------------------------ per epoch
    def end_epoch(self, train_loss: Any = None, val_loss: Any = None) -> dict[str, Any]:
        """Close the epoch: the global cost and recall of the batches since the last call.

        Args:
            train_loss: the epoch's training loss (a number or a 0-dim tensor), or None.
            val_loss: the epoch's validation loss, or None. Under torch.distributed both are
                averaged over the ranks that give them.

        Returns:
            The epoch's record (also appended to :attr:`history`).

        Raises:
            ValueError: no validation element was seen since the last call (on any rank).
        """
        k = self.num_classes
        counts, invalid, train, val = self._reduce(train_loss, val_loss)
        self._counts = None
        n = int(counts.sum())
        if n == 0 and invalid == 0:
            raise ValueError(
                "end_epoch() found no validation elements since the last call; call "
                "update(preds, target) for the validation batches first"
            )
        seen = _costmath.confusion_costs(counts, self.cost_matrix.matrix)
        cost = float(seen.mean) if n else math.nan
        if invalid:
            warnings.warn(
                f"{invalid} labels outside [0, {k}) (neither classes nor ignore_index="
                f"{self.ignore_index}) were passed to update() this epoch; the epoch's cost is "
                "NaN",
                RuntimeWarning,
                stacklevel=2,
            )
            cost = math.nan
        recall = dict(zip(self.classes, seen.recall.tolist(), strict=True))
        previous = self.best_cost
        is_best = not math.isnan(cost) and (previous is None or cost < previous - self.min_delta)
        record = {
            "epoch": len(self.history) + 1,
            "real_world_cost": cost,
            "recall": recall,
            "train_loss": train,
            "val_loss": val,
            "overfitting": self._overfitting(train, val),
            "is_best": is_best,
            "samples": n,
            "confusion_matrix": counts.reshape(k, k).tolist(),
        }
        self.history.append(record)
        return record

    def _reduce(
        self, train_loss: Any, val_loss: Any
    ) -> tuple[Tensor, int, float | None, float | None]:
        """Counts (K, K) int64 on the CPU, the number of invalid labels and the two losses,
        summed / averaged over processes."""
        k = self.num_classes
        dist = torch.distributed
        distributed = dist.is_available() and dist.is_initialized()
        device = self._counts.device if self._counts is not None else torch.device("cpu")
        if distributed and self._counts is None and dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        # One collective for everything; float64 holds counts exactly up to 2**53.
        packed = torch.zeros(k * k + 5, dtype=torch.float64, device=device)
        if self._counts is not None:
            packed[: k * k + 1] = self._counts.to(torch.float64)
        for slot, loss in ((k * k + 1, train_loss), (k * k + 3, val_loss)):
            if loss is not None:
                value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
                packed[slot], packed[slot + 1] = value, 1.0
        if distributed:
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        packed = packed.cpu()
        counts = packed[: k * k].round().to(torch.int64).reshape(k, k)
        losses = [
            float(packed[s] / packed[s + 1]) if packed[s + 1] > 0 else None
            for s in (k * k + 1, k * k + 3)
        ]
        return counts, round(float(packed[k * k])), losses[0], losses[1]

    def _overfitting(self, train: float | None, val: float | None) -> bool | None:
        if train is None or val is None:
            return None
        for record in reversed(self.history):
            if record["train_loss"] is not None and record["val_loss"] is not None:
                return val > record["val_loss"] and train < record["train_loss"]
        return None

    # ------------------------------------------------------------------ state
    @property
    def best_epoch(self) -> int | None:
        """The (1-based) epoch with the lowest cost so far (the first of ties); None before any."""
        best = [r["epoch"] for r in self.history if r["is_best"]]
        return best[-1] if best else None

    @property
    def best_cost(self) -> float | None:
        """The lowest cost so far (improvements by more than ``min_delta``); None before any."""
        epoch = self.best_epoch
        return None if epoch is None else self.history[epoch - 1]["real_world_cost"]

    @property
    def epochs_without_improvement(self) -> int:
        epoch = self.best_epoch
        return 0 if epoch is None else len(self.history) - epoch

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs passed without a lower cost."""
        return self.patience is not None and self.epochs_without_improvement >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """The history, for checkpoints (resume with :meth:`load_state_dict`)."""
        return {"history": [dict(r) for r in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state["history"]]
        self._counts = None

    # ------------------------------------------------------------------ plot
    def plot(self, path: str | os.PathLike[str]) -> None:
        """Learning curves (training and validation loss), the cost per epoch with the best epoch
        marked, and per-class recall, written atomically to ``path`` (format from its suffix).

        Needs matplotlib (``pip install rwwce[experiments]``).
        """
        if not self.history:
            raise ValueError("plot() needs at least one end_epoch() record; the history is empty")
        require("matplotlib", "CostMonitor.plot")
        from rwwce._io import save_figure

        check_figure_path(path)
        epochs = [r["epoch"] for r in self.history]
        fig, (ax_loss, ax_cost, ax_recall) = new_figure(1, 3, (13, 3.8))
        for key, label in (("train_loss", "training"), ("val_loss", "validation")):
            pts = [(r["epoch"], r[key]) for r in self.history if r[key] is not None]
            if pts:
                ax_loss.plot(*zip(*pts, strict=True), marker="o", label=label)
        over = [r["epoch"] for r in self.history if r["overfitting"]]
        for e in over:
            ax_loss.axvline(e, color="tab:red", alpha=0.25)
        ax_loss.set(title="loss" + (" (red: overfitting)" if over else ""), xlabel="epoch")
        if ax_loss.lines:
            ax_loss.legend()
        ax_cost.plot(epochs, [r["real_world_cost"] for r in self.history], marker="o")
        ax_cost.scatter(
            [self.best_epoch],
            [self.best_cost],
            s=120,
            facecolors="none",
            edgecolors="tab:green",
            label=f"best: epoch {self.best_epoch}",
            zorder=3,
        )
        ax_cost.set(title="validation Real World Cost", xlabel="epoch", ylabel="cost per element")
        ax_cost.legend()
        for name in self.classes:
            ax_recall.plot(
                epochs, [r["recall"][name] for r in self.history], marker=".", label=name
            )
        ax_recall.set(title="recall per class", xlabel="epoch", ylim=(-0.02, 1.02))
        if len(self.classes) <= 12:
            ax_recall.legend(fontsize="small")
        save_figure(fig, path)

    def __repr__(self) -> str:
        return (
            f"CostMonitor({self.num_classes} classes, decision={self.decision!r}, "
            f"patience={self.patience}, epochs={len(self.history)}, best_epoch={self.best_epoch})"
        )
