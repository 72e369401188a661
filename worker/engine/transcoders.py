"""Transcoders (and an SAE baseline) over the MLPs of a dense model, and attribution circuits between
their features (PAPERS.md section 6).

A transcoder stands in for one MLP sublayer: z = ReLU(W_enc x + b_enc), y = W_dec z + b_dec, trained on
||y - MLP(x)||^2 + lambda * sum_j z_j ||W_dec[:, j]|| (the standard L1 penalty weighted by decoder
norms, so it cannot be dodged by shrinking z and growing W_dec). The SAE baseline is the same module with
the MLP's output as input and target. Both are trained in normalised units (input and target scaled so
that E||v||^2 = 1 over tokens, which makes lambda comparable across layers and between the two) and the
scales are folded into the saved weights, so a saved coder is exactly the formula above on raw values.

What x is. Site `{l}.mlp.act_in` is the MLP's input *after* the model's AbsTopK. A transcoder reads the
residual stream after the MLP's RMSNorm but before that AbsTopK, i.e. it replaces the whole sublayer,
AbsTopK included. With a frozen RMSNorm scale a feature's effect on a later feature is then linear, and an
edge factors into activation x weight; through the AbsTopK the "weight" would depend on the input. Its
target is `{l}.mlp.resid_delta`, the sublayer's output.

Replacement inside the forward pass. `Replacement` gives the model site edits (model.Pass runs them in
forward order) that record the residual stream at `{l}.mlp.resid_in` and replace `{l}.mlp.resid_delta` by
a function of the MLP's live input: a transcoder's output, an SAE's reconstruction of the true output,
zeros or the mean. One pass, exact for any set of layers.

Fidelity is the model's next-token CE on validation tokens with one layer's MLP replaced; L0 is the mean
number of active latents per token. The sweep trains every lambda x layer x {transcoder, SAE} together
on the same stream of training tokens (one batched matmul); `matched_comparison` compares the two at
matched L0 by interpolating the SAE's CE linearly in log L0 at each transcoder's L0.

Attribution (`transcoder_circuit`). In the replacement model (every MLP replaced by its transcoder), at
any position feature i of layer l writes a_i W_dec_l[:, i] into the residual stream and feature j of a
later layer l' reads it through its RMSNorm, whose scale s_l' (input dependent) is frozen at its value
on the prompt. The edge is
    a_i * s_l' * [j active]  x  W_dec_l[:, i] . (g_l' * W_enc_l'[j, :])
    (activation factor)          (weight factor: input invariant; g = the norm's weight)
averaged over the task's prompts and their positions (`activation` is the mean of the first factor).
Paths through attention to other positions are not edges. A feature's importance (a node's `tau`) is its
effect on the task: on log sigmoid(logit difference), the logit difference being correct minus wrong
completion at the last position (so minus the per-prompt two-class CE), mean over prompts; activation x
gradient summed over positions, by autograd through the whole replacement model, i.e. the first-order
effect of switching the feature off, paths through attention included. Positive: the feature helps.
Pruning switches features off (zero at every position, like a pruned node), keeping those that carry the
task: a bisection on the number kept (largest |effect| first), then a greedy pass, while the replacement
model's task CE stays within `tolerance` of its CE with every feature.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from .checkpoints import (
    TOKENIZER,
    WEIGHTS,
    CheckpointError,
    _atomic_save_tensors,
    _load_tensors,
    atomic_write_text,
    file_sha256,
    load_model,
    read_config,
)
from .circuit import Circuit, Edge, Node
from .data import encode_documents, fixed_batches, load_corpus, sample_batch, split_corpus
from .model import SparseGPT, node_name, parse_node
from .tasks import TaskData
from .tasks.base import pair_labels, two_class_logits

KINDS = ("transcoder", "sae")
CONFIG, CODERS, SWEEP = "config.json", "transcoders.safetensors", "sweep.json"
ProgressFn = Callable[[float, str], None]


def feature_site(layer: int) -> str:
    """Where a layer's transcoder features live in the one naming scheme: `{l}.mlp.transcoder[j]`."""
    return f"{layer}.mlp.transcoder"


class TranscoderConfig(BaseModel):
    """A sweep of transcoders (and SAEs) over every MLP layer of a model."""

    model_config = ConfigDict(extra="forbid")

    # lambda in normalised units; on the small dense model 0.1 / 0.3 / 1 give L0 ~ 60 / 30 / 12 per layer
    l1: list[float] = Field(default_factory=lambda: [0.1, 0.3, 1.0], min_length=1, max_length=8)
    expansion: int = Field(1, ge=1, le=32)  # latent width = expansion * d_mlp
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(16, ge=1)  # sequences of n_ctx tokens per step
    lr: float = Field(2e-3, gt=0)  # Adam; constant, then linear decay over the last 20 %
    l1_warmup: float = Field(0.05, ge=0, le=1)  # fraction of steps over which lambda ramps up from 0
    eval_batches: int = Field(16, ge=1)  # validation batches of batch_size sequences
    sae: bool = True  # also train the SAE baseline
    selected: int | None = Field(None, ge=0)  # index into l1 of the transcoders behind features/circuits
    seed: int = 0

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


class DenseRef(BaseModel):
    """The model a transcoder folder was trained on: where it was, and what it was."""

    model_config = ConfigDict(extra="forbid")

    path: str
    weights_sha256: str
    tokenizer_sha256: str
    d_model: int
    n_layer: int
    vocab_size: int


