"""Bridges between a frozen dense model and a weight-sparse model trained jointly with them
(PAPERS.md section 5), and interventions that steer the dense model through a sparse node.

Bridge locations are the residual stream at sublayer boundaries (`resid_locations`): the input of every
attention and MLP sublayer and the final residual. At each location i an encoder maps the dense residual
into the sparse one (Linear + AbsTopK) and a decoder maps back (Linear). The sparse model and the bridges
minimise

    sparse CE + nmse_coef * mean_i [NMSE(enc_i(dense_i), sparse_i) + NMSE(dec_i(sparse_i), dense_i)]
              + kl_coef * [KL(dense || dense to i, enc_i, rest of sparse)
                           + KL(dense || sparse to i, dec_i, rest of dense)]

with NMSE = ||pred - target||^2 / ||target - mean(target)||^2 and the KL per token over the vocabulary.
The hybrid passes cost a forward and backward each, so a step samples `hybrid_sites_per_step` locations
per direction (uniformly, without replacement) and runs them on the first `hybrid_batch_frac` of the
batch's (random) sequences: the sampled KL is an unbiased estimate of the KL averaged over all locations
(the sum over locations up to the constant factor 1 / number of locations). Evaluation measures every
location on EVAL_BATCHES validation batches.

A bridged model folder is an ordinary sparse model folder (usable by eval-tasks, prune, profile) whose
config.json has a `bridge` section (the dense model's path and fingerprint) plus `bridges.safetensors`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from . import checkpoints as ck
from .config import BridgeConfig, RunConfig, TrainConfig, preset
from .errors import UserError
from .model import SiteEdit, SparseGPT, abs_topk
from .sites import parse_node, resid_location_after, resid_locations, site_dims
from .tasks.base import TaskData
from .train import Objective, ProgressFn, autocast, train

BRIDGES = "bridges.safetensors"
EVAL_BATCHES = 4  # validation batches of the per-location evaluation (every location, both directions)


class BridgeError(UserError):
    pass


# ---------------------------------------------------------------- the bridges


class Bridges(nn.Module):
    """One encoder (Linear + AbsTopK) and one decoder (Linear) per location, in `locations` order."""

    def __init__(self, locations: list[str], d_dense: int, d_sparse: int, k: int, seed: int = 0):
        super().__init__()
        self.locations, self.k = list(locations), k
        self.encoders = nn.ModuleList(nn.Linear(d_dense, d_sparse) for _ in locations)
        self.decoders = nn.ModuleList(nn.Linear(d_sparse, d_dense) for _ in locations)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for lin in (*self.encoders, *self.decoders):
                lin.weight.normal_(0.0, lin.in_features**-0.5, generator=g)
                lin.bias.zero_()

    def index(self, location: str) -> int:
        if location not in self.locations:
            raise BridgeError(f"no bridge at {location!r}; locations: {', '.join(self.locations)}")
        return self.locations.index(location)

    def encode(self, location: str, dense_resid: torch.Tensor) -> torch.Tensor:
        return abs_topk(self.encoders[self.index(location)](dense_resid), self.k)

    def decode(self, location: str, sparse_resid: torch.Tensor) -> torch.Tensor:
        return self.decoders[self.index(location)](sparse_resid)

    def decode_delta(self, location: str, delta: torch.Tensor) -> torch.Tensor:
        """A change of the sparse residual mapped into the dense one: the decoder's linear map only."""
        return delta @ self.decoders[self.index(location)].weight.T


def make_bridges(dense_cfg, sparse_cfg, bc: BridgeConfig, seed: int) -> Bridges:
    locations = resid_locations(sparse_cfg)
    k = max(1, int(bc.encoder_k_frac * sparse_cfg.d_model))
    return Bridges(locations, dense_cfg.d_model, sparse_cfg.d_model, k, seed)


def nmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||pred - target||^2 / ||target - mean||^2, the mean over all tokens of the batch."""
    pred, target = pred.float().flatten(0, -2), target.float().flatten(0, -2)
    var = (target - target.mean(0)).pow(2).sum()
    return (pred - target).pow(2).sum() / var.clamp_min(1e-12)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(tokens, vocab) log-probabilities."""
    return logits.float().flatten(0, -2).log_softmax(-1)


