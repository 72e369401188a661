"""Weight sparsity (PAPERS.md section 2): top-k projection with a per-neuron minimum, and schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .kernels import cpu_float32, topk_project_cpu_, topk_threshold

# Matrices whose rows are a neuron's / channel's inputs, and whose columns are a channel's outputs.
ROW_MIN = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "fc_in.weight")
COL_MIN = ("o_proj.weight", "fc_out.weight")
EMBED_LIKE = ("wte.weight", "wpe.weight", "lm_head.weight")


@dataclass
class SparseParam:
    name: str
    param: nn.Parameter
    kind: str  # "weight" (matrices) or "embed" (embeddings, unembedding, biases)
    min_dim: int | None  # axis along which each slice must keep `min_per_neuron` entries


def sparse_params(model: nn.Module) -> list[SparseParam]:
    """Parameters that get a nonzero budget. Norm gains, attention sinks and the bigram table stay dense."""
    out = []
    for name, p in model.named_parameters():
        if name.endswith(ROW_MIN):
            out.append(SparseParam(name, p, "weight", 1))
        elif name.endswith(COL_MIN):
            out.append(SparseParam(name, p, "weight", 0))
        elif name.endswith(".bias") or name in EMBED_LIKE:
            out.append(SparseParam(name, p, "embed", None))
    return out


def target_nonzeros(sp: SparseParam, density: float, min_per_neuron: int) -> int:
    """Nonzero budget of a parameter; never below what the per-neuron minimum forces."""
    k = max(1, round(density * sp.param.numel()))
    if sp.min_dim is not None and min_per_neuron:
        forced = min(min_per_neuron, sp.param.shape[sp.min_dim]) * sp.param.shape[1 - sp.min_dim]
        k = max(k, forced)
    return min(k, sp.param.numel())


@torch.no_grad()
def topk_project_(w: torch.Tensor, k: int, min_per: int = 0, min_dim: int | None = None) -> None:
    """In place: keep the k largest |w|, but first the `min_per` largest of every slice along min_dim.
    Ties with the k-th largest (zeros, when fewer than k entries are nonzero) may keep a few more."""
    if k >= w.numel():
        return
    if cpu_float32(w) and w.is_contiguous():
        return topk_project_cpu_(w, k, min_per if min_dim is not None else 0, min_dim == 0)
    score = w.abs()
    if min_per and min_dim is not None:
        slices = score if min_dim == 1 else score.T
        forced = slices >= topk_threshold(slices, min(min_per, slices.shape[1]))
        slices.masked_fill_(forced, float("inf"))
    w.masked_fill_(score < topk_threshold(score.reshape(1, -1), k).view(()), 0.0)


def density_at(step: int, total: int, target: float, start: float = 0.01, end: float = 0.5) -> float:
    """L0 anneal: fully dense until `start`, linear in kept fraction down to `target` at `end`."""
    t = step / total
    if t <= start or target >= 1:
        return 1.0
    if t >= end:
        return target
    return 1.0 + (target - 1.0) * (t - start) / (end - start)


def lr_at(step: int, total: int, base_lr: float, warmup_frac: float, density: float, target: float) -> float:
    """Sharkfin: linear warmup, linear decay to 0, times sqrt(target L0 / current L0)."""
    warm = max(1, round(warmup_frac * total))
    if step < warm:
        shape = (step + 1) / warm
    else:
        shape = (total - step) / max(1, total - warm)
    return base_lr * shape * math.sqrt(target / density)


def project_model_(params: list[SparseParam], weight_density: float, embed_density: float, min_per: int):
    for sp in params:
        density = weight_density if sp.kind == "weight" else embed_density
        k = target_nonzeros(sp, density, min_per)
        topk_project_(sp.param.data, k, min_per if sp.kind == "weight" else 0, sp.min_dim)


def l0_fraction(params: list[SparseParam], kind: str = "weight") -> float:
    nz = sum(int((sp.param != 0).sum()) for sp in params if sp.kind == kind)
    total = sum(sp.param.numel() for sp in params if sp.kind == kind)
    return nz / max(1, total)