class TranscoderRun(BaseModel):
    """config.json of a transcoder folder."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    config: TranscoderConfig
    dense: DenseRef
    d_model: int
    width: int


def dense_ref(folder: Path, model: SparseGPT) -> DenseRef:
    folder = Path(folder)
    return DenseRef(
        path=str(folder.resolve()),
        weights_sha256=file_sha256(folder / WEIGHTS),
        tokenizer_sha256=file_sha256(folder / TOKENIZER),
        d_model=model.cfg.d_model,
        n_layer=model.cfg.n_layer,
        vocab_size=model.cfg.vocab_size,
    )


def check_dense(expected: DenseRef, folder: Path) -> None:
    """A clear error unless `folder` holds the very model the transcoders were trained on."""
    folder = Path(folder)
    for name, want in ((WEIGHTS, expected.weights_sha256), (TOKENIZER, expected.tokenizer_sha256)):
        if not (folder / name).is_file():
            raise CheckpointError(
                f"{folder} holds no {name}; the transcoders need the model at {expected.path}"
            )
        if file_sha256(folder / name) != want:
            raise CheckpointError(
                f"{folder}/{name} is not the one the transcoders were trained on "
                f"(sha256 differs from {want[:12]}…, recorded from {expected.path})"
            )


# ---------------------------------------------------------------- the coders


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


# ---------------------------------------------------------------- MLP inputs, outputs and replacement


def mlp_io(model: SparseGPT, idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (the MLP's input as a transcoder reads it, the MLP's output), from one clean pass."""
    L = model.cfg.n_layer
    _, acts = model(idx, capture=[f"{i}.mlp.{s}" for i in range(L) for s in ("resid_in", "resid_delta")])
    return [
        (model.blocks[i].mlp.norm(acts[f"{i}.mlp.resid_in"]), acts[f"{i}.mlp.resid_delta"]) for i in range(L)
    ]


def norm_scale(norm: nn.Module, resid: torch.Tensor) -> torch.Tensor:
    """The input-dependent factor of RMSNorm: norm(r) = r * scale(r) * weight."""
    return torch.rsqrt(resid.pow(2).mean(-1, keepdim=True) + norm.eps)


ReplaceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (MLP input, true MLP output) -> output


