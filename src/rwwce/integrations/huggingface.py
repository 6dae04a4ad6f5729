"""Hugging Face ``transformers``: a ``Trainer`` with the RWWCE loss, and a Real World Cost metric.

Needs ``transformers`` and ``accelerate`` (``pip install rwwce[hf]``); ``import rwwce`` does not
import them.

Example (not run here: it needs a model and datasets)::

    from rwwce import RWWCELoss
    from rwwce.integrations.huggingface import RWWCETrainer, make_compute_metrics

    costs = [[0, 1, 5], [1, 0, 1], [50, 20, 0]]
    trainer = RWWCETrainer(
        model=model, args=TrainingArguments("out", gradient_accumulation_steps=4,
                                            eval_strategy="epoch",
                                            metric_for_best_model="real_world_cost",
                                            greater_is_better=False),
        train_dataset=train, eval_dataset=val,
        loss=RWWCELoss.from_costs(costs),
        compute_metrics=make_compute_metrics(costs),
    )
    trainer.train()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import transformers
from torch import Tensor

from rwwce import _costmath
from rwwce._problem import cost_rows, denominator, index_rows
from rwwce._validate import check_class_names, check_ignore_index
from rwwce.costs import as_cost_matrix
from rwwce.functional import (
    binary_real_world_weight_cross_entropy,
    real_world_weight_cross_entropy,
)
from rwwce.metrics import confusion_matrix
from rwwce.modules import BinaryRWWCELoss, RWWCELoss

__all__ = ["RWWCETrainer", "make_compute_metrics"]


class RWWCETrainer(transformers.Trainer):
    """A ``transformers.Trainer`` whose loss is an RWWCE loss on ``outputs.logits`` and the batch's
    ``labels``, normalised over the whole accumulated, global batch.

    With gradient accumulation over micro-batches b and processes q, one optimiser step follows
    the gradient of

        sum over every micro-batch and process of the 'sum' loss  /  D

    where D is the loss's denominator for the concatenation of all those batches: 1 for
    ``reduction="sum"``, the number of non-ignored labels for ``"mean"``, the sum of their FN
    weights ``fn[label]`` for ``"weighted_mean"`` (class probabilities: the number of rows; binary:
    the number of elements, or the sum of ``fn * y + fp * (1 - y)``). So a step with
    ``gradient_accumulation_steps=4`` and batches of 8 equals one step on the batch of 32, and N
    processes equal one. (The Trainer's own ``num_items_in_batch`` counts labels, which is right
    for ``"mean"`` only.) Each micro-batch's loss is ``sum_loss * world_size / D``, because
    DistributedDataParallel averages gradients over processes; D is counted from the labels before
    the forward passes and summed over processes once per optimiser step.

    During evaluation the loss is each batch's own mean (as the loss module computes it).

    Per-sample costs: a batch entry ``sample_costs`` (the logits' shape: (N, K), or (N, L, K) for
    token classification; ``sample_costs[i, j]`` is the cost of predicting class j for sample i)
    is taken out of the inputs before the model's forward and passed to the loss as its
    ``sample_costs`` (see :func:`rwwce.real_world_weight_cross_entropy`), with a loss built
    without ``fn_weight`` / ``fp_weight``. ``"weighted_mean"``'s D is then the sum of each
    non-ignored sample's own fn_i = min_{j != label} c_ij over the global batch. The column is
    kept by ``remove_unused_columns``.

    Layout: ``logits`` (N, K) with ``labels`` (N,) of class indices, or (N, L, K) with (N, L)
    (token classification); labels of the logits' shape and a floating dtype are class
    probabilities. For :class:`rwwce.BinaryRWWCELoss`, ``labels`` has the logits' shape ((N,) and
    (N, 1) are matched). Causal language models shift their labels: shift them before the Trainer
    sees them. The model's own loss is not computed (``labels`` is not passed to it, so its
    ``forward`` need not take labels); ``label_names`` defaults to ``["labels"]``.

    Args:
        *args, **kwargs: those of ``transformers.Trainer``.
        loss: an :class:`rwwce.RWWCELoss` or :class:`rwwce.BinaryRWWCELoss` (keyword only), with
            reduction ``"sum"``, ``"mean"`` or ``"weighted_mean"``. Its weights move to the
            logits' device on first use.
    """

    # compute_loss returns a loss already normalised over the accumulated batch: training_step
    # must not divide it by the number of accumulation steps again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, loss: RWWCELoss | BinaryRWWCELoss, **kwargs: Any) -> None:
        if not isinstance(loss, (RWWCELoss, BinaryRWWCELoss)):
            raise TypeError(
                f"loss must be an rwwce.RWWCELoss or rwwce.BinaryRWWCELoss; got "
                f"{type(loss).__name__}"
            )
        if loss.reduction == "none":
            raise ValueError(
                "loss has reduction='none'; the Trainer needs a scalar: use 'mean', "
                "'weighted_mean' or 'sum'"
            )
        super().__init__(*args, **kwargs)
        if self.label_smoother is not None:
            raise ValueError(
                "TrainingArguments.label_smoothing_factor is set, but RWWCETrainer computes its "
                "own loss: pass label_smoothing= to rwwce.RWWCELoss instead"
            )
        if self.args.n_gpu > 1:
            raise ValueError(
                f"RWWCETrainer does not support torch.nn.DataParallel ({self.args.n_gpu} GPUs in "
                "one process); launch one process per GPU (torchrun / accelerate launch)"
            )
        # The Trainer finds label names in the model's forward signature; a model that takes no
        # labels (the loss is computed here, not by the model) would get none, and evaluation
        # would then pass 'labels' to its forward. The batch's labels are always 'labels' here.
        if self.args.label_names is None:
            self.label_names = ["labels"]
        elif list(self.args.label_names) != ["labels"]:
            raise ValueError(
                f"TrainingArguments.label_names is {self.args.label_names!r}; RWWCETrainer reads "
                "the batch's 'labels': leave label_names unset or set it to ['labels']"
            )
        # transformers < 5 has no loss_is_scaled_for_ga; there, this flag (with a
        # num_items_in_batch) is what stops training_step from dividing by the accumulation steps.
        self.model_accepts_loss_kwargs = True
        self.rwwce_loss = loss
        self._global_denominator: Tensor | None = None

    def _set_signature_columns_if_needed(self) -> None:
        """The model's forward arguments and the labels (the base class's), plus ``sample_costs``,
        which the loss reads: ``remove_unused_columns`` must keep it."""
        super()._set_signature_columns_if_needed()
        if "sample_costs" not in self._signature_columns:
            self._signature_columns.append("sample_costs")

    # ---------------------------------------------------------------- denominators
    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, *args: Any, **kwargs: Any
    ) -> tuple[list, Any]:
        """The base class's batches, with the RWWCE denominator of the accumulated global batch
        (summed over processes) in place of ``num_items_in_batch``."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, *args, **kwargs)
        device = self.args.device
        self.rwwce_loss.to(device)  # once per step, a no-op after the first: weights beside labels
        total = torch.zeros((), dtype=torch.float64, device=device)
        for batch in batch_samples:
            labels = batch.get("labels") if isinstance(batch, dict) else None
            if labels is None:
                raise ValueError("RWWCETrainer needs a 'labels' entry in every training batch")
            costs = batch.get("sample_costs")
            costs = None if costs is None else costs.to(device)
            total = total + self._denominator(labels.to(device), costs).to(torch.float64)
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(total, reduction="sum")
        self._global_denominator = total
        return batch_samples, total

    def _denominator(self, labels: Tensor, sample_costs: Tensor | None = None) -> Tensor:
        """What the loss's reduction divides by, for one batch of labels (and its per-sample
        costs, classes last, when the batch has them)."""
        loss = self.rwwce_loss
        if sample_costs is not None:
            self._check_sample_costs(labels, sample_costs)
        if loss.reduction == "sum":  # no denominator: counted as 0 per batch, used as 1
            return torch.zeros((), device=labels.device)
        if isinstance(loss, BinaryRWWCELoss):
            if loss.reduction == "mean":
                return labels.new_full((), float(labels.numel()), dtype=torch.float64)
            y = labels.to(torch.float64)
            fn = loss.fn_weight.to(labels.device, torch.float64)
            fp = loss.fp_weight.to(labels.device, torch.float64)
            return (fn * y + fp * (1 - y)).expand(y.shape).sum()
        if labels.is_floating_point():  # class probabilities, classes last: one row per element
            valid, classes = None, labels.reshape(-1, labels.shape[-1])
            row_weight = torch.ones(classes.shape[0], dtype=torch.float64, device=labels.device)
        else:
            valid, classes = index_rows(labels, loss.ignore_index)
            row_weight = valid.to(torch.float64)
        fn = None if loss.fn_weight is None else loss.fn_weight.to(labels.device, torch.float64)
        fn_rows = None
        if sample_costs is not None:
            costs = sample_costs.reshape(-1, sample_costs.shape[-1]).to(torch.float64)
            fn_rows = cost_rows(costs, classes)[0]
        return denominator(loss.reduction, row_weight, classes, valid, fn, fn_rows)

    def _check_sample_costs(
        self, labels: Tensor, sample_costs: Tensor, num_classes: int | None = None
    ) -> None:
        """A batch's ``sample_costs``: a multi-class loss and shape (*labels, K) (K unchecked
        when ``num_classes`` is None, before the forward)."""
        if isinstance(self.rwwce_loss, BinaryRWWCELoss):
            raise ValueError(
                "the batch has 'sample_costs', which needs a multi-class rwwce.RWWCELoss; got "
                "rwwce.BinaryRWWCELoss"
            )
        shape = tuple(getattr(sample_costs, "shape", ()))
        expected = (*labels.shape, num_classes if num_classes is not None else "K")
        if (
            not isinstance(sample_costs, Tensor)
            or shape[:-1] != tuple(labels.shape)
            or (num_classes is not None and shape[-1:] != (num_classes,))
        ):
            raise ValueError(
                f"the batch's 'sample_costs' must have shape {expected} (the labels' shape plus "
                f"the classes: the logits' shape); got {shape}"
            )

    # ---------------------------------------------------------------- loss
    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """The batch's 'sum' RWWCE loss times the world size over the global denominator (in
        training), or the batch's own reduction (in evaluation)."""
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError("RWWCETrainer needs 'labels' in the batch")
        sample_costs = inputs.pop("sample_costs", None)
        if sample_costs is not None:
            self._check_sample_costs(labels, sample_costs)
        outputs = model(**inputs)
        logits = _logits_of(outputs)
        input, target = self._layout(logits, labels)
        if sample_costs is not None:
            self._check_sample_costs(
                labels, sample_costs, logits.shape[-1]
            )  # classes last like the logits: rows like them
            sample_costs = sample_costs.to(input.device).reshape(input.shape)
        total = self._sum_loss(input, target, sample_costs)
        if (
            model.training
            and num_items_in_batch is not None
            and num_items_in_batch is self._global_denominator
        ):
            denominator, scale = num_items_in_batch, self.accelerator.num_processes
        else:  # evaluation, or called outside the training loop: this batch alone
            denominator, scale = self._denominator(target, sample_costs), 1
        denominator = denominator.to(total.device, total.dtype)
        if self.rwwce_loss.reduction == "sum":
            denominator = torch.ones_like(denominator)
        safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
        loss = torch.where(denominator > 0, total * (scale / safe), total * 0)
        return (loss, outputs) if return_outputs else loss

    def _layout(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """HF's classes-last logits and labels, in the layout the loss expects."""
        labels = labels.to(logits.device)
        if isinstance(self.rwwce_loss, BinaryRWWCELoss):
            if labels.shape != logits.shape and labels.numel() == logits.numel():
                labels = labels.reshape(logits.shape)
            return logits, labels.to(logits.dtype if logits.is_floating_point() else torch.float32)
        k = logits.shape[-1]
        if labels.is_floating_point() and labels.shape == logits.shape:
            return logits.reshape(-1, k), labels.reshape(-1, k)
        if logits.dim() > 2:
            return logits.reshape(-1, k), labels.reshape(-1)
        return logits, labels

    def _sum_loss(self, input: Tensor, target: Tensor, sample_costs: Tensor | None) -> Tensor:
        loss = self.rwwce_loss
        if loss.fn_weight is not None and loss.fn_weight.device != input.device:
            loss.to(input.device)
        if isinstance(loss, BinaryRWWCELoss):
            return binary_real_world_weight_cross_entropy(
                input,
                target,
                loss.fn_weight,
                loss.fp_weight,
                reduction="sum",
                input_type=loss.input_type,
                validate=loss.validate,
            )
        if loss.fp_weight is not None and loss.fp_weight.device != input.device:
            loss.to(input.device)
        return real_world_weight_cross_entropy(
            input,
            target,
            loss.fn_weight,
            loss.fp_weight,
            ignore_index=loss.ignore_index,
            reduction="sum",
            label_smoothing=loss.label_smoothing,
            input_type=loss.input_type,
            validate=loss.validate,
            backend=loss.backend,
            sample_costs=sample_costs,
        )


def _logits_of(outputs: Any) -> Tensor:
    if isinstance(outputs, dict):
        if "logits" not in outputs:
            raise ValueError(
                f"the model's output has no 'logits' (keys: {', '.join(outputs.keys())})"
            )
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    return outputs


def make_compute_metrics(
    costs: Any,
    *,
    decision: Literal["argmax", "bayes"] = "argmax",
    ignore_index: int = -100,
    classes: Sequence[str] | None = None,
) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for ``transformers.Trainer`` that reports the Real World Cost.

    The returned function takes the Trainer's ``EvalPrediction`` (logits (N, K) or (N, L, K),
    or for a 2 x 2 cost matrix (N,) / (N, 1) positive-class logits; labels of class indices,
    ``ignore_index`` skipped) and returns ``{"real_world_cost": ..., "accuracy": ...,
    "recall_<class>": ...}``; the Trainer prefixes them with ``eval_``. Select the best
    checkpoint with ``metric_for_best_model="real_world_cost", greater_is_better=False``.

    Args:
        costs: a :class:`rwwce.CostMatrix` or (K, K) array-like, C[truth, prediction].
        decision: ``"argmax"`` or ``"bayes"`` (the cost-optimal class from the softmax
            probabilities, :func:`rwwce.metrics.bayes_decision`).
        ignore_index: labels equal to it are skipped. Default -100.
        classes: names for the recall keys; default the cost matrix's.

    Example::

        >>> import numpy as np
        >>> from rwwce.integrations.huggingface import make_compute_metrics
        >>> metrics = make_compute_metrics([[0, 1], [10, 0]], classes=["neg", "pos"])
        >>> logits = np.array([[2.0, 0.0], [1.0, 0.5], [0.0, 3.0]])
        >>> metrics((logits, np.array([0, 1, 1])))["real_world_cost"]   # one missed positive
        3.3333333333333335
    """
    cm = as_cost_matrix(costs)
    _costmath.check_decision(decision)
    ignore_index = check_ignore_index(ignore_index)
    names = cm.classes if classes is None else check_class_names(classes, cm.num_classes)
    k = cm.num_classes

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        predictions, labels = eval_pred[0], eval_pred[1]
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        scores = torch.as_tensor(np.asarray(predictions)).double()
        target = torch.as_tensor(np.asarray(labels)).long()
        if k == 2 and scores.numel() == target.numel():  # one positive-class logit per element
            scores = scores.reshape(-1, 1)
            scores = torch.cat([torch.zeros_like(scores), scores], dim=1)
        if scores.shape[-1] != k:
            raise ValueError(
                f"predictions have shape {tuple(scores.shape)}; expected logits with {k} classes "
                "in the last dimension"
            )
        scores, target = scores.reshape(-1, k), target.reshape(-1)
        if scores.shape[0] != target.shape[0]:
            raise ValueError(
                f"{scores.shape[0]} predictions but {target.shape[0]} labels; expected one each"
            )
        keep = target != ignore_index
        scores, target = scores[keep], target[keep]
        pred = _costmath.decide(scores, decision, cm.matrix, logits=True)
        seen = _costmath.confusion_costs(confusion_matrix(target, pred, k), cm.matrix)
        result = {"real_world_cost": float(seen.mean), "accuracy": float(seen.accuracy)}
        for name, recall in zip(names, seen.recall.tolist(), strict=True):
            result[f"recall_{name}"] = recall
        return result

    return compute_metrics
