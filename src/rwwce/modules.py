"""``nn.Module`` wrappers: the weights are buffers, ``forward`` is one call to the function."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from rwwce import _validate as V
from rwwce.functional import (
    binary_real_world_weight_cross_entropy,
    real_world_weight_cross_entropy,
)

__all__ = ["RWWCELoss", "BinaryRWWCELoss"]


def _weight_buffer(name: str, value: object) -> Tensor | None:
    """A float32 copy (float64 stays float64), checked once; the buffer then follows a device
    move (``.to(device)``, ``.cuda()``) but keeps its dtype (see :class:`_CostBuffers`)."""
    if value is None:
        return None
    given = value if isinstance(value, Tensor) else None
    dtype = torch.float64 if given is not None and given.dtype == torch.float64 else torch.float32
    device = given.device if given is not None else torch.device("cpu")
    tensor = V.as_tensor(name, value, device=device, dtype=dtype).detach().clone()
    V.check_weight_values(name, tensor)
    return tensor


class _CostBuffers(nn.Module):
    """Cost buffers that follow the module's device but never its dtype.

    The loss computes in float32 at least, so ``.half()`` / ``.bfloat16()`` / ``.to(dtype)`` on a
    parent model (mixed-precision recipes cast whole models) must not round the costs: float16
    turns a cost of 1e5 into inf and bfloat16 rounds 2001 to 2000. ``nn.Module._apply`` (behind
    ``.to()``, ``.half()``, ``.cuda()``, ...) gives one function for both changes, so each cost
    buffer is converted by it and, when that changed the dtype, copied again from the original
    onto the new device in its own dtype (float32, or float64 when given so).
    """

    _cost_buffer_names = ("fn_weight", "fp_weight")

    def _apply(self, fn, recurse=True):
        before = {
            name: self._buffers[name]
            for name in self._cost_buffer_names
            if self._buffers.get(name) is not None
        }
        super()._apply(fn, recurse)
        for name, original in before.items():
            converted = self._buffers[name]
            if converted is not None and converted.dtype != original.dtype:
                self._buffers[name] = original.to(device=converted.device)
        return self


class RWWCELoss(_CostBuffers):
    """Real-World-Weight Cross-Entropy as a module; see
    :func:`rwwce.real_world_weight_cross_entropy` for the formula, reductions and shapes.

    ``fn_weight`` and ``fp_weight`` are registered buffers: ``.to()``, ``.cuda()`` and
    ``state_dict()`` carry them. They stay float32 (float64 when given in float64) whatever the
    module's dtype: ``.half()``, ``.bfloat16()`` or ``.to(torch.float16)`` on a parent model
    move them but do not round the costs (the loss computes in float32 anyway). Their values are checked once, here. The data checks that read
    the input and target follow the function's rule: CPU tensors on every call; on an accelerator
    the first call only (so a training loop on a GPU does not synchronise after it).
    ``validate=True`` checks every call, ``validate=False`` never.

    Args:
        fn_weight: (K,) or (K, K) diagonal false-negative weights; default all ones.
        fp_weight: ``None``, (K,) or (K, K) false-positive weights with a zero diagonal.
        ignore_index, reduction, label_smoothing, input_type, validate, global_normalize,
        backend: as in the function.

    Example::

        >>> import torch, rwwce
        >>> costs = [[0, 1, 5], [1, 0, 1], [20, 1, 0]]   # C[truth, prediction]
        >>> criterion = rwwce.RWWCELoss.from_costs(costs)
        >>> loss = criterion(torch.randn(8, 3), torch.randint(0, 3, (8,)))
    """

    fn_weight: Tensor | None
    fp_weight: Tensor | None

    @V.torch_keywords(V.CROSS_ENTROPY_KEYWORDS)
    def __init__(
        self,
        fn_weight: Tensor | None = None,
        fp_weight: Tensor | None = None,
        *,
        ignore_index: int = -100,
        reduction: V.Reduction = "mean",
        label_smoothing: float = 0.0,
        input_type: V.InputType = "logits",
        validate: bool | None = None,
        global_normalize: bool = False,
        backend: V.Backend = "auto",
    ) -> None:
        super().__init__()
        V.check_choice("input_type", input_type, V.INPUT_TYPES)
        fn, fp = _multiclass_buffers(fn_weight, fp_weight, reduction, label_smoothing, backend)
        self.register_buffer("fn_weight", fn)
        self.register_buffer("fp_weight", fp)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.input_type = input_type
        self.validate = validate
        self.global_normalize = global_normalize
        self.backend = backend
        self._checked = False

    @classmethod
    def from_costs(cls, costs, **options) -> RWWCELoss:
        """From a cost matrix C[truth, prediction] (a :class:`rwwce.CostMatrix` or (K, K)
        array-like): fn[i] = min_{j != i} C[i, j] and FP = C - fn off the diagonal, so that the
        Real World Cost of every mistake is fn[i] + FP[i, j] = C[i, j]. The buffers are float64
        when ``costs`` is a float64 tensor or NumPy array, else float32."""
        from rwwce.costs import as_cost_matrix

        fn, fp = as_cost_matrix(costs).loss_weights(dtype=_given_dtype(costs))
        return cls(fn, fp, **options)

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        sample_weight: Tensor | None = None,
        sample_costs: Tensor | None = None,
    ) -> Tensor:
        """The loss of a batch; ``sample_costs`` (the input's shape) replaces the module's
        weights for this call (construct the module without ``fn_weight`` / ``fp_weight``)."""
        loss = real_world_weight_cross_entropy(
            input,
            target,
            self.fn_weight,
            self.fp_weight,
            sample_weight=sample_weight,
            sample_costs=sample_costs,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            input_type=self.input_type,
            validate=_data_check_mode(self),
            global_normalize=self.global_normalize,
            backend=self.backend,
        )
        _mark_checked(self)
        return loss

    def extra_repr(self) -> str:
        extra = []
        if self.input_type != "logits":
            extra.append(f"input_type={self.input_type!r}")
        if self.global_normalize:
            extra.append("global_normalize=True")
        return _multiclass_repr(self, extra)


class BinaryRWWCELoss(_CostBuffers):
    """Binary / multi-label Real-World-Weight Cross-Entropy as a module; see
    :func:`rwwce.binary_real_world_weight_cross_entropy`.

    Args:
        fn_weight: cost weight of a missed positive: a number or a tensor broadcastable to the
            input (per label). Default 1. Stored as a buffer.
        fp_weight: cost weight of a false alarm, likewise. Default 1.
        reduction, input_type, validate: as in the function.

    Example::

        >>> import torch, rwwce
        >>> criterion = rwwce.BinaryRWWCELoss(fn_weight=2000.0, fp_weight=100.0)
        >>> loss = criterion(torch.randn(16), torch.randint(0, 2, (16,)).float())
    """

    fn_weight: Tensor
    fp_weight: Tensor

    @V.torch_keywords(V.BINARY_KEYWORDS)
    def __init__(
        self,
        fn_weight: float | Tensor = 1.0,
        fp_weight: float | Tensor = 1.0,
        *,
        reduction: V.Reduction = "mean",
        input_type: V.InputType = "logits",
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        V.check_choice("reduction", reduction, V.REDUCTIONS)
        V.check_choice("input_type", input_type, V.INPUT_TYPES)
        self.register_buffer("fn_weight", _weight_buffer("fn_weight", fn_weight))
        self.register_buffer("fp_weight", _weight_buffer("fp_weight", fp_weight))
        self.reduction = reduction
        self.input_type = input_type
        self.validate = validate
        self._checked = False

    @classmethod
    def from_costs(cls, costs, **options) -> BinaryRWWCELoss:
        """From a 2 x 2 cost matrix C[truth, prediction]: fn = C[1, 0], fp = C[0, 1] (float64
        buffers for a float64 tensor or NumPy array, else float32)."""
        from rwwce.costs import as_cost_matrix

        c_fn, c_fp = as_cost_matrix(costs).binary_weights()
        dtype = _given_dtype(costs)
        return cls(torch.tensor(c_fn, dtype=dtype), torch.tensor(c_fp, dtype=dtype), **options)

    def forward(self, input: Tensor, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        loss = binary_real_world_weight_cross_entropy(
            input,
            target,
            self.fn_weight,
            self.fp_weight,
            sample_weight=sample_weight,
            reduction=self.reduction,
            input_type=self.input_type,
            validate=_data_check_mode(self),
        )
        _mark_checked(self)
        return loss

    def extra_repr(self) -> str:
        parts = [
            f"fn_weight={_describe(self.fn_weight)}",
            f"fp_weight={_describe(self.fp_weight)}",
            f"reduction={self.reduction!r}",
        ]
        if self.input_type != "logits":
            parts.append(f"input_type={self.input_type!r}")
        return ", ".join(parts)


def _given_dtype(costs: object) -> torch.dtype:
    """float64 for a float64 tensor or NumPy array of costs, else float32."""
    dtype = getattr(costs, "dtype", None)
    return torch.float64 if dtype in (torch.float64, np.float64) else torch.float32


def _data_check_mode(module: nn.Module) -> bool | None:
    """The function's rule (``None``: CPU every call, accelerator never), plus a check of the
    first call on an accelerator, unless the module's ``validate`` says otherwise. Under
    ``torch.compile`` the flag is not read (the function skips data checks there anyway), so
    that the compiled graph does not depend on it."""
    if module.validate is not None or torch.compiler.is_compiling():
        return module.validate
    return None if module._checked else True


def _mark_checked(module: nn.Module) -> None:
    """Remember the first call; not under ``torch.compile``, where flipping the flag would cost a
    recompilation."""
    if not torch.compiler.is_compiling():
        module._checked = True


def _multiclass_buffers(
    fn_weight: object, fp_weight: object, reduction: str, label_smoothing: float, backend: str
) -> tuple[Tensor | None, Tensor | None]:
    """The checks a multi-class loss module runs once, at construction, and its cost buffers:
    fn as (K,) (the paper's diagonal form reduced), fp as given."""
    V.check_choice("reduction", reduction, V.REDUCTIONS)
    V.check_choice("backend", backend, V.BACKENDS)
    V.check_label_smoothing(label_smoothing)
    fn = _weight_buffer("fn_weight", fn_weight)
    fp = _weight_buffer("fp_weight", fp_weight)
    if fn is not None:
        if fn.dim() not in (1, 2) or (fn.dim() == 2 and fn.shape[0] != fn.shape[1]):
            raise ValueError(f"fn_weight must have shape (K,) or (K, K); got {tuple(fn.shape)}")
        V.check_fn_matrix_diagonal(fn)
        fn = V.fn_weight_vector(fn, fn.shape[0]).clone()
    if fp is not None:
        if fp.dim() not in (1, 2) or (fp.dim() == 2 and fp.shape[0] != fp.shape[1]):
            raise ValueError(f"fp_weight must have shape (K,) or (K, K); got {tuple(fp.shape)}")
        V.check_fp_diagonal(fp)
    if fn is not None and fp is not None and fn.shape[0] != fp.shape[0]:
        raise ValueError(f"fn_weight has {fn.shape[0]} classes but fp_weight has {fp.shape[0]}")
    return fn, fp


def _multiclass_repr(module: nn.Module, extra: list[str]) -> str:
    """The options a multi-class loss module shows: weights, reduction, what differs from the
    defaults, then ``extra`` (the module's own options) and the backend."""
    parts = []
    if module.fn_weight is not None:
        parts.append(f"fn_weight={_describe(module.fn_weight)}")
    if module.fp_weight is not None:
        parts.append(f"fp_weight={_describe(module.fp_weight)}")
    parts.append(f"reduction={module.reduction!r}")
    if module.ignore_index != -100:
        parts.append(f"ignore_index={module.ignore_index}")
    if module.label_smoothing:
        parts.append(f"label_smoothing={module.label_smoothing}")
    parts.extend(extra)
    if module.backend != "auto":
        parts.append(f"backend={module.backend!r}")
    return ", ".join(parts)


def _describe(weight: Tensor) -> str:
    """Small weights in full (nested for a matrix), large ones by shape and range."""
    if weight.numel() == 1:
        return f"{weight.item():g}"
    if weight.numel() <= 16:

        def fmt(values):
            if isinstance(values, list):
                return "[" + ", ".join(fmt(v) for v in values) + "]"
            return f"{values:g}"

        return fmt(weight.tolist())
    return f"<{tuple(weight.shape)} in [{weight.min().item():g}, {weight.max().item():g}]>"


class LinearRWWCELoss(_CostBuffers):
    """Fused linear layer + Real-World-Weight Cross-Entropy as a module; see
    :func:`rwwce.linear_real_world_weight_cross_entropy` for the formula, memory and shapes.

    ``forward(input, linear_weight, target, linear_bias=None, sample_weight=None,
    sample_costs=None)`` takes the hidden states and the classifier's parameters (e.g.
    ``model.lm_head.weight``), so the (N, K) logits are never held; ``sample_costs`` (the
    target's shape plus (K,)) gives each row its own cost row, for a module built without
    ``fn_weight`` / ``fp_weight``. ``fn_weight`` and ``fp_weight`` are buffers, checked once
    here as in :class:`RWWCELoss`, and like its buffers they follow the module's device but keep
    float32 (float64 when given so) under a parent's ``.half()`` / ``.bfloat16()``. The data
    checks follow the same rule (CPU every call, an accelerator on the first call only).

    Args:
        fn_weight: (K,) or (K, K) diagonal false-negative weights; default all ones.
        fp_weight: ``None``, (K,) or (K, K) false-positive weights with a zero diagonal.
        ignore_index, reduction, label_smoothing, chunk_size, validate, backend: as in the
            function.

    Example::

        >>> import torch, rwwce
        >>> head = torch.nn.Linear(8, 100, bias=False)
        >>> fp = torch.zeros(100); fp[:3] = 10.0   # discourage classes 0, 1, 2
        >>> criterion = rwwce.LinearRWWCELoss(fp_weight=fp)
        >>> loss = criterion(torch.randn(4, 5, 8), head.weight, torch.randint(0, 100, (4, 5)))
    """

    fn_weight: Tensor | None
    fp_weight: Tensor | None

    @V.torch_keywords(V.CROSS_ENTROPY_KEYWORDS)
    def __init__(
        self,
        fn_weight: Tensor | None = None,
        fp_weight: Tensor | None = None,
        *,
        ignore_index: int = -100,
        reduction: V.Reduction = "mean",
        label_smoothing: float = 0.0,
        chunk_size: int | None = None,
        validate: bool | None = None,
        backend: V.Backend = "auto",
    ) -> None:
        super().__init__()
        fn, fp = _multiclass_buffers(fn_weight, fp_weight, reduction, label_smoothing, backend)
        V.check_chunk_size(chunk_size)
        self.register_buffer("fn_weight", fn)
        self.register_buffer("fp_weight", fp)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.chunk_size = chunk_size
        self.validate = validate
        self.backend = backend
        self._checked = False

    def forward(
        self,
        input: Tensor,
        linear_weight: Tensor,
        target: Tensor,
        linear_bias: Tensor | None = None,
        sample_weight: Tensor | None = None,
        sample_costs: Tensor | None = None,
    ) -> Tensor:
        from rwwce.linear import linear_real_world_weight_cross_entropy

        loss = linear_real_world_weight_cross_entropy(
            input,
            linear_weight,
            target,
            self.fn_weight,
            self.fp_weight,
            linear_bias=linear_bias,
            sample_weight=sample_weight,
            sample_costs=sample_costs,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            chunk_size=self.chunk_size,
            backend=self.backend,
            validate=_data_check_mode(self),
        )
        _mark_checked(self)
        return loss

    def extra_repr(self) -> str:
        extra = [] if self.chunk_size is None else [f"chunk_size={self.chunk_size}"]
        return _multiclass_repr(self, extra)
