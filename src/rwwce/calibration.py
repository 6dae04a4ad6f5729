"""Probability calibration: temperature scaling, the expected calibration error, and undoing the
lean of a cost-weighted model (:func:`unweight_probabilities`, also in :mod:`rwwce.metrics`).

A cost-optimal decision (:func:`rwwce.metrics.bayes_decision`) is only as good as the
probabilities it is given. Modern networks are over-confident; temperature scaling (Guo et al.,
"On Calibration of Modern Neural Networks", ICML 2017) fixes most of that with one parameter
fitted on held-out data::

    T* = argmin_T  mean_n  -log softmax(z_n / T)[t_n]          (sigmoid for binary logits)

It keeps the arg-max (so accuracy) unchanged and moves only the confidence. The expected
calibration error measures what is left: with the top-label confidence ``conf_n = max_k p_nk``
split into ``n_bins`` equal-width bins ``B_b``::

    ECE = sum_b |B_b| / N * | mean_{n in B_b} 1[argmax p_n = t_n] - mean_{n in B_b} conf_n |

Everything here runs on tensors on any device; :func:`plot_reliability_diagram` needs
matplotlib (the ``experiments`` extra), imported when called.

Example::

    >>> import torch
    >>> from rwwce.calibration import TemperatureScaling, expected_calibration_error
    >>> g = torch.Generator().manual_seed(0)
    >>> true_logits = 2.0 * torch.randn(20000, 4, generator=g)
    >>> target = torch.multinomial(true_logits.softmax(1), 1, generator=g).squeeze(1)
    >>> overconfident = 3.0 * true_logits                   # a model 3x too sure of itself
    >>> scaler = TemperatureScaling().fit(overconfident, target)
    >>> round(float(scaler.temperature), 1)
    3.0
    >>> before = expected_calibration_error(overconfident.softmax(1), target)
    >>> after = expected_calibration_error(scaler.transform(overconfident).softmax(1), target)
    >>> bool(after < 0.02 < before)
    True
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rwwce import _costmath
from rwwce._optional import require
from rwwce._validate import check_fn_matrix_diagonal, to_tensor

__all__ = [
    "TemperatureScaling",
    "calibration_bins",
    "expected_calibration_error",
    "plot_reliability_diagram",
    "unweight_probabilities",
]


def _logits_and_target(
    logits: Any, target: Any, sample_weight: Any = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    """Checked (logits, target, weights, binary): (N, K, ...) with class indices (N, ...), or
    (N, ...) binary logits with 0/1 targets of the same shape."""
    z = to_tensor(logits, "logits")
    if not z.is_floating_point():
        raise TypeError(f"logits has dtype {z.dtype}; expected floating-point logits")
    t = to_tensor(target, "target")
    binary = z.shape == t.shape
    if binary:
        t = t.to(z.device, torch.float64)
        if not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError(
                "target contains values outside [0, 1]; expected 0/1 labels (or probabilities) "
                "for binary logits of the same shape"
            )
    else:
        if z.ndim < 2 or z.shape[:1] + z.shape[2:] != t.shape:
            raise ValueError(
                f"logits has shape {tuple(z.shape)} and target {tuple(t.shape)}; expected "
                "(N, K, ...) logits with (N, ...) class indices, or binary logits and 0/1 "
                "targets of the same shape"
            )
        t = _costmath.class_indices(t, "target", z.shape[1], device=z.device)
    if z.numel() == 0:
        raise ValueError("logits is empty; expected at least one sample")
    if bool(torch.isnan(z).any()) or bool((z == math.inf).any()):
        raise ValueError("logits contains NaN or +inf; expected finite logits (-inf masks a class)")
    w = None
    if sample_weight is not None:
        w = to_tensor(sample_weight, "sample_weight").to(z.device, torch.float64)
        if w.shape != t.shape:
            raise ValueError(
                f"sample_weight has shape {tuple(w.shape)}; expected {tuple(t.shape)}, one "
                "weight per target"
            )
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not bool(w.sum() > 0):
            raise ValueError(
                "sample_weight contains negative, NaN or infinite values, or sums to 0; "
                "expected finite weights >= 0 with a positive sum"
            )
    return z, t, w, binary


class TemperatureScaling(nn.Module):
    """Temperature scaling: one positive scalar ``T`` that divides the logits.

    ``fit`` minimises the negative log-likelihood of ``logits / T`` on held-out data over
    ``log T`` (L-BFGS with a strong-Wolfe line search, float64 throughout); the arg-max of every
    row is unchanged. Class-index targets use softmax cross-entropy (``F.cross_entropy``
    shapes: (N, K) or (N, K, d1, ...)); binary logits of the target's shape use the sigmoid.

    As an ``nn.Module`` its ``forward`` is :meth:`transform`, so ``nn.Sequential(model,
    scaler)`` outputs calibrated logits; ``temperature`` is a buffer (``state_dict``, ``.to()``).
    Before ``fit`` the temperature is 1 (the identity). Logits that carry no information about
    the target drive ``T`` very high (uniform probabilities are then the best fit).

    Attributes:
        temperature: 0-dim float64 tensor, ``T > 0``.

    Example::

        >>> import torch
        >>> scaler = TemperatureScaling().fit(torch.tensor([[4.0, 0.0], [0.0, 4.0]] * 4),
        ...                                   torch.tensor([0, 1] * 3 + [1, 0]))
        >>> bool(scaler.temperature > 1)            # a quarter are wrong: soften
        True
        >>> scaler.transform(torch.tensor([[4.0, 0.0]])).argmax(1).tolist()
        [0]
    """

    temperature: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.ones((), dtype=torch.float64))

    def fit(
        self, logits: Any, target: Any, *, sample_weight: Any = None, max_iter: int = 100
    ) -> TemperatureScaling:
        """Fit ``T`` on held-out ``logits`` (N, K, ...) and class indices ``target`` (N, ...).

        Args:
            logits: validation logits (not the training set's: those are over-fitted), any
                device and float dtype; or binary logits with 0/1 targets of the same shape.
            target: class indices (or 0/1 for binary logits).
            sample_weight: optional non-negative weight per target: a weighted mean NLL.
            max_iter: L-BFGS iterations (it converges in a few dozen).

        Returns:
            ``self``.
        """
        if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
            raise ValueError(f"max_iter is {max_iter!r}; expected a positive int")
        z, t, w, binary = _logits_and_target(logits, target, sample_weight)
        z = z.detach().to(torch.float64)
        # Masked classes (-inf) stay -inf without a gradient: -inf / T would give inf * 0 = NaN.
        masked = z == -math.inf
        finite = z.masked_fill(masked, 0.0)

        def nll(log_t: torch.Tensor) -> torch.Tensor:
            scaled = (finite / log_t.exp()).masked_fill(masked, -math.inf)
            if binary:
                per = F.binary_cross_entropy_with_logits(scaled, t, reduction="none")
            else:
                per = F.cross_entropy(scaled, t, reduction="none")
            return per.mean() if w is None else (per * w).sum() / w.sum()

        log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
        opt = torch.optim.LBFGS(
            [log_t],
            lr=1.0,
            max_iter=max_iter,
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nll(log_t)
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        value = log_t.detach().exp()
        if not bool(torch.isfinite(value)) or not bool(value > 0):
            raise ValueError(
                f"temperature scaling diverged (T = {float(value)}); the logits carry no "
                "information about the target (or predict it inversely)"
            )
        self.temperature = value.to(self.temperature.device)
        return self

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits / T`` in the logits' dtype and on their device (any shape)."""
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            raise TypeError(
                f"logits is {type(logits).__name__}"
                + (f" of dtype {logits.dtype}" if isinstance(logits, torch.Tensor) else "")
                + "; expected a floating-point tensor"
            )
        return logits / self.temperature.to(logits.device, logits.dtype)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.transform(logits)

    def extra_repr(self) -> str:
        return f"temperature={float(self.temperature):.4g}"


# ---------------------------------------------------------------------- a cost-weighted model's lean
def _positive_scalar(v: Any, name: str) -> float:
    t = to_tensor(v, name)
    if t.numel() != 1:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)}; expected a scalar for binary (N,) probabilities"
        )
    f = float(t.reshape(()))
    if not f > 0 or f == float("inf"):
        raise ValueError(f"{name} is {f}; expected a finite weight > 0")
    return f


