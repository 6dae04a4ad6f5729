"""Independent float64 oracles for the RWWCE math (no code shared with the package)."""

import torch


def rwwce_float64(logits, soft_target, fn, fp_matrix):
    """Per-row loss in float64 from the definition, with log(1 - p_j) taken as
    logsumexp(z without j) - logsumexp(z): exact even for huge logit gaps.

    logits (M, K), soft_target (M, K), fn (K,), fp_matrix (K, K) or None.
    """
    z = logits.double()
    y = soft_target.double()
    num_classes = z.shape[1]
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    loss = -((y * fn.double()) * (z - lse)).sum(dim=1)
    if fp_matrix is None:
        return loss
    log_not_p = torch.empty_like(z)
    for j in range(num_classes):
        others = torch.cat([z[:, :j], z[:, j + 1 :]], dim=1)
        log_not_p[:, j] = torch.logsumexp(others, dim=1) - lse[:, 0]
    w = y @ fp_matrix.double()
    return loss - (w * log_not_p).sum(dim=1)


def fp_as_matrix(fp, num_classes):
    """A (K,) FP vector v as the matrix FP[t, j] = v[j] (t != j), zero diagonal."""
    if fp is None or fp.dim() == 2:
        return fp
    return fp.expand(num_classes, num_classes) * (1 - torch.eye(num_classes, dtype=fp.dtype))


def smoothed_onehot(target, num_classes, smoothing=0.0):
    return torch.nn.functional.one_hot(target, num_classes).double() * (1 - smoothing) + (
        smoothing / num_classes
    )


def random_fp(kind, num_classes, dtype=torch.float32):
    """Test data: no FP term (``kind=None``), a (K,) ``"vector"`` or a (K, K) ``"matrix"`` with a
    zero diagonal, entries uniform in [0, 3)."""
    if kind is None:
        return None
    if kind == "vector":
        return torch.rand(num_classes, dtype=dtype) * 3
    fp = torch.rand(num_classes, num_classes, dtype=dtype) * 3
    fp.fill_diagonal_(0)
    return fp