class Replacement:
    """Site edits replacing the MLP output of some layers by a function of the MLP's live input (the
    norm of the residual stream at `{l}.mlp.resid_in`, recorded as the pass goes by) and its true output.
    Keeps each replaced layer's residual stream and MLP input of the last pass (for attribution)."""

    def __init__(self, model: SparseGPT, replace: dict[int, ReplaceFn]):
        self.model, self.replace = model, replace
        self.inputs: dict[int, torch.Tensor] = {}
        self.resid_in: dict[int, torch.Tensor] = {}

    def edits(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        out = {}
        for i in self.replace:
            out[f"{i}.mlp.resid_in"] = self._record(i)
            out[f"{i}.mlp.resid_delta"] = self._mlp(i)
        return out

    def _record(self, layer: int):
        def edit(resid):
            self.resid_in[layer] = resid
            self.inputs[layer] = self.model.blocks[layer].mlp.norm(resid)
            return resid

        return edit

    def _mlp(self, layer: int):
        return lambda y: self.replace[layer](self.inputs[layer], y)

    def __call__(self, idx: torch.Tensor, **kwargs):
        return self.model(idx, edits=self.edits(), **kwargs)


def coder_fn(kind: str, coder: SparseCoder) -> ReplaceFn:
    if kind == "transcoder":
        return lambda x, y: coder(x)
    return lambda x, y: coder(y)


# ---------------------------------------------------------------- training and evaluation


def _lr_factor(step: int, steps: int) -> float:
    decay_from = int(0.8 * steps)
    return 1.0 if step < decay_from else max(0.0, (steps - step) / max(1, steps - decay_from))


def _streams(run, tok):
    tc = run.train
    train_docs, val_docs = split_corpus(load_corpus(tc.corpus, tc.max_corpus_bytes), tc.val_percent)
    return encode_documents(tok, train_docs), encode_documents(tok, val_docs)


@torch.no_grad()
def evaluate_coders(
    model: SparseGPT,
    coders: dict[str, list[list[SparseCoder]]],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    means: list[torch.Tensor],
    l1: list[float],
    on_progress: ProgressFn | None = None,
) -> dict:
    """Validation figures: clean CE, CE with each layer's MLP zero- and mean-ablated, and per coder its
    L0, FVU, dead fraction and the CE with its layer's MLP replaced. Same batches for every variant."""
    report = on_progress or (lambda f, m: None)
    L = model.cfg.n_layer
    variants: dict[tuple, ReplaceFn] = {}
    for layer in range(L):
        variants[("zero", layer)] = lambda x, y: torch.zeros_like(y)
        variants[("mean", layer)] = lambda x, y, m=means[layer]: m.expand_as(y)
    for kind, per_l1 in coders.items():
        for i, per_layer in enumerate(per_l1):
            for layer, c in enumerate(per_layer):
                variants[(kind, i, layer)] = coder_fn(kind, c)
    ce: dict = {key: [] for key in variants} | {"clean": []}  # per batch: mean CE over its tokens
    n_tok = 0
    stats = {k: {"active": 0.0, "sse": 0.0, "fired": None} for k in variants if k[0] in KINDS}
    y_sum = [0.0] * L
    y_sq = [0.0] * L
    y_mean_sum = [torch.zeros(model.cfg.d_model) for _ in range(L)]
    for b, (x, y) in enumerate(batches):
        logits, _ = model(x)
        ce["clean"].append(F.cross_entropy(logits.flatten(0, 1), y.flatten()).item())
        io = mlp_io(model, x)
        for layer, (_, out) in enumerate(io):
            flat = out.flatten(0, 1)
            y_sq[layer] += float(flat.pow(2).sum())
            y_mean_sum[layer] += flat.sum(0)
            y_sum[layer] += flat.shape[0]
        for key, fn in variants.items():
            layer = key[-1]
            logits, _ = Replacement(model, {layer: fn})(x)
            ce[key].append(F.cross_entropy(logits.flatten(0, 1), y.flatten()).item())
            if key in stats:
                kind, i, _ = key
                c = coders[kind][i][layer]
                inp, out = io[layer]
                z = c.encode(inp if kind == "transcoder" else out)
                st = stats[key]
                st["active"] += float((z > 0).sum())
                st["sse"] += float((c.decode(z) - out).pow(2).sum())
                fired = (z > 0).flatten(0, 1).any(0)
                st["fired"] = fired if st["fired"] is None else st["fired"] | fired
        n_tok += y.numel()
        report((b + 1) / len(batches), f"evaluated {b + 1}/{len(batches)} validation batches")
    # Total variance of the MLP output about its mean: FVU = SSE / that.
    var = [y_sq[i] - float(y_mean_sum[i].pow(2).sum()) / y_sum[i] for i in range(L)]

    def mean(values: list[float]) -> float:  # batches are equally long: the mean over all tokens
        return sum(values) / len(values)

    reference = {
        "clean_ce": mean(ce["clean"]),
        "clean_ce_batches": ce["clean"],
        "layers": [
            {
                "layer": i,
                "zero_ablated_ce": mean(ce[("zero", i)]),
                "mean_ablated_ce": mean(ce[("mean", i)]),
            }
            for i in range(L)
        ],
    }
    points = []
    for key, st in stats.items():
        kind, i, layer = key
        points.append(
            {
                "kind": kind,
                "l1": l1[i],
                "l1_index": i,
                "layer": layer,
                "l0": st["active"] / n_tok,
                "ce": mean(ce[key]),
                "ce_batches": ce[key],
                "fvu": st["sse"] / max(var[layer], 1e-30),
                "dead_fraction": float((~st["fired"]).float().mean()),
            }
        )
    return {"reference": reference, "points": points, "tokens": n_tok}


def _segment(xs: list[float], x: float) -> tuple[int, float, bool]:
    """Linear interpolation through sorted xs: y(x) = (1 - t) y_k + t y_(k+1) on the segment holding x,
    outside their range the nearest segment's line. -> (k, t, extrapolated). One point: (0, 0, x != it)."""
    if len(xs) == 1:
        return 0, 0.0, x != xs[0]
    k = 0
    while k < len(xs) - 2 and x > xs[k + 1]:
        k += 1
    t = 0.0 if xs[k + 1] == xs[k] else (x - xs[k]) / (xs[k + 1] - xs[k])
    return k, t, not xs[0] <= x <= xs[-1]


def _at(ys: list[float], k: int, t: float) -> float:
    return ys[k] if len(ys) == 1 else (1 - t) * ys[k] + t * ys[k + 1]


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and its standard error (None from one value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def matched_comparison(points: list[dict]) -> dict:
    """Transcoder vs SAE at matched L0: for each transcoder (setting i, layer l), the SAE's CE of that
    layer interpolated linearly in log L0 at the transcoder's L0; delta = SAE CE - transcoder CE. Its
    standard error comes from the per-batch deltas (same validation batches for every variant, the
    interpolation weights fixed by the L0s over all batches). Per setting, the verdict is on the mean
    over layers of delta >= 0; per layer it is listed too."""
    rows = []
    for layer in sorted({p["layer"] for p in points}):
        sae = sorted(
            (p for p in points if p["kind"] == "sae" and p["layer"] == layer and p["l0"] > 0),
            key=lambda p: p["l0"],
        )
        xs = [math.log(p["l0"]) for p in sae]
        for p in points:
            if p["kind"] != "transcoder" or p["layer"] != layer:
                continue
            row = {"layer": layer, "l1": p["l1"], "l1_index": p["l1_index"], "l0": p["l0"]}
            row |= {"transcoder_ce": p["ce"], "sae_ce": None, "extrapolated": None, "delta": None}
            row |= {"delta_se": None, "delta_batches": None}
            if sae and p["l0"] > 0:
                k, t, extrapolated = _segment(xs, math.log(p["l0"]))
                sae_ce = _at([q["ce"] for q in sae], k, t)
                row |= {"sae_ce": sae_ce, "extrapolated": extrapolated, "delta": sae_ce - p["ce"]}
                if all("ce_batches" in q for q in [p, *sae]):
                    per_batch = [
                        _at([q["ce_batches"][b] for q in sae], k, t) - p["ce_batches"][b]
                        for b in range(len(p["ce_batches"]))
                    ]
                    row |= {"delta_batches": per_batch, "delta_se": _mean_se(per_batch)[1]}
            rows.append(row)
    settings = []
    for i in sorted({r["l1_index"] for r in rows}):
        mine = [r for r in rows if r["l1_index"] == i and r["delta"] is not None]
        if not mine:
            continue
        mean_delta = sum(r["delta"] for r in mine) / len(mine)
        se = None
        if all(r["delta_batches"] for r in mine):
            per_batch = [sum(b) / len(mine) for b in zip(*(r["delta_batches"] for r in mine), strict=True)]
            se = _mean_se(per_batch)[1]
        settings.append(
            {
                "l1_index": i,
                "l1": mine[0]["l1"],
                "mean_l0": sum(r["l0"] for r in mine) / len(mine),
                "mean_delta": mean_delta,
                "mean_delta_se": se,
                "transcoder_better": mean_delta >= 0,
                "layers_better": sum(r["delta"] >= 0 for r in mine),
                "layers": len(mine),
                "extrapolated": any(r["extrapolated"] for r in mine),
            }
        )
    return {
        "rows": rows,
        "settings": settings,
        "transcoder_better_settings": sum(s["transcoder_better"] for s in settings),
    }


def train_transcoders(
    model: SparseGPT,
    tok,
    run,
    cfg: TranscoderConfig,
    dense_folder: Path,
    out: Path | None = None,
    on_progress: ProgressFn | None = None,
) -> Transcoders:
    """Train the sweep on the model's training split, evaluate it on its validation split, and save it to
    `out` (config.json, transcoders.safetensors, sweep.json) when given."""
    report = on_progress or (lambda f, m: None)
    cfg.selected_index()  # fail early on a bad index
    model.eval().requires_grad_(False)
    device = next(model.parameters()).device
    mc = model.cfg
    L, d = mc.n_layer, mc.d_model
    width = cfg.expansion * mc.d_mlp
    kinds = ["transcoder"] + (["sae"] if cfg.sae else [])
    slots = [(k, i, layer) for k in kinds for i in range(len(cfg.l1)) for layer in range(L)]
    report(0.0, "encoding the corpus")
    train_stream, val_stream = _streams(run, tok)
    g = torch.Generator().manual_seed(cfg.seed)
    val_batches = [
        (x.to(device), y.to(device))
        for x, y in fixed_batches(val_stream, cfg.eval_batches, cfg.batch_size, mc.n_ctx, seed=cfg.seed + 1)
    ]

    def batch_io():
        x, _ = sample_batch(train_stream, cfg.batch_size, mc.n_ctx, g)
        with torch.no_grad():
            return [(a.flatten(0, 1), b.flatten(0, 1)) for a, b in mlp_io(model, x.to(device))]

    # Normalising scales (E||v||^2 = 1) and the MLP-output means (for mean ablation and b_dec's init).
    first = batch_io()
    in_scale = [float(x.pow(2).sum(-1).mean().sqrt()) for x, _ in first]
    out_scale = [float(y.pow(2).sum(-1).mean().sqrt()) for _, y in first]
    bank = CoderBank(len(slots), d, width, d, g).to(device)
    with torch.no_grad():
        for m, (_, _, layer) in enumerate(slots):
            bank.b_dec[m] = first[layer][1].mean(0) / out_scale[layer]
    lam = torch.tensor([cfg.l1[i] for _, i, _ in slots], device=device)
    opt = torch.optim.Adam(bank.parameters(), lr=cfg.lr)
    mean_sum = [torch.zeros(d, dtype=torch.float64, device=device) for _ in range(L)]
    n_mean = 0
    t0 = time.monotonic()
    history = []  # per logged step: normalised MSE and L0 of every coder (slot order)
    io = first
    for step in range(cfg.steps):
        if step:
            io = batch_io()
        xs = [x / in_scale[i] for i, (x, _) in enumerate(io)]
        ys = [y / out_scale[i] for i, (_, y) in enumerate(io)]
        for i, (_, y) in enumerate(io):
            mean_sum[i] += y.double().sum(0)
        n_mean += io[0][1].shape[0]
        inputs = torch.stack([xs[layer] if k == "transcoder" else ys[layer] for k, _, layer in slots])
        target = torch.stack([ys[layer] for _, _, layer in slots])
        recon, z = bank(inputs)
        mse = (recon - target).pow(2).sum(-1).mean(-1)
        l1 = (z * bank.W_dec.norm(dim=-1)[:, None, :]).sum(-1).mean(-1)
        ramp = min(1.0, (step + 1) / max(1.0, cfg.l1_warmup * cfg.steps))
        loss = (mse + ramp * lam * l1).sum()
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg.steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == 0 or (step + 1) % 25 == 0 or step + 1 == cfg.steps:
            l0 = float((z > 0).float().sum(-1).mean())
            history.append(
                {"step": step + 1, "mse": mse.tolist(), "l0": (z > 0).float().sum(-1).mean(-1).tolist()}
            )
            report(
                0.9 * (step + 1) / cfg.steps,
                f"step {step + 1}/{cfg.steps} mse {mse.mean().item():.3f} L0 {l0:.1f} "
                f"({(step + 1) * cfg.batch_size * mc.n_ctx / (time.monotonic() - t0):.0f} tok/s)",
            )
    coders: dict[str, list[list[SparseCoder]]] = {k: [[None] * L for _ in cfg.l1] for k in kinds}
    for m, (kind, i, layer) in enumerate(slots):
        src = in_scale[layer] if kind == "transcoder" else out_scale[layer]
        coders[kind][i][layer] = bank.export(m, src, out_scale[layer])
    means = [(s / n_mean).float() for s in mean_sum]
    figures = evaluate_coders(
        model, coders, val_batches, means, cfg.l1, lambda f, m: report(0.9 + 0.1 * f, m)
    )
    figures["matched"] = matched_comparison(figures["points"])
    figures["train_tokens"] = cfg.steps * cfg.batch_size * mc.n_ctx
    figures["slots"] = [{"kind": k, "l1_index": i, "layer": layer} for k, i, layer in slots]
    figures["history"] = history
    figures["seconds"] = time.monotonic() - t0
    tr = Transcoders(
        TranscoderRun(config=cfg, dense=dense_ref(dense_folder, model), d_model=d, width=width),
        coders,
        figures,
        means,
    )
    if out is not None:
        save_transcoders(out, tr)
    return tr


@torch.no_grad()
def evaluate_transcoders(
    tr: Transcoders, model: SparseGPT, tok, run, eval_batches: int | None = None, on_progress=None
) -> dict:
    """The validation figures of a trained sweep again (e.g. on more batches): replaces tr.sweep's
    reference, points and matched comparison and returns the sweep. MLP means (for the mean-ablation
    reference) come from the folder, or from 16 training batches for folders saved without them."""
    cfg = tr.run.config
    n = eval_batches or cfg.eval_batches
    train_stream, val_stream = _streams(run, tok)
    batches = fixed_batches(val_stream, n, cfg.batch_size, model.cfg.n_ctx, seed=cfg.seed + 1)
    means = tr.mlp_means
    if means is None:
        sums = [torch.zeros(model.cfg.d_model, dtype=torch.float64) for _ in range(model.cfg.n_layer)]
        count = 0
        for x, _ in fixed_batches(train_stream, 16, cfg.batch_size, model.cfg.n_ctx, seed=cfg.seed + 2):
            for i, (_, y) in enumerate(mlp_io(model, x)):
                sums[i] += y.double().sum((0, 1))
            count += x.numel()
        means = [(v / count).float() for v in sums]
    figures = evaluate_coders(model, tr.coders, batches, means, cfg.l1, on_progress)
    tr.sweep |= figures | {"matched": matched_comparison(figures["points"]), "eval_batches": n}
    return tr.sweep


def save_transcoders(folder: Path, tr: Transcoders) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for kind, per_l1 in tr.coders.items():
        for i, per_layer in enumerate(per_l1):
            for layer, c in enumerate(per_layer):
                tensors |= c.tensors(f"{kind}.{i}.{layer}")
    for layer, m in enumerate(tr.mlp_means or []):
        tensors[f"mlp_mean.{layer}"] = m
    _atomic_save_tensors(folder / CODERS, tensors, {"format": "sparse-circuits-transcoders/1"})
    atomic_write_text(folder / SWEEP, json.dumps(tr.sweep, indent=1))
    atomic_write_text(folder / CONFIG, tr.run.model_dump_json(indent=2))


def read_transcoder_run(folder: Path) -> TranscoderRun:
    return read_config(folder, TranscoderRun, "transcoder")


def read_transcoders(folder: Path, device="cpu") -> Transcoders:
    """A transcoder folder's coders, configuration and figures (without its dense model)."""
    folder = Path(folder)
    run = read_transcoder_run(folder)
    tensors, _ = _load_tensors(folder / CODERS)
    kinds = ["transcoder"] + (["sae"] if run.config.sae else [])
    parts = ("W_enc", "b_enc", "W_dec", "b_dec")
    try:
        coders = {
            kind: [
                [
                    SparseCoder(*(tensors[f"{kind}.{i}.{layer}.{p}"].to(device) for p in parts))
                    for layer in range(run.dense.n_layer)
                ]
                for i in range(len(run.config.l1))
            ]
            for kind in kinds
        }
    except KeyError as e:
        raise CheckpointError(f"{folder / CODERS} lacks {e.args[0]}") from None
    sweep_path = folder / SWEEP
    sweep = json.loads(sweep_path.read_text()) if sweep_path.is_file() else {}
    means = [tensors[f"mlp_mean.{i}"] for i in range(run.dense.n_layer) if f"mlp_mean.{i}" in tensors]
    return Transcoders(run, coders, sweep, means if len(means) == run.dense.n_layer else None)


def load_transcoders(folder: Path, dense_folder: Path | None = None, device="cpu"):
    """A transcoder folder -> (Transcoders, dense model, tokenizer, its RunConfig). The dense model is
    read from `dense_folder` (default: where it was at training time) and must match the fingerprint."""
    tr = read_transcoders(folder, device)
    dense_folder = Path(dense_folder or tr.run.dense.path)
    check_dense(tr.run.dense, dense_folder)
    model, tok, model_run = load_model(dense_folder, device)
    return tr, model, tok, model_run


def remove_folder(folder: Path) -> None:
    if Path(folder).exists():
        shutil.rmtree(folder)


def sweep_table(sweep: dict) -> list[str]:
    """The sweep as text lines (the CLI prints them)."""
    ref = sweep["reference"]
    lines = [f"clean CE {ref['clean_ce']:.4f}"]
    for r in ref["layers"]:
        zero, mean = r["zero_ablated_ce"], r["mean_ablated_ce"]
        lines.append(f"layer {r['layer']}: CE with the MLP zero-ablated {zero:.4f}, mean-ablated {mean:.4f}")
    lines.append(f"{'kind':11s} {'l1':>8s} {'layer':>5s} {'L0':>8s} {'CE':>8s} {'FVU':>7s} {'dead':>6s}")
    for p in sorted(sweep["points"], key=lambda p: (p["layer"], p["kind"], p["l1"])):
        lines.append(
            f"{p['kind']:11s} {p['l1']:8.2g} {p['layer']:5d} {p['l0']:8.2f} {p['ce']:8.4f} {p['fvu']:7.4f} "
            f"{p['dead_fraction']:6.3f}"
        )
    matched = sweep.get("matched")
    if not matched or not matched["rows"]:
        return lines
    lines.append(
        "matched L0: SAE CE interpolated linearly in log L0 at the transcoder's L0 (* = extrapolated, "
        "± = standard error over validation batches)"
    )
    lines.append(f"{'l1':>8s} {'layer':>5s} {'L0':>8s} {'transcoder':>10s} {'SAE':>8s} {'SAE-TC':>8s}")
    for r in matched["rows"]:
        if r["sae_ce"] is None:
            continue
        star = "*" if r["extrapolated"] else " "
        se = f" ± {r['delta_se']:.4f}" if r.get("delta_se") is not None else ""
        lines.append(
            f"{r['l1']:8.2g} {r['layer']:5d} {r['l0']:8.2f} {r['transcoder_ce']:10.4f} "
            f"{r['sae_ce']:8.4f}{star}{r['delta']:8.4f}{se}"
        )
    for st in matched["settings"]:
        winner = "transcoder" if st["transcoder_better"] else "SAE"
        se = f" ± {st['mean_delta_se']:.4f}" if st.get("mean_delta_se") is not None else ""
        lines.append(
            f"setting l1={st['l1']:.2g} (mean L0 {st['mean_l0']:.1f}): mean SAE-TC "
            f"{st['mean_delta']:+.4f}{se}, {winner} better; "
            f"transcoder better on {st['layers_better']}/{st['layers']} layers"
        )
    n = len(matched["settings"])
    lines.append(
        f"transcoder CE <= SAE CE at matched L0 at {matched['transcoder_better_settings']} of {n} settings"
    )
    return lines


# ---------------------------------------------------------------- features: profiles and de-embedding


def feature_activations(model: SparseGPT, coders: list[SparseCoder]) -> Callable[[torch.Tensor], dict]:
    """idx -> {`{l}.mlp.transcoder`: z (batch, position, width)} from the clean model's MLP inputs: the
    activation function the profile machinery (activations.profile_activations) runs over a corpus."""

    def activations(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            feature_site(i): c.encode(x)
            for i, ((x, _), c) in enumerate(zip(mlp_io(model, idx), coders, strict=True))
        }

    return activations


def profile_features(model, tok, run, coders: list[SparseCoder], cfg, on_progress: ProgressFn | None = None):
    """Percentile-binned examples and statistics of every feature over the model's training split."""
    from .activations import corpus_windows, profile_activations

    tc = run.train
    docs, _ = split_corpus(load_corpus(tc.corpus, tc.max_corpus_bytes), tc.val_percent)
    n_ctx = model.cfg.n_ctx
    windows = corpus_windows(tok, docs, max(1, cfg.tokens // n_ctx), n_ctx, cfg.seed)
    dims = {feature_site(i): c.width for i, c in enumerate(coders)}
    return profile_activations(feature_activations(model, coders), dims, windows, cfg, on_progress)


@torch.no_grad()
def de_embedding(model: SparseGPT, coders: list[SparseCoder], node: str, k: int = 10) -> dict:
    """The tokens whose embeddings drive a feature directly: W_E . (g * W_enc[j]), g the norm weight of
    the feature's layer (the input-dependent norm scale is positive and left out). Top and bottom k."""
    layer, j = parse_feature(node, [c.width for c in coders])
    w = coders[layer].W_enc[j] * model.blocks[layer].mlp.norm.weight
    scores = model.wte.weight @ w
    top, bottom = scores.topk(k), scores.topk(k, largest=False)
    return {
        "top": [(int(i), float(v)) for v, i in zip(top.values, top.indices, strict=True)],
        "bottom": [(int(i), float(v)) for v, i in zip(bottom.values, bottom.indices, strict=True)],
    }


def parse_feature(node: str, widths: list[int]) -> tuple[int, int]:
    """(layer, index) of a feature node `{l}.mlp.transcoder[j]`; ValueError otherwise."""
    site, j = parse_node(node)
    layer = site.split(".", 1)[0]
    if not layer.isdigit() or site != feature_site(int(layer)):
        raise ValueError(f"{node!r} is not a transcoder feature `{{layer}}.mlp.transcoder[index]`")
    layer = int(layer)
    if layer >= len(widths) or j >= widths[layer]:
        raise ValueError(
            f"{node!r}: no such feature (layers 0..{len(widths) - 1}, indices 0..{widths[0] - 1})"
        )
    return layer, j


# ---------------------------------------------------------------- attribution circuits


class CircuitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tolerance: float = Field(0.02, ge=0, le=10)  # allowed rise of the per-prompt task CE over all features
    # Parts of the test split (see transcoder_circuit), each at most a quarter of it; the rest reports.
    attribution_pairs: int = Field(64, ge=1, le=4096)  # pairs the graph and the effects are averaged over
    eval_pairs: int = Field(128, ge=1, le=4096)  # pairs the pruning is judged on
    seed: int = 0  # which pairs go where
    curve_points: int = Field(12, ge=2, le=64)
    min_edge: float = Field(0.0, ge=0)  # leave out edges with |weight| below this


@dataclass
class Attribution:
    """The linearised graph of the replacement model over a task's prompts (all positions), and each
    feature's effect on the task's logit difference."""

    acts: list[torch.Tensor]  # per layer (N, width): feature activations at every (prompt, position)
    scales: list[torch.Tensor]  # per layer (N,): the frozen RMSNorm scale of that layer's MLP input
    weight_products: dict[tuple[int, int], torch.Tensor]  # (l, l') -> (width_l, width_l')
    effects: list[torch.Tensor]  # per layer (width,): effect on the task (minus its CE), see feature_effects


def _coder_times(c: SparseCoder, mult: torch.Tensor) -> ReplaceFn:
    """The transcoder with every feature scaled by `mult` (width,) at every position (1 = untouched,
    0 = switched off)."""
    return lambda x, y: c.decode(c.encode(x) * mult)


def logit_difference(logits: torch.Tensor, task: TaskData) -> torch.Tensor:
    """Per prompt (pairs interleaved a, b): logit of the correct completion minus the wrong one's."""
    l2 = two_class_logits(logits, task)
    d = l2[:, 0] - l2[:, 1]
    return torch.where(pair_labels(len(d) // 2, d.device) == 0, d, -d)


def feature_effects(model: SparseGPT, coders: list[SparseCoder], task: TaskData, prompts: torch.Tensor):
    """Per layer (width,): d(mean log sigmoid(logit difference)) / d(feature scale), i.e. the sum over
    positions of activation x gradient: the first-order effect of switching the feature off on the
    correct completion's two-way log-probability (= minus the task CE), through every path of the
    replacement model (later features, attention, norms). Positive: the feature helps the task."""
    from .prune import frozen

    mults = [torch.ones(c.width, requires_grad=True) for c in coders]
    fns = {i: _coder_times(c, m) for i, (c, m) in enumerate(zip(coders, mults, strict=True))}
    with frozen(model), torch.enable_grad():
        logits, _ = Replacement(model, fns)(prompts.flatten(0, 1), last_only=True)
        grads = torch.autograd.grad(F.logsigmoid(logit_difference(logits, task)).mean(), mults)
    return [g.detach() for g in grads]


@torch.no_grad()
def attribute(
    model: SparseGPT, coders: list[SparseCoder], task: TaskData, prompts: torch.Tensor
) -> Attribution:
    """Activations, frozen norm scales and weight products of the replacement model on `prompts`
    (pairs, 2, T), and every feature's effect on the logit difference (module docstring)."""
    L = len(coders)
    rep = Replacement(model, {i: coder_fn("transcoder", c) for i, c in enumerate(coders)})
    rep(prompts.flatten(0, 1), last_only=True)
    acts = [coders[i].encode(rep.inputs[i]).flatten(0, 1) for i in range(L)]
    scales = [norm_scale(model.blocks[i].mlp.norm, rep.resid_in[i]).flatten() for i in range(L)]
    wp = {}
    for l in range(L):
        for m in range(l + 1, L):
            g = model.blocks[m].mlp.norm.weight
            wp[(l, m)] = coders[l].W_dec.T @ (g[:, None] * coders[m].W_enc.T)
    return Attribution(acts, scales, wp, feature_effects(model, coders, task, prompts))


def attribution_edges(att: Attribution, keep: dict[int, list[int]], min_edge: float = 0.0) -> list[Edge]:
    """Edges between kept features of different layers through the residual stream at the same
    position, averaged over every (prompt, position): weight = activation x weight_product, activation
    = mean of a_i * s_l' * [j active]."""
    edges = []
    N = att.acts[0].shape[0]
    for (l, m), wp in att.weight_products.items():
        src, dst = keep.get(l, []), keep.get(m, [])
        if not src or not dst:
            continue
        a = att.acts[l][:, src] * att.scales[m][:, None]  # (N, |src|)
        on = (att.acts[m][:, dst] > 0).float()  # (N, |dst|)
        act = a.T @ on / N
        w = wp[src][:, dst]
        for i, j in (act != 0).nonzero().tolist():
            weight = float(act[i, j] * w[i, j])
            if abs(weight) > min_edge:
                edges.append(
                    Edge(
                        node_name(feature_site(l), src[i]),
                        node_name(feature_site(m), dst[j]),
                        weight,
                        "attribution",
                        activation=float(act[i, j]),
                        weight_product=float(w[i, j]),
                    )
                )
    return edges


@torch.no_grad()
def task_loss_with(model, coders, task: TaskData, prompts: torch.Tensor, keep=None, chunk: int = 64):
    """Per-prompt two-class CE and mean logit difference (correct minus wrong) of the replacement model;
    `keep`: per layer a 0/1 vector of the features left on at every position (None: all), or "clean"
    for the original model."""
    losses, diffs, n = 0.0, 0.0, 0
    for i in range(0, len(prompts), chunk):
        part = prompts[i : i + chunk]
        x = part.flatten(0, 1)
        if keep == "clean":
            logits, _ = model(x, last_only=True)
        else:
            mults = keep or [torch.ones(c.width) for c in coders]
            logits, _ = Replacement(model, {i: _coder_times(c, mults[i]) for i, c in enumerate(coders)})(
                x, last_only=True
            )
        l2 = two_class_logits(logits, task)
        losses += F.cross_entropy(l2, pair_labels(len(part)), reduction="sum").item()
        diffs += float(logit_difference(logits, task).sum())
        n += 2 * len(part)
    return losses / n, diffs / n


def prune_features(
    candidates: list[int],
    loss: Callable[[list[int]], float],
    target: float,
    on_progress: ProgressFn | None = None,
) -> tuple[list[int], int]:
    """The features to keep, from `candidates` (most important first): the smallest top-k whose loss is
    <= target (bisection; loss is roughly monotone in k), then one greedy pass that leaves out each kept
    feature, least important first, while the loss stays <= target. -> (kept, k of the bisection)."""
    report = on_progress or (lambda f, m: None)
    lo, hi = 0, len(candidates)
    if loss(candidates) <= target:
        while lo < hi:
            mid = (lo + hi) // 2
            if loss(candidates[:mid]) <= target:
                hi = mid
            else:
                lo = mid + 1
    kept = candidates[:hi]
    report(0.3, f"bisection: {hi} features; greedy pass")
    for n, f in enumerate(reversed(candidates[:hi])):
        trial = [c for c in kept if c != f]
        if loss(trial) <= target:
            kept = trial
        report(0.3 + 0.7 * (n + 1) / hi, f"greedy pass: {len(kept)} kept")
    return kept, hi


def transcoder_circuit(
    tr: Transcoders,
    model: SparseGPT,
    task: TaskData,
    cfg: CircuitConfig,
    model_ref: str,
    on_progress: ProgressFn | None = None,
) -> Circuit:
    """Attribution graph of the selected transcoders on a task, pruned greedily (module docstring)."""
    report = on_progress or (lambda f, m: None)
    coders = tr.selected
    widths = [c.width for c in coders]
    # The task's train pairs come from files the model was trained on and behave unlike held-out text
    # (on the small dense model, switching every feature off *lowers* their CE): the graph, the pruning
    # and the reported losses use three disjoint random parts of the test split (pairs are listed file
    # by file, so random parts stand for the task rather than for a few files).
    test = task.test[torch.randperm(len(task.test), generator=torch.Generator().manual_seed(cfg.seed))]
    n_attr = min(cfg.attribution_pairs, len(test) // 4)
    n_held = min(cfg.eval_pairs, len(test) // 4)
    if n_attr == 0 or n_held == 0:
        raise ValueError(
            f"task {task.name} has {len(test)} test pairs; a transcoder circuit needs at least 4"
        )
    attr, held, test = test[:n_attr], test[n_attr : n_attr + n_held], test[n_attr + n_held :]
    report(0.0, f"attribution over {len(attr)} pairs")
    att = attribute(model, coders, task, attr)
    total = torch.cat(att.effects)  # (sum widths,) each feature's effect on the task
    offsets = [sum(widths[:i]) for i in range(len(widths))]
    candidates = [int(i) for i in total.abs().argsort(descending=True) if total[i] != 0]

    def keep_of(chosen: list[int]) -> list[torch.Tensor]:
        flat = torch.zeros(sum(widths))
        flat[chosen] = 1
        return [flat[o : o + w] for o, w in zip(offsets, widths, strict=True)]

    def loss(chosen: list[int], prompts=held) -> float:
        return task_loss_with(model, coders, task, prompts, keep_of(chosen))[0]

    full_loss = task_loss_with(model, coders, task, held)[0]
    target = full_loss + cfg.tolerance
    report(0.2, f"{len(candidates)} active features; bisecting to CE <= {target:.3f}")
    kept, bisection_k = prune_features(candidates, loss, target, lambda f, m: report(0.2 + 0.6 * f, m))
    held_loss = loss(kept)

    def name(flat: int) -> tuple[int, int]:
        layer = max(i for i, o in enumerate(offsets) if o <= flat)
        return layer, flat - offsets[layer]

    by_layer: dict[int, list[int]] = {}
    for f in kept:
        layer, j = name(f)
        by_layer.setdefault(layer, []).append(j)
    by_layer = {k: sorted(v) for k, v in by_layer.items()}
    report(0.8, "test losses and curve")
    clean = task_loss_with(model, coders, task, test, "clean")
    replacement = task_loss_with(model, coders, task, test)
    circuit = task_loss_with(model, coders, task, test, keep_of(kept))
    ablated = task_loss_with(model, coders, task, test, keep_of([]))
    ks = sorted(
        {int(round(len(candidates) ** (i / (cfg.curve_points - 1)))) for i in range(cfg.curve_points)} | {0}
    )
    ks = [k for k in ks if k <= len(candidates)]
    curve = [
        {"k": k, "loss": task_loss_with(model, coders, task, test, keep_of(candidates[:k]))[0]} for k in ks
    ]
    nodes = []
    for f in sorted(kept, key=lambda f: -abs(float(total[f]))):
        layer, j = name(f)
        nodes.append(Node(node_name(feature_site(layer), j), feature_site(layer), layer, j, float(total[f])))
    report(1.0, f"{len(nodes)} features kept")
    cfg_index = tr.run.config.selected_index()
    return Circuit(
        task=task.name,
        model=model_ref,
        target_loss=target,
        nodes=nodes,
        edges=attribution_edges(att, by_layer, cfg.min_edge),
        losses={
            "full": clean[0],
            "replacement": replacement[0],
            "circuit": circuit[0],
            "circuit_uncalibrated": circuit[0],
            "ablated": ablated[0],
            "logit_diff_full": clean[1],
            "logit_diff_replacement": replacement[1],
            "logit_diff_circuit": circuit[1],
        },
        calibration={"scale": 1.0, "shift": 0.0},
        curve=curve,
        runs=[
            {
                "method": "transcoder attribution + greedy pruning",
                "l1": tr.run.config.l1[cfg_index],
                "attribution_pairs": len(attr),
                "eval_pairs": len(held),
                "report_pairs": len(test),
                "candidates": len(candidates),
                "kept": len(kept),
                "bisection_k": bisection_k,
                "tolerance": cfg.tolerance,
                "replacement_loss_eval": full_loss,
                "circuit_loss_eval": held_loss,
            }
        ],
    )