def kl(dense_log_p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(dense || other) per token, in nats, from the dense model's log_probs and the other's logits."""
    return F.kl_div(log_probs(logits), dense_log_p, log_target=True, reduction="batchmean")


# ---------------------------------------------------------------- training


class BridgeObjective(Objective):
    """The training objective of a bridged sparse model; the bridges are its extra modules."""

    def __init__(self, dense: SparseGPT, bridges: Bridges, bc: BridgeConfig, seed: int):
        self.dense = dense.eval().requires_grad_(False)
        self.modules = self.bridges = bridges
        self.bc, self.seed = bc, seed

    def _sampled(self, step: int) -> tuple[list[str], list[str]]:
        """The locations of this step's hybrid passes, per direction (a function of seed and step)."""
        locs = self.bridges.locations
        m = len(locs) if self.bc.hybrid_sites_per_step == 0 else min(self.bc.hybrid_sites_per_step, len(locs))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 7_919)
        return [[locs[i] for i in torch.randperm(len(locs), generator=g)[:m].tolist()] for _ in range(2)]

    def loss(self, model, x, y, step, bf16):
        locs, bc, br = self.bridges.locations, self.bc, self.bridges
        h = max(1, math.ceil(bc.hybrid_batch_frac * len(x)))  # the hybrids see the first h sequences
        with autocast(bf16, x.device):
            with torch.no_grad():
                dense_logits, dense_acts = self.dense(x, capture=locs)
                log_p = log_probs(dense_logits[:h])
            logits, acts = model(x, capture=locs)
            ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            enc = torch.stack([nmse(br.encode(l, dense_acts[l]), acts[l]) for l in locs]).mean()
            dec = torch.stack([nmse(br.decode(l, acts[l]), dense_acts[l]) for l in locs]).mean()
            to_sparse, to_dense = self._sampled(step)
            xh = x[:h]
            kl_d2s = torch.stack(
                [kl(log_p, model(xh, start=(l, br.encode(l, dense_acts[l][:h])))[0]) for l in to_sparse]
            ).mean()
            kl_s2d = torch.stack(
                [kl(log_p, self.dense(xh, start=(l, br.decode(l, acts[l][:h])))[0]) for l in to_dense]
            ).mean()
        total = ce + bc.nmse_coef * (enc + dec) + bc.kl_coef * (kl_d2s + kl_s2d)
        terms = {"loss": ce.item(), "objective": total.item(), "nmse_enc": enc.item(), "nmse_dec": dec.item()}
        return total, {**terms, "kl_d2s": kl_d2s.item(), "kl_s2d": kl_s2d.item()}

    def evaluate(self, model, batches, bf16):
        return evaluate_bridges(model, self.dense, self.bridges, batches[:EVAL_BATCHES], bf16)

    def finish(self, out):
        ck.save_module(Path(out) / BRIDGES, self.bridges, {"locations": json.dumps(self.bridges.locations)})


@torch.no_grad()
def evaluate_bridges(
    sparse: SparseGPT, dense: SparseGPT, bridges: Bridges, batches, bf16: bool = False
) -> dict:
    """Per location: encoder and decoder NMSE, KL of both hybrid passes to the dense model; also the KL
    of the sparse model alone and the dense model's loss. Flat keys `nmse_enc/{location}`, ..."""
    was_training = sparse.training
    sparse.eval()
    locs = bridges.locations
    sums: dict[str, float] = {}

    def add(key: str, value: torch.Tensor) -> None:
        sums[key] = sums.get(key, 0.0) + value.item() / len(batches)

    device = next(sparse.parameters()).device
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(bf16, device):
            dense_logits, dense_acts = dense(x, capture=locs)
            log_p = log_probs(dense_logits)
            logits, acts = sparse(x, capture=locs)
            add("kl_sparse", kl(log_p, logits))
            add("dense_val_loss", F.cross_entropy(dense_logits.float().flatten(0, 1), y.flatten()))
            for l in locs:
                encoded, decoded = bridges.encode(l, dense_acts[l]), bridges.decode(l, acts[l])
                add(f"nmse_enc/{l}", nmse(encoded, acts[l]))
                add(f"nmse_dec/{l}", nmse(decoded, dense_acts[l]))
                add(f"kl_d2s/{l}", kl(log_p, sparse(x, start=(l, encoded))[0]))
                add(f"kl_s2d/{l}", kl(log_p, dense(x, start=(l, decoded))[0]))
    sparse.train(was_training)
    return sums