def unweight_probabilities(probs: Any, fn_weight: Any, fp_weight: Any = None) -> torch.Tensor:
    """Undo the lean of a cost-weighted model: recover calibrated probabilities ``p`` from its ``q``.

    A model trained with RWWCE does not learn ``p`` but the loss minimiser ``q``:

    * binary, ``fn * y * softplus(-z) + fp * (1 - y) * softplus(z)``:
      ``q = fn p / (fn p + fp (1 - p))``, inverted as ``p = fp q / (fp q + fn (1 - q))``;
    * multi-class with FN weights only (class-weighted cross-entropy): ``q_k ∝ fn_k p_k``,
      inverted as ``p_k ∝ q_k / fn_k``;
    * two-class softmax with an FP term: the same with ``fn_k + FP[k, 1 - k]`` in place of ``fn_k``.

    A general multi-class FP term has no closed-form inverse (NotImplementedError).

    Args:
        probs: (N,) binary probabilities of the positive class (``sigmoid`` output), or (N, K)
            class probabilities (``softmax`` output).
        fn_weight: binary: a positive scalar; multi-class: (K,) positive weights or a diagonal
            (K, K) matrix.
        fp_weight: binary: a positive scalar, ``None`` meaning 1.0; multi-class: ``None`` (or all
            zeros); for K == 2 also (K,) or (K, K) with a zero diagonal.

    Returns:
        Probabilities of ``probs``' shape, dtype and device.

    Example::

        >>> q = torch.tensor([0.5])        # a model trained with fn=3, fp=1 says 0.5 ...
        >>> unweight_probabilities(q, 3.0, 1.0)    # ... which means p = 1/4
        tensor([0.2500])
    """
    q = to_tensor(probs, "probs")
    if not q.is_floating_point():
        raise TypeError(f"probs has dtype {q.dtype}; expected floating-point probabilities")
    work = torch.promote_types(q.dtype, torch.float32)
    if q.ndim == 1:
        fn = _positive_scalar(fn_weight, "fn_weight")
        fp = 1.0 if fp_weight is None else _positive_scalar(fp_weight, "fp_weight")
        qq = _costmath.probabilities(q, "probs", 2)[:, 1].to(work)
        p = fp * qq / (fp * qq + fn * (1.0 - qq))
        return p.to(q.dtype)
    if q.ndim != 2:
        raise ValueError(
            f"probs has shape {tuple(q.shape)}; expected (N,) binary or (N, K) class probabilities"
        )
    k = q.shape[1]
    qq = _costmath.probabilities(q, "probs", k).to(work)
    fn = to_tensor(fn_weight, "fn_weight").to(q.device, work)
    if fn.shape == (k, k):
        check_fn_matrix_diagonal(fn)
        fn = torch.diagonal(fn)
    if fn.shape != (k,):
        raise ValueError(
            f"fn_weight has shape {tuple(fn.shape)}; expected ({k},) to match probs of shape "
            f"{tuple(q.shape)}"
        )
    if not bool(torch.isfinite(fn).all()) or not bool((fn > 0).all()):
        raise ValueError(
            f"fn_weight is {fn.tolist()}; expected finite weights > 0 (a class with weight 0 is "
            "never learned, so its probability cannot be recovered)"
        )
    w = fn
    if fp_weight is not None:
        fp = to_tensor(fp_weight, "fp_weight").to(q.device, work)
        if fp.shape == (k,):
            fp = fp.expand(k, k) * (1 - torch.eye(k, device=q.device, dtype=work))
        if fp.shape != (k, k):
            raise ValueError(
                f"fp_weight has shape {tuple(fp.shape)}; expected None, ({k},) or ({k}, {k})"
            )
        if bool(fp.any()):
            if k != 2:
                raise NotImplementedError(
                    f"unweight_probabilities: a {k}-class model trained with an FP term has no "
                    "closed-form inverse (its loss minimiser solves a non-linear system); it can "
                    "be inverted exactly only for binary / 2-class models or with fp_weight=None"
                )
            # 2 classes: 1 - q_j is the other class's probability, so the FP term folds into fn.
            w = fn + fp.sum(dim=1)
    p = qq / w
    p = p / p.sum(dim=1, keepdim=True)
    return p.to(q.dtype)


