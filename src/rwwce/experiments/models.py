"""G independent MLPs stored as stacked parameters and run as one batched model.

Layer l of model g has weight ``W[l][g]`` of shape (in, out) and bias ``b[l][g]`` of shape (1, out),
so a forward pass over a (G, B, in) batch is one ``torch.baddbmm`` per layer. Models never mix:
the output of model g depends only on its own parameters, so summing per-model losses gives every
model exactly its own gradient, and Adam (element-wise) on the stacked tensors is exactly G
separate Adams.

Initialisation matches ``torch.nn.Linear`` (U(-1/sqrt(in), 1/sqrt(in)) for weight and bias), drawn
per model from its own ``init_seed``, so model g is the same network whatever else is in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BatchedMLP", "init_mlp_params"]


def init_mlp_params(sizes: Sequence[int], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One model's (weight (in, out), bias (1, out)) per layer, like ``nn.Linear``'s default."""
    gen = torch.Generator().manual_seed(int(seed))
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand(fan_out, fan_in, generator=gen) * 2 - 1) * bound
        b = (torch.rand(fan_out, generator=gen) * 2 - 1) * bound
        layers.append((w.t().contiguous(), b.view(1, fan_out)))
    return layers


class BatchedMLP(nn.Module):
    """``G`` MLPs with layer sizes ``sizes`` (e.g. ``[64, 50, 20, 10]``), ReLU between layers.

    ``forward(x)`` takes (G, B, in) (one batch per model), (B, in) (the same batch for every
    model) or (S, B, in) with S dividing G (one batch per *stream* of m = G / S consecutive models)
    and returns (G, B, out); a final width of 1 is squeezed to (G, B).
    """

    def __init__(self, sizes: Sequence[int], seeds: Sequence[int]):
        super().__init__()
        self.sizes = list(sizes)
        per_model = [init_mlp_params(self.sizes, s) for s in seeds]
        self.weights = nn.ParameterList(
            [
                nn.Parameter(torch.stack([m[li][0] for m in per_model]))
                for li in range(len(sizes) - 1)
            ]
        )
        self.biases = nn.ParameterList(
            [
                nn.Parameter(torch.stack([m[li][1] for m in per_model]))
                for li in range(len(sizes) - 1)
            ]
        )

    @property
    def num_models(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_layers = len(self.weights)
        if x.dim() == 2:
            x = x.unsqueeze(0)
        g = self.num_models
        if g % x.shape[0]:
            raise ValueError(f"input has {x.shape[0]} streams, which does not divide {g} models")
        for layer, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if x.shape[0] != g:
                # Streams: each of the S batches feeds m = G / S models; one
                # (S, B, in) @ (S, in, m*out) bmm instead of m copies of each batch.
                s, bsz = x.shape[0], x.shape[1]
                _, fan_in, fan_out = w.shape
                m = g // s
                wr = (
                    w.view(s, m, fan_in, fan_out)
                    .permute(0, 2, 1, 3)
                    .reshape(s, fan_in, m * fan_out)
                )
                y = torch.bmm(x, wr).view(s, bsz, m, fan_out).permute(0, 2, 1, 3)
                x = y.reshape(g, bsz, fan_out) + b
            else:
                x = torch.baddbmm(b, x, w)
            if layer < n_layers - 1:
                x = torch.relu(x)
        return x.squeeze(-1) if x.shape[-1] == 1 else x

    def to_sequential(self, g: int) -> nn.Sequential:
        """Model ``g`` as a plain ``nn.Sequential`` of ``nn.Linear`` + ``nn.ReLU`` (a copy)."""
        mods: list[nn.Module] = []
        n_layers = len(self.weights)
        for layer, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            lin = nn.Linear(w.shape[1], w.shape[2])
            with torch.no_grad():
                lin.weight.copy_(w[g].t())
                lin.bias.copy_(b[g, 0])
            mods.append(lin)
            if layer < n_layers - 1:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods)

    def state_of(self, index: torch.Tensor) -> list[torch.Tensor]:
        """Detached copies of the parameters of the models in ``index`` (a 1-D long tensor)."""
        return [p.detach()[index].clone() for p in list(self.weights) + list(self.biases)]

    @classmethod
    def from_state(cls, sizes: Sequence[int], state: list[torch.Tensor]) -> BatchedMLP:
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.sizes = list(sizes)
        n = len(state) // 2
        model.weights = nn.ParameterList([nn.Parameter(t.clone()) for t in state[:n]])
        model.biases = nn.ParameterList([nn.Parameter(t.clone()) for t in state[n:]])
        return model