def bridge_report(record: dict) -> dict:
    """An evaluation record of metrics.jsonl -> {step, val_loss, dense_val_loss, kl_sparse,
    locations: {location: {nmse_enc, nmse_dec, kl_d2s, kl_s2d}}}."""
    locations: dict[str, dict[str, float]] = {}
    for key, value in record.items():
        if "/" in key:
            name, location = key.split("/", 1)
            locations.setdefault(location, {})[name] = value
    keys = ("step", "val_loss", "dense_val_loss", "kl_sparse")
    return {**{k: record[k] for k in keys if k in record}, "locations": locations}


def final_report(folder: Path) -> dict:
    """The bridge report of a folder's last evaluation record."""
    path = Path(folder) / ck.METRICS
    records = [json.loads(ln) for ln in path.read_text().splitlines()] if path.is_file() else []
    evals = [r for r in records if "kl_sparse" in r]
    if not evals:
        raise BridgeError(f"{folder} has no bridge evaluation yet")
    return bridge_report(evals[-1])


def sparse_run_for(dense_run: RunConfig, preset_name: str = "small", steps: int | None = None) -> RunConfig:
    """The sparse model's RunConfig: the preset's width and training recipe with the dense model's
    vocabulary, context, layer count and corpus (so that its tokenizer and data apply)."""
    run = preset(preset_name, steps=steps)
    dm, dt = dense_run.model, dense_run.train
    run.model = run.model.model_copy(
        update={"vocab_size": dm.vocab_size, "n_ctx": dm.n_ctx, "n_layer": dm.n_layer}
    )
    same_data = {"corpus": dt.corpus, "max_corpus_bytes": dt.max_corpus_bytes, "val_percent": dt.val_percent}
    run.train = TrainConfig.model_validate({**run.train.model_dump(), **same_data})
    return run


def bridged_run(
    dense_folder: str | Path, preset_name: str = "small", steps: int | None = None, **options
) -> RunConfig:
    """The RunConfig of a bridge training run against the trained dense model in `dense_folder`;
    `options` are BridgeConfig fields."""
    dense_folder = Path(dense_folder)
    run = sparse_run_for(ck.read_run_config(dense_folder), preset_name, steps)
    run.bridge = BridgeConfig(dense=ck.fingerprint(dense_folder, BridgeError), **options)
    return run


def train_bridged(
    run: RunConfig | None,
    out: str | Path,
    *,
    dense_folder: str | Path | None = None,
    resume: bool = False,
    on_progress: ProgressFn | None = None,
    stop_after: int | None = None,
    device: str = "cpu",
) -> Path:
    """Train a sparse model and its bridges to a frozen dense model into `out` (run from `bridged_run`).
    With resume, out's saved config wins (run may be None). The dense model is read from `dense_folder`
    (default: the path in the config) and refused if it is not the one the run started with."""
    out = Path(out)
    if resume:
        run = ck.read_run_config(out)
    if run is None or run.bridge is None:
        where = f"{out} is not a bridge training run (its config.json" if resume else "the run config ("
        raise BridgeError(f"{where} has no bridge section)")
    dense_folder = Path(dense_folder or run.bridge.dense.path)
    ck.check_dense(run.bridge.dense, dense_folder, "the bridges", BridgeError)
    dense, tok, _ = ck.load_model(dense_folder, device)
    bridges = make_bridges(dense.cfg, run.model, run.bridge, run.train.seed)
    objective = BridgeObjective(dense, bridges, run.bridge, run.train.seed)
    return train(
        run,
        out,
        resume=resume,
        on_progress=on_progress,
        stop_after=stop_after,
        device=device,
        objective=objective,
        tokenizer=tok,
    )


# ---------------------------------------------------------------- a trained bridged model


@dataclass
class Bridged:
    sparse: SparseGPT
    dense: SparseGPT
    bridges: Bridges
    tok: Tokenizer
    run: RunConfig


def load_bridges(path: Path, dense_cfg, run: RunConfig) -> Bridges:
    """The trained bridges of a bridged model (`run` is its config), ready for inference."""
    bridges = make_bridges(dense_cfg, run.model, run.bridge, run.train.seed)
    ck.load_module(path, bridges)
    return bridges.eval().requires_grad_(False)