# ---------------------------------------------------------------------- calibration error
def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise ValueError(f"n_bins is {n_bins!r}; expected a positive int")
    return int(n_bins)


def calibration_bins(
    probs: Any, target: Any, n_bins: int = 15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-label reliability bins: ``(accuracy, confidence, count)``, each of shape (n_bins + 1,).

    Bin ``b < n_bins`` holds confidences in ``[b / n_bins, (b + 1) / n_bins)``; the last entry
    holds confidences of exactly 1 (torchmetrics' binning, which this reproduces: confidences
    are binned by their float32 value; the means are float64). ``accuracy`` and ``confidence`` are float64 means (0 for an empty
    bin), ``count`` the number of samples.

    Args:
        probs: (N, K) class probabilities, or (N,) probabilities of the positive class.
        target: (N,) class indices (0/1 for binary).
        n_bins: the number of equal-width bins in [0, 1].
    """
    n_bins = _check_n_bins(n_bins)
    raw = to_tensor(probs, "probs")
    k = 2 if raw.ndim == 1 else (raw.shape[1] if raw.ndim == 2 else 0)
    if k < 2:
        raise ValueError(
            f"probs has shape {tuple(raw.shape)}; expected (N, K) class probabilities with "
            "K >= 2 or (N,) probabilities of the positive class"
        )
    p = _costmath.probabilities(raw, "probs", k)
    t = _costmath.class_indices(target, "target", k, device=p.device)
    if t.shape != p.shape[:1]:
        raise ValueError(
            f"target has shape {tuple(t.shape)}; expected ({p.shape[0]},) to match probs of "
            f"shape {tuple(raw.shape)}"
        )
    confidence, predicted = p.max(dim=1)
    correct = (predicted == t).to(torch.float64)
    c32 = confidence.float()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32, device=p.device)
    index = torch.bucketize(c32, edges, right=True) - 1
    count = torch.zeros(n_bins + 1, dtype=torch.float64, device=p.device)
    count.index_add_(0, index, torch.ones_like(correct))
    acc = torch.zeros_like(count).index_add_(0, index, correct)
    conf = torch.zeros_like(count).index_add_(0, index, confidence.to(torch.float64))
    safe = count.clamp(min=1)
    return acc / safe, conf / safe, count.to(torch.int64)


def expected_calibration_error(probs: Any, target: Any, n_bins: int = 15) -> torch.Tensor:
    """Top-label expected calibration error with equal-width bins.

    ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` over the bins of
    :func:`calibration_bins`: the same number as torchmetrics'
    ``multiclass_calibration_error(probs, target, num_classes=K, n_bins=n_bins, norm="l1")``.
    For (N,) binary probabilities it is the top-label ECE of ``[1 - p, p]`` (torchmetrics'
    ``binary_calibration_error`` bins ``p`` itself instead).

    Args:
        probs: (N, K) class probabilities (rows summing to 1), or (N,) probabilities of the
            positive class; tensors on any device, arrays or lists.
        target: (N,) class indices.
        n_bins: number of equal-width confidence bins. Default 15 (as Guo et al. and
            torchmetrics).

    Returns:
        A 0-dim float64 tensor in [0, 1] on ``probs``' device.

    Example::

        >>> float(expected_calibration_error([[0.9, 0.1], [0.8, 0.2]], [0, 1], n_bins=10))
        0.45
    """
    acc, conf, count = calibration_bins(probs, target, n_bins)
    if int(count.sum()) == 0:
        raise ValueError("probs is empty; expected at least one sample")
    return (count.to(acc.dtype) * (acc - conf).abs()).sum() / count.sum()


def plot_reliability_diagram(
    probs: Any,
    target: Any,
    n_bins: int = 15,
    *,
    ax: Any = None,
    path: str | os.PathLike[str] | None = None,
    label: str | None = None,
) -> Any:
    """Draw a reliability diagram: accuracy against confidence per bin, with the diagonal.

    Bars show each bin's accuracy at its mean confidence (their width is the bin's); the title
    carries the ECE. Needs matplotlib (``pip install 'rwwce[experiments]'``).

    Args:
        probs, target, n_bins: as in :func:`expected_calibration_error`.
        ax: a matplotlib ``Axes`` to draw into (several calls on one ``ax`` overlay models);
            default a new figure (``matplotlib.figure.Figure``, no pyplot, no backend change).
        path: if given, the figure is saved there atomically (format from the suffix).
        label: legend label for this model.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    require("matplotlib", "plot_reliability_diagram")
    from rwwce._io import save_figure
    from rwwce._plotting import check_figure_path, new_figure

    if path is not None:
        check_figure_path(path)
    acc, conf, count = calibration_bins(probs, target, n_bins)
    ece = float((count * (acc - conf).abs()).sum() / count.sum().clamp(min=1))
    if ax is None:
        fig, ax = new_figure(1, 1, (4.2, 4.2))
    fig = ax.figure
    width = 1.0 / _check_n_bins(n_bins)
    used = (count > 0).cpu()
    x, y = conf.cpu()[used].numpy(), acc.cpu()[used].numpy()
    text = f"{label + ': ' if label else ''}ECE {ece:.3f}"
    ax.bar(x, y, width=width, alpha=0.6, edgecolor="black", linewidth=0.5, label=text)
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability diagram")
    ax.legend(loc="upper left")
    if path is not None:
        save_figure(fig, path)
    return fig
