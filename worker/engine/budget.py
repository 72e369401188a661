"""What a run costs before it runs: parameter count, estimated peak memory and compute of a training run
(or of a forward/backward pass over a batch, as pruning does), from the full config. Estimates are
upper-bound-ish (fp32, every activation kept for backward, attention materialised as n_ctx²), so a cap
on them bounds what a job can ask of the machine."""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig, RunConfig

FLOAT = 4  # bytes: fp32 weights, gradients, Adam moments and activations
OPTIMIZER_COPIES = 5  # weight, gradient, Adam's two moments, the top-k projection's scratch copy
# Saved activations per token and layer, in units of d_model: the 8 sites before and after AbsTopK,
# the two residual norms, and the MLP's d_mlp-wide pre- and post-GELU.
SAVED_PER_LAYER = 2 * 8 + 2


@dataclass(frozen=True)
class Budget:
    params: int
    peak_bytes: int
    flops: float


def count_params(cfg: ModelConfig) -> int:
    """Parameters of the model, counted on the meta device (no memory allocated)."""
    import torch

    from .model import SparseGPT

    with torch.device("meta"):
        return sum(p.numel() for p in SparseGPT(cfg).parameters())


def activation_bytes(cfg: ModelConfig, sequences: int, backward: bool = True) -> int:
    """Peak activation memory of one pass over `sequences` full-length sequences."""
    tokens = sequences * cfg.n_ctx
    per_layer = SAVED_PER_LAYER * cfg.d_model + 3 * cfg.d_mlp
    # Attention scores, their softmax and its gradient: (batch, heads, n_ctx + sink, n_ctx + sink).
    attention = 3 * sequences * cfg.n_head * (cfg.n_ctx + 1) ** 2
    # Logits, the bigram table's addition, the softmax and its gradient: (tokens, vocab).
    logits = 4 * tokens * cfg.vocab_size
    kept = cfg.n_layer if backward else 1  # without backward only one layer's activations live at once
    return FLOAT * (kept * (tokens * per_layer + attention) + logits)


def pass_flops(cfg: ModelConfig, params: int, sequences: int, backward: bool = True) -> float:
    """Multiply-adds ×2 of one pass: the weights once per token, attention n_ctx² per head dimension."""
    tokens = sequences * cfg.n_ctx
    forward = 2 * params * tokens + 4 * cfg.n_layer * cfg.d_model * cfg.n_ctx * tokens
    return forward * (3 if backward else 1)


def pass_budget(cfg: ModelConfig, sequences: int, passes: int, backward: bool = True) -> Budget:
    """`passes` passes over batches of `sequences` sequences through a frozen model (pruning,
    profiling, evaluation): the weights once, no optimizer state."""
    params = count_params(cfg)
    peak = FLOAT * params * (2 if backward else 1) + activation_bytes(cfg, sequences, backward)
    return Budget(params, peak, passes * pass_flops(cfg, params, sequences, backward))


def train_budget(run: RunConfig) -> Budget:
    """A training run: weights with gradients and Adam state, one batch's activations, every step
    plus its evaluations."""
    cfg, train = run.model, run.train
    params = count_params(cfg)
    peak = FLOAT * OPTIMIZER_COPIES * params + activation_bytes(cfg, train.batch_size)
    evals = (train.steps // train.eval_every + 1) * 2 * train.eval_batches
    flops = train.steps * pass_flops(cfg, params, train.batch_size) + evals * pass_flops(
        cfg, params, train.batch_size, backward=False
    )
    return Budget(params, peak, flops)