def load_bridged(folder: str | Path, dense_folder: str | Path | None = None, device="cpu") -> Bridged:
    """A bridged model folder -> sparse model, dense model (checked against the fingerprint), bridges."""
    folder = Path(folder)
    sparse, tok, run = ck.load_model(folder, device)
    if run.bridge is None:
        raise BridgeError(f"{folder} is not a bridged model (no bridge section in its config.json)")
    dense_folder = Path(dense_folder or run.bridge.dense.path)
    ck.check_dense(run.bridge.dense, dense_folder, "the bridges", BridgeError)
    dense, _, _ = ck.load_model(dense_folder, device)
    bridges = load_bridges(folder / BRIDGES, dense.cfg, run).to(device)
    return Bridged(sparse.requires_grad_(False), dense.requires_grad_(False), bridges, tok, run)


# ---------------------------------------------------------------- steering


def next_location(cfg, site: str) -> str:
    """The first bridge location downstream of a node site: where a change at the site is read off."""
    return resid_location_after(cfg, site)


def check_node(cfg, node: str) -> tuple[str, int]:
    site, index = parse_node(node)
    dims = site_dims(cfg)
    if site not in dims:
        raise BridgeError(f"unknown site {site!r}; sites: {', '.join(dims)}")
    if index >= dims[site]:
        raise BridgeError(f"site {site} has nodes 0..{dims[site] - 1}, not {index}")
    return site, index


def node_edit(T: int, dim: int, index: int, mode: str, value: float, position: str) -> SiteEdit:
    """Set a node to `value` or add `value` to it, at the last position or at every position."""
    mask = torch.zeros(T, dim)
    if position == "last":
        mask[-1, index] = 1
    else:
        mask[:, index] = 1
    if mode == "add":
        return SiteEdit(add=mask * value)
    return SiteEdit(keep=1 - mask, replace=mask * value)


def random_control(site: str, dim: int, index: int, seed: int) -> str:
    """A random other node of the same site (seeded)."""
    g = torch.Generator().manual_seed(seed)
    pick = int(torch.randint(0, dim - 1, (1,), generator=g))
    return f"{site}[{pick + (pick >= index)}]"


def _probs(logits: torch.Tensor, task: TaskData) -> dict[str, float]:
    """Mean over prompts: two-way (A vs B) and whole-vocabulary probabilities of the completions."""
    last = logits[:, -1].float()
    two = last[:, [task.token_a, task.token_b]].softmax(-1)
    vocab = last.softmax(-1)[:, [task.token_a, task.token_b]]
    return {
        "p_a": two[:, 0].mean().item(),
        "p_b": two[:, 1].mean().item(),
        "p_a_vocab": vocab[:, 0].mean().item(),
        "p_b_vocab": vocab[:, 1].mean().item(),
    }


@torch.no_grad()
def node_class_means(sparse: SparseGPT, task: TaskData, nodes: list[str], pairs: int = 256) -> dict:
    """Each node's activation at the last prompt position: mean on class-A and class-B test prompts, and
    the effect size |mean_b - mean_a| / pooled std (how well the node tells the classes apart)."""
    sites = {check_node(sparse.cfg, n)[0] for n in nodes}
    prompts = task.test[:pairs]
    _, acts = sparse(prompts.flatten(0, 1), capture=sites)
    out = {}
    for n in nodes:
        site, index = check_node(sparse.cfg, n)
        a = acts[site][:, -1, index].view(-1, 2).float()
        mean, var = a.mean(0), a.var(0, unbiased=False)
        out[n] = {
            "mean_a": mean[0].item(),
            "mean_b": mean[1].item(),
            "effect": (abs(mean[1] - mean[0]) / (var.mean().sqrt() + 1e-6)).item(),
        }
    return out


@torch.no_grad()
def _sweep_node(b: Bridged, prompts, task, node, mode, strengths, position, location, base_resid) -> dict:
    site, index = check_node(b.sparse.cfg, node)
    T, dim = prompts.shape[1], site_dims(b.sparse.cfg)[site]
    curve: dict[str, list[float]] = {}
    for s in strengths:
        edit = node_edit(T, dim, index, mode, s, position)
        logits, acts = b.sparse(prompts, edits={site: edit}, capture=[location], last_only=True)
        delta = b.bridges.decode_delta(location, acts[location] - base_resid)
        dense_logits, _ = b.dense(prompts, edits={location: SiteEdit(add=delta)}, last_only=True)
        for who, lg in (("dense", dense_logits), ("sparse", logits)):
            for key, value in _probs(lg, task).items():
                curve.setdefault(f"{who}_{key}", []).append(value)
    return curve


