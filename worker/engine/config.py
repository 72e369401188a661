"""Configuration objects for the engine. Every feature of the model and of training is a switch here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Where AbsTopK can act: the 8 node sites of a layer (sites.LAYER_SITES), and the residual stream after
# each sublayer's write (the released code's `resid_post_attn` / `resid_post_mlp`).
TopkLocation = Literal[
    "attn.act_in",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.resid_delta",
    "mlp.act_in",
    "mlp.post_act",
    "mlp.resid_delta",
    "resid_post_attn",
    "resid_post_mlp",
]
# Every config rejects NaN and infinity, and every number has both bounds (the API checks that).
CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)
SEED_MAX = 2**32 - 1  # numpy and torch generators both take it


class ModelConfig(BaseModel):
    """Shape and feature switches of the (sparse or dense) GPT."""

    model_config = CONFIG

    vocab_size: int = Field(2048, ge=16, le=65536)
    n_ctx: int = Field(128, ge=4, le=4096)
    d_model: int = Field(256, ge=8, le=8192)
    n_layer: int = Field(4, ge=1, le=64)
    d_head: int = Field(16, ge=1, le=8192)
    mlp_ratio: int = Field(4, ge=1, le=64)
    act_frac: float | None = Field(0.25, gt=0, le=1)  # AbsTopK keep fraction; None = off
    attn_sink: bool = True
    bigram_table: bool = True
    pos_emb: bool = False
    bias: bool = True
    # Switches the released openai/circuit_sparsity models need (worker/engine/openai_format.py); the
    # defaults are this project's own architecture.
    head_count: int | None = Field(None, ge=1, le=4096)  # None: d_model // d_head (q/k/v width = d_model)
    mlp_width: int | None = Field(None, ge=1, le=262_144)  # None: mlp_ratio * d_model
    norm: Literal["rms", "layer"] = "rms"
    norm_bias: bool = False  # a LayerNorm's bias
    norm_eps: float | None = Field(1e-6, ge=0, le=0.1)  # None: the activation dtype's machine epsilon
    activation: Literal["gelu", "relu"] = "gelu"
    resid_activation: Literal["identity", "relu"] = "identity"  # applied to the residual after each write
    topk_at: list[TopkLocation] | None = Field(None, max_length=10)  # None: the 8 node sites
    tied_unembed: bool = False  # lm_head.weight is wte.weight
    logits_bias: bool | None = None  # a bias on the unembedding; None: as `bias`

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.head_count is None and self.d_model % self.d_head:
            raise ValueError(f"d_model {self.d_model} is not a multiple of d_head {self.d_head}")
        return self

    @property
    def n_head(self) -> int:
        return self.head_count or self.d_model // self.d_head

    @property
    def d_attn(self) -> int:
        """Width of q, k and v: all heads side by side."""
        return self.n_head * self.d_head

    @property
    def d_mlp(self) -> int:
        return self.mlp_width or self.mlp_ratio * self.d_model


class TrainConfig(BaseModel):
    """Optimisation, sparsity schedule and data settings (PAPERS.md section 2)."""

    model_config = CONFIG

    steps: int = Field(2000, ge=1, le=10_000_000)
    batch_size: int = Field(32, ge=1, le=65_536)
    lr: float = Field(4e-3, gt=0, le=10)  # LR once fully sparse; the sharkfin factor scales it down before
    warmup_frac: float = Field(0.01, ge=0, lt=1)
    dense: bool = False
    weight_density: float = Field(1 / 16, gt=0, le=1)  # kept fraction of every weight matrix
    embed_density: float = Field(0.5, gt=0, le=1)  # embeddings, unembedding and biases
    min_per_neuron: int = Field(4, ge=0, le=1024)
    anneal_start: float = Field(0.01, ge=0, le=1)
    anneal_end: float = Field(0.5, ge=0, le=1)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    adam_eps: float = Field(0.1, gt=0, le=10)
    weight_decay: float = Field(0.1, ge=0, le=10)
    grad_rms_norm: bool = True
    # The bigram table gets its own Adam group (plain eps, outside the gradient RMS normalisation);
    # False = as the paper's code, one group for everything.
    bigram_own_scale: bool = True
    bf16: bool = False
    seed: int = Field(0, ge=0, le=SEED_MAX)
    corpus: str | None = None  # None = the running interpreter's standard library
    max_corpus_bytes: int | None = Field(None, ge=1, le=10**12)
    val_percent: float = Field(10.0, gt=0, lt=100)
    eval_every: int = Field(100, ge=1, le=10_000_000)
    eval_batches: int = Field(8, ge=1, le=1024)
    checkpoint_every: int = Field(250, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _anneal_order(self) -> TrainConfig:
        if self.anneal_end < self.anneal_start:
            raise ValueError("anneal_end must not be before anneal_start")
        return self


class DenseFingerprint(BaseModel):
    """What identifies the dense model that bridges or transcoders were trained against, and where it
    was then (see checkpoints.fingerprint and checkpoints.check_dense)."""

    model_config = CONFIG

    path: str  # the model's folder when it was fingerprinted
    d_model: int
    n_layer: int
    n_ctx: int | None = None  # None: not recorded (transcoder folders written before the two merged)
    vocab_size: int
    tokenizer_sha256: str
    weights_sha256: str


class BridgeConfig(BaseModel):
    """Bridges between a frozen dense model and the sparse model trained jointly with them
    (PAPERS.md section 5); see worker/engine/bridges.py."""

    model_config = CONFIG

    dense: DenseFingerprint
    encoder_k_frac: float = Field(0.25, gt=0, le=1)  # AbsTopK keep fraction of the encoder's output
    nmse_coef: float = Field(1.0, ge=0)  # weight of the mean encoder + decoder NMSE over locations
    kl_coef: float = Field(1.0, ge=0)  # weight of each direction's hybrid-pass KL
    hybrid_sites_per_step: int = Field(1, ge=0)  # locations sampled per step and direction; 0 = all
    hybrid_batch_frac: float = Field(0.5, gt=0, le=1)  # share of the batch's sequences the hybrids see

    @model_validator(mode="before")
    @classmethod
    def _path_inside_fingerprint(cls, data):
        """Configs written before the fingerprint held the path kept it beside it, as `dense_path`."""
        if isinstance(data, dict) and "dense_path" in data:
            data = dict(data)
            data["dense"] = {"path": data.pop("dense_path"), **data.get("dense", {})}
        return data


class RunConfig(BaseModel):
    """What gets written to config.json beside a checkpoint."""

    model_config = CONFIG

    format_version: int = 1
    model: ModelConfig
    train: TrainConfig
    bridge: BridgeConfig | None = None  # set for a sparse model trained with bridges to a dense one
    imported_from: str | None = Field(None, max_length=1024)  # e.g. "openai/circuit_sparsity: DIR"


PRESETS: dict[str, RunConfig] = {
    # Trains in seconds; used by the test suite.
    "test": RunConfig(
        model=ModelConfig(vocab_size=1024, n_ctx=64, d_model=64, n_layer=2),
        train=TrainConfig(
            steps=200,
            batch_size=16,
            lr=1e-2,
            weight_density=1 / 4,
            max_corpus_bytes=1_000_000,
            eval_every=50,
            eval_batches=2,
            checkpoint_every=50,
        ),
    ),
    # The app's default model: shape chosen by measurement (see README, "The small preset").
    "small": RunConfig(
        model=ModelConfig(vocab_size=2048, n_ctx=128, d_model=128, n_layer=2),
        train=TrainConfig(steps=2400, batch_size=32, lr=1e-2, weight_density=1 / 8, eval_every=200),
    ),
    # The longer default run: the `small` recipe for twice the steps (README, "Presets").
    "small-long": RunConfig(
        model=ModelConfig(vocab_size=2048, n_ctx=128, d_model=128, n_layer=2),
        train=TrainConfig(steps=4800, batch_size=32, lr=1e-2, weight_density=1 / 8, eval_every=400),
    ),
}


# Dense baselines of a preset: the same run without weight sparsity, at a dense model's learning rate
# (sparse models need a larger one, PAPERS.md section 2).
DENSE_OVERRIDES: dict[str, dict] = {"small": {"lr": 4e-3}, "small-long": {"lr": 4e-3}}


def preset(name: str, *, dense: bool = False, steps: int | None = None) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    run = PRESETS[name].model_copy(deep=True)
    updates = {"dense": dense, **(DENSE_OVERRIDES.get(name, {}) if dense else {})}
    if steps is not None:
        updates["steps"] = steps
    run.train = TrainConfig.model_validate({**run.train.model_dump(), **updates})
    return run
