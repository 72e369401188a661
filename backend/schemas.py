"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# ---------------------------------------------------------------- jobs

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainParams(Strict):
    """Train a model from a preset; `model` and `train` override fields of its ModelConfig/TrainConfig."""

    name: str | None = Field(None, description="unique model name (default: derived from the job id)")
    preset: Literal["test", "small"] = "small"
    dense: bool = False
    steps: int | None = Field(None, ge=1)
    corpus: str | None = Field(
        None, description="a folder name under CIRCUITS_DATA_DIR/corpora (default: the stdlib)"
    )
    model: dict[str, Any] = Field(default_factory=dict, description="ModelConfig overrides")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides")

    @field_validator("name", "corpus")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and not NAME_RE.match(v):
            raise ValueError("use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
        return v

    @field_validator("train")
    @classmethod
    def _no_corpus_path(cls, v: dict) -> dict:
        if "corpus" in v:
            raise ValueError("set the corpus with the top-level `corpus` field (a folder under data_dir)")
        return v


class ProfileParams(Strict):
    """Per-node statistics and activation examples of a trained model over a corpus sample."""

    model_id: int = Field(ge=1, le=2**31 - 1)
    tokens: int = Field(65_536, ge=1024, description="corpus tokens to run through the model")
    examples_per_bin: int = Field(5, ge=1, le=20)
    context: int = Field(12, ge=0, le=64, description="tokens of context on each side of an example")
    seed: int = Field(0, ge=0, le=2**32 - 1)


class PruneParams(Strict):
    """Prune a model to the smallest circuit that does a task (PruneConfig fields, bounded)."""

    model_id: int = Field(ge=1, le=2**31 - 1)
    task: str = Field(min_length=1, max_length=128)
    target_loss: float = Field(0.15, gt=0, le=10)
    runs: int = Field(4, ge=1)
    steps: int = Field(150, ge=1)
    k_coef: float | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0)
    batch_pairs: int | None = Field(None, ge=1, le=4096)
    eval_pairs: int | None = Field(None, ge=1, le=4096)
    curve_points: int | None = Field(None, ge=2, le=64)
    curve_pairs: int | None = Field(None, ge=1, le=4096)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    validate_circuit: bool = Field(False, description="also run the controls (random, shuffled labels)")


class TrainJob(Strict):
    kind: Literal["train"]
    params: TrainParams = Field(default_factory=TrainParams)


class ProfileJob(Strict):
    kind: Literal["profile"]
    params: ProfileParams


class PruneJob(Strict):
    kind: Literal["prune"]
    params: PruneParams


JobCreate = Annotated[TrainJob | ProfileJob | PruneJob, Field(discriminator="kind")]
PARAMS_BY_KIND: dict[str, type[Strict]] = {
    "train": TrainParams,
    "profile": ProfileParams,
    "prune": PruneParams,
}

JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobKindName = Literal["train", "profile", "prune"]


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    params: dict
    status: JobStatusName
    progress: float = Field(description="0..1")
    stage: str
    message: str
    error: str | None
    attempts: int
    result: dict = Field(description="references to what the job made, e.g. {model_id} or {circuit_id}")
    cancel_requested: bool
    stalled: bool = Field(False, description="running, but its worker has not reported for a while")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None


class JobList(BaseModel):
    items: list[JobRead]
    total: int
    limit: int
    offset: int


class ErrorBody(BaseModel):
    detail: str
