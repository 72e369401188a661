"""The coders and a trained sweep of them.

A transcoder stands in for one MLP sublayer: z = ReLU(W_enc x + b_enc), y = W_dec z + b_dec, trained on
||y - MLP(x)||^2 + lambda * sum_j z_j ||W_dec[:, j]|| (the standard L1 penalty weighted by decoder
norms, so it cannot be dodged by shrinking z and growing W_dec). The SAE baseline is the same module with
the MLP's output as input and target. Both are trained in normalised units (input and target scaled so
that E||v||^2 = 1 over tokens, which makes lambda comparable across layers and between the two) and the
scales are folded into the saved weights, so a saved coder is exactly the formula above on raw values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator
from torch import nn

from ..config import CONFIG, SEED_MAX, DenseFingerprint

KINDS = ("transcoder", "sae")


class TranscoderConfig(BaseModel):
    """A sweep of transcoders (and SAEs) over every MLP layer of a model."""

    model_config = CONFIG

    # lambda in normalised units; on the small dense model 0.1 / 0.3 / 1 give L0 ~ 60 / 30 / 12 per layer
    l1: list[Annotated[float, Field(gt=0, le=1000)]] = Field(
        default_factory=lambda: [0.1, 0.3, 1.0], min_length=1, max_length=8
    )
    expansion: int = Field(1, ge=1, le=32)  # latent width = expansion * d_mlp
    steps: int = Field(1000, ge=1, le=10_000_000)
    batch_size: int = Field(16, ge=1, le=65_536)  # sequences of n_ctx tokens per step
    lr: float = Field(2e-3, gt=0, le=10)  # Adam; constant, then linear decay over the last 20 %
    l1_warmup: float = Field(0.05, ge=0, le=1)  # fraction of steps over which lambda ramps up from 0
    eval_batches: int = Field(16, ge=1, le=1024)  # validation batches of batch_size sequences
    sae: bool = True  # also train the SAE baseline
    selected: int | None = Field(
        None, ge=0, le=7
    )  # index into l1 of the transcoders behind features/circuits
    seed: int = Field(0, ge=0, le=SEED_MAX)

    @field_validator("l1")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(not (x > 0 and math.isfinite(x)) for x in v):
            raise ValueError("every L1 coefficient must be a positive number")
        return v

    def selected_index(self) -> int:
        i = len(self.l1) // 2 if self.selected is None else self.selected
        if i >= len(self.l1):
            raise ValueError(f"selected {i} is not an index into l1 ({len(self.l1)} values)")
        return i


class TranscoderRun(BaseModel):
    """config.json of a transcoder folder."""

    model_config = CONFIG

    format_version: int = 1
    config: TranscoderConfig
    dense: DenseFingerprint
    d_model: int
    width: int


@dataclass
class SparseCoder:
    """z = ReLU(W_enc x + b_enc), y = W_dec z + b_dec on raw values."""

    W_enc: torch.Tensor  # (width, d_in)
    b_enc: torch.Tensor  # (width,)
    W_dec: torch.Tensor  # (d_out, width)
    b_dec: torch.Tensor  # (d_out,)

    @property
    def width(self) -> int:
        return self.W_enc.shape[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x @ self.W_enc.T + self.b_enc)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec.T + self.b_dec

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{k}": getattr(self, k) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}


class CoderBank(nn.Module):
    """M independent coders of one shape in normalised units, trained with batched matmuls."""

    def __init__(self, M: int, d_in: int, width: int, d_out: int, g: torch.Generator):
        super().__init__()
        dec = torch.randn(M, width, d_out, generator=g)
        dec = 0.1 * dec / dec.norm(dim=-1, keepdim=True)
        enc = torch.randn(M, d_in, width, generator=g)
        self.W_enc = nn.Parameter(
            enc / enc.norm(dim=1, keepdim=True)
        )  # unit rows: pre-activations O(1/sqrt d)
        self.b_enc = nn.Parameter(torch.zeros(M, width))
        self.W_dec = nn.Parameter(dec)  # (M, width, d_out): row j is latent j's output direction
        self.b_dec = nn.Parameter(torch.zeros(M, d_out))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.relu(torch.baddbmm(self.b_enc[:, None], x, self.W_enc))
        return torch.baddbmm(self.b_dec[:, None], z, self.W_dec), z

    def export(self, m: int, in_scale: float, out_scale: float) -> SparseCoder:
        """Coder m on raw values: x_n = x / in_scale, y = out_scale * y_n."""
        return SparseCoder(
            W_enc=(self.W_enc[m].T / in_scale).detach().clone(),
            b_enc=self.b_enc[m].detach().clone(),
            W_dec=(out_scale * self.W_dec[m].T).detach().clone(),
            b_dec=(out_scale * self.b_dec[m]).detach().clone(),
        )


@dataclass
class Transcoders:
    """A trained sweep: coders[kind][l1 index][layer], the dense model it belongs to, its figures."""

    run: TranscoderRun
    coders: dict[str, list[list[SparseCoder]]]
    sweep: dict
    mlp_means: list[torch.Tensor] | None = None  # per layer, the MLP output's mean over training tokens

    @property
    def selected(self) -> list[SparseCoder]:
        """One transcoder per layer: the ones behind feature pages and circuits."""
        return self.coders["transcoder"][self.run.config.selected_index()]
