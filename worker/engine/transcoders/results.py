"""The figures of a sweep as typed records: what sweep.json holds and the API serves."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class LayerReference(BaseModel):
    layer: int
    zero_ablated_ce: float = Field(description="validation CE with this layer's MLP output set to 0")
    mean_ablated_ce: float = Field(description="... set to its mean over training tokens")


class Reference(BaseModel):
    clean_ce: float = Field(description="the model's validation CE")
    clean_ce_batches: list[float] = Field(default_factory=list, description="the same per validation batch")
    layers: list[LayerReference]


class SweepPoint(BaseModel):
    kind: Literal["transcoder", "sae"]
    l1: float
    l1_index: int
    layer: int
    l0: float = Field(description="mean active latents per token (validation)")
    ce: float = Field(description="the model's validation CE with this layer's MLP replaced")
    ce_batches: list[float] = Field(default_factory=list, description="the same per validation batch")
    fvu: float = Field(description="fraction of the MLP output's variance unexplained")
    dead_fraction: float = Field(description="latents never active on the validation tokens")


class MatchedRow(BaseModel):
    """One transcoder (setting, layer) against the SAE of its layer interpolated at its L0."""

    layer: int
    l1: float
    l1_index: int
    l0: float
    transcoder_ce: float
    sae_ce: float | None = Field(description="the SAE's CE at the transcoder's L0 (None: no SAE)")
    extrapolated: bool | None = Field(description="the L0 lies outside the SAEs' range")
    delta: float | None = Field(description="SAE CE - transcoder CE: positive, the transcoder is better")
    delta_se: float | None = Field(description="standard error of delta over validation batches")
    delta_batches: list[float] | None = None


class MatchedSetting(BaseModel):
    """One L1 setting: the mean over layers of delta."""

    l1_index: int
    l1: float
    mean_l0: float
    mean_delta: float
    mean_delta_se: float | None
    transcoder_better: bool = Field(description="mean_delta >= 0")
    layers_better: int
    layers: int
    extrapolated: bool


class Matched(BaseModel):
    """Transcoder vs SAE at matched L0 (SAE CE interpolated linearly in log L0)."""

    rows: list[MatchedRow] = Field(default_factory=list)
    settings: list[MatchedSetting] = Field(default_factory=list)
    transcoder_better_settings: int = 0