DEFAULT_STEPS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


@torch.no_grad()
def steer(
    b: Bridged,
    task: TaskData,
    node: str,
    mode: str = "add",
    strengths: list[float] | None = None,
    prompt_class: str = "a",
    pairs: int = 128,
    position: str = "last",
    seed: int = 0,
    correct_only: bool = False,
    on_progress: Callable[[float, str], None] | None = None,
) -> dict:
    """Perturb a sparse node (set it to / add each strength) on the task's test prompts of one class,
    read the change of the sparse residual at the next bridge location, map it through the decoder's
    linear map into the dense residual there and finish the dense pass. Per strength: mean probabilities
    of the two completions under the dense model and under the (edited) sparse model; the same for a
    random node of the same site (the control, same strengths). `correct_only` keeps only the prompts
    the unsteered dense model gets right (its two-way choice is the prompts' class).
    Default strengths move the node from its mean on the prompts' class towards (and past) its mean on
    the other class: add t * (other - own), or set own + t * (other - own), t in DEFAULT_STEPS."""
    if mode not in ("add", "set"):
        raise BridgeError(f"mode must be 'add' or 'set', not {mode!r}")
    if position not in ("last", "all"):
        raise BridgeError(f"position must be 'last' or 'all', not {position!r}")
    if prompt_class not in ("a", "b"):
        raise BridgeError(f"prompt class must be 'a' or 'b', not {prompt_class!r}")
    site, index = check_node(b.sparse.cfg, node)
    dim = site_dims(b.sparse.cfg)[site]
    if dim < 2:
        raise BridgeError(f"site {site} has a single node: no random control")
    report = on_progress or (lambda f, m: None)
    stats = node_class_means(b.sparse, task, [node], pairs)[node]
    own, other = (
        (stats["mean_a"], stats["mean_b"]) if prompt_class == "a" else (stats["mean_b"], stats["mean_a"])
    )
    if strengths is None:
        if abs(other - own) < 1e-6:
            raise BridgeError(
                f"{node} does not tell the classes apart (mean {own:.3g} on both); give strengths"
            )
        base = 0.0 if mode == "add" else own
        strengths = [base + t * (other - own) for t in DEFAULT_STEPS]
    if not strengths or not all(math.isfinite(s) for s in strengths):
        raise BridgeError("strengths must be a non-empty list of finite numbers")
    cls = 0 if prompt_class == "a" else 1
    prompts = task.test[:pairs, cls]
    dense_logits, _ = b.dense(prompts, last_only=True)
    if correct_only:
        right = dense_logits[:, -1, [task.token_a, task.token_b]].argmax(-1) == cls
        if not right.any():
            raise BridgeError(
                f"the dense model gets none of the {len(prompts)} class-{prompt_class} prompts right"
            )
        prompts, dense_logits = prompts[right], dense_logits[right]
    location = next_location(b.sparse.cfg, site)
    base_logits, base_acts = b.sparse(prompts, capture=[location], last_only=True)
    control = random_control(site, dim, index, seed)
    curves = {}
    for i, (name, n) in enumerate((("node", node), ("control", control))):
        report(i / 2, f"sweeping {n}")
        curves[name] = _sweep_node(
            b, prompts, task, n, mode, strengths, position, location, base_acts[location]
        )
    report(1.0, "done")
    return {
        "task": task.name,
        "completion_a": task.completion_a,
        "completion_b": task.completion_b,
        "node": node,
        "control_node": control,
        "location": location,
        "mode": mode,
        "position": position,
        "prompt_class": prompt_class,
        "correct_only": correct_only,
        "prompts": len(prompts),
        "node_means": {"a": stats["mean_a"], "b": stats["mean_b"], "effect": stats["effect"]},
        "strengths": list(strengths),
        "baseline": {
            **{f"dense_{k}": v for k, v in _probs(dense_logits, task).items()},
            **{f"sparse_{k}": v for k, v in _probs(base_logits, task).items()},
        },
        "curves": curves,
    }
