"""Ablations: what a node outside a circuit is replaced by (its mean over the pretraining
distribution, zero, or its value on another pretraining text), and the validation controls."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from .data import encode_documents, fixed_batches, load_corpus, split_corpus
from .model import SiteEdit, SparseGPT
from .sites import layer_node_sites

MEANS = "means.safetensors"
WINDOWS = "resample_windows.safetensors"
AblationMode = Literal["mean", "zero", "resample"]
ABLATION_MODES: tuple[str, ...] = AblationMode.__args__


def prunable_sites(model: SparseGPT) -> list[str]:
    """The 8 sites of every layer, in forward order: where circuit nodes live."""
    return layer_node_sites(model.cfg)


@torch.no_grad()
def compute_means(
    model: SparseGPT, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Mean activation of every node over all positions of the given token batches."""
    sites = list(model.site_dims())
    device = next(model.parameters()).device
    sums = {s: torch.zeros(d, dtype=torch.float64, device=device) for s, d in model.site_dims().items()}
    count = 0
    for x, _ in batches:
        _, acts = model(x.to(device), capture=sites)
        for s in sites:
            sums[s] += acts[s].double().sum((0, 1))
        count += x.numel()
    return {s: (v / count).float().cpu() for s, v in sums.items()}


def pretraining_batches(model: SparseGPT, tok, run, n_batches: int, seed_offset: int):
    """Fixed batches of 32 windows of n_ctx tokens from training-split text (the pretraining data)."""
    train_docs, _ = split_corpus(
        load_corpus(run.train.corpus, run.train.max_corpus_bytes), run.train.val_percent
    )
    stream = encode_documents(tok, train_docs)
    return fixed_batches(stream, n_batches, 32, model.cfg.n_ctx, seed=run.train.seed + seed_offset)


def _cached(path: Path, make) -> dict[str, torch.Tensor]:
    if path.is_file():
        return load_file(str(path))
    tensors = make()
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return tensors


def load_or_compute_means(
    folder: Path, model: SparseGPT, tok, run, n_batches: int = 16
) -> dict[str, torch.Tensor]:
    """Means cached in the model folder; computed once from training-split text."""
    return _cached(
        Path(folder) / MEANS, lambda: compute_means(model, pretraining_batches(model, tok, run, n_batches, 3))
    )


def load_or_make_windows(folder: Path, model: SparseGPT, tok, run, n_batches: int = 16) -> torch.Tensor:
    """512 windows of training-split text (n_ctx tokens each) that resample ablation draws from, cached
    in the model folder (drawn apart from the means' windows)."""

    def make():
        return {"windows": torch.cat([x for x, _ in pretraining_batches(model, tok, run, n_batches, 5)])}

    return _cached(Path(folder) / WINDOWS, make)["windows"]


@dataclass
class Ablation:
    """What a node with keep 0 is replaced by. mean: its mean over the pretraining distribution (the
    paper's choice); zero: 0; resample: its value at the same position on a pretraining window drawn at
    random, afresh for every forward pass (one window per prompt, the clean model run on it)."""

    mode: AblationMode
    means: dict[str, torch.Tensor]
    windows: torch.Tensor | None = None  # (N, n_ctx) token ids, resample only
    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self):
        if self.mode not in ABLATION_MODES:
            raise ValueError(f"ablation must be one of {', '.join(ABLATION_MODES)}, not {self.mode!r}")
        if self.mode == "resample" and self.windows is None:
            raise ValueError("resample ablation needs pretraining windows")
        self.generator = torch.Generator().manual_seed(self.seed)

    def as_mode(self, mode: AblationMode) -> Ablation:
        return Ablation(mode, self.means, self.windows, self.seed)

    def replacements(
        self, model: SparseGPT, sites: list[str], batch: int, length: int
    ) -> dict[str, torch.Tensor | None]:
        """What each site's masked nodes (and masked edges out of it) are replaced by in a forward pass
        over `batch` prompts of `length` tokens: its means, None (zero) or a resampled activation."""
        if self.mode == "mean":
            return {s: self.means[s] for s in sites}
        if self.mode == "zero":
            return dict.fromkeys(sites)
        if length > self.windows.shape[1]:
            raise ValueError(f"prompts of {length} tokens are longer than the resample windows")
        pick = torch.randint(len(self.windows), (batch,), generator=self.generator)
        device = next(model.parameters()).device
        with torch.no_grad():
            _, acts = model(self.windows[pick, :length].to(device), capture=sites)
        return {s: acts[s] for s in sites}

    def edits(
        self, model: SparseGPT, keep: dict[str, torch.Tensor], batch: int, length: int
    ) -> dict[str, SiteEdit]:
        """Site edits for a forward pass over `batch` prompts of `length` tokens; keep (per site, 0/1 or
        fractional, may carry gradients) says which nodes stay."""
        replace = self.replacements(model, list(keep), batch, length)
        return {s: SiteEdit(keep=k, replace=replace[s]) for s, k in keep.items()}


def load_ablation(folder: Path, model: SparseGPT, tok, run, mode: AblationMode = "mean", seed: int = 0):
    """The Ablation of a model folder: its cached means and resample windows (every mode's faithfulness
    curve is computed for each circuit, whatever mode pruned it)."""
    means = load_or_compute_means(folder, model, tok, run)
    device = next(model.parameters()).device
    means = {s: m.to(device) for s, m in means.items()}
    return Ablation(mode, means, load_or_make_windows(folder, model, tok, run), seed)


def shuffled_labels(task, seed: int = 0):
    """Control task: each pair's two prompts swapped at random, so the label no longer follows the feature."""
    g = torch.Generator().manual_seed(seed)

    def shuffle(prompts: torch.Tensor) -> torch.Tensor:
        swap = torch.rand(len(prompts), generator=g) < 0.5
        return torch.where(swap[:, None, None], prompts.flip(1), prompts)

    return replace(task, name=f"{task.name}/shuffled", train=shuffle(task.train), test=shuffle(task.test))


def nonsense_task(task, seed: int = 0):
    """Control task: every prompt of a split (either side of any pair) paired at random with another,
    in a random order, so the label is arbitrary and no feature of the text decides it. A method that
    finds a small circuit for it on held-out pairs has fitted the masks, not found a mechanism."""
    g = torch.Generator().manual_seed(seed)

    def scramble(prompts: torch.Tensor) -> torch.Tensor:
        flat = prompts.flatten(0, 1)
        flat = flat[torch.randperm(len(flat), generator=g)]
        return flat[: len(flat) // 2 * 2].view(-1, 2, *prompts.shape[2:])

    return replace(task, name=f"{task.name}/nonsense", train=scramble(task.train), test=scramble(task.test))


CHANCE = 0.6931471805599453  # ln 2: the two-class CE of a coin flip
GENERALISATION_GAP = 0.05


def validation_checks(circuit, target: float) -> list[dict]:
    """Pass/fail of each control against its stated criterion: {name, passed, value, criterion}."""
    losses, v = circuit.losses, circuit.validation
    halfway = (losses["full"] + CHANCE) / 2
    checks = [
        (
            "sufficiency",
            losses["circuit"] <= target,
            losses["circuit"],
            f"circuit test loss <= target {target:g}",
        ),
        (
            "necessity",
            losses["ablated"] >= halfway,
            losses["ablated"],
            f"ablating the circuit's nodes takes the loss at least half-way to chance (>= {halfway:.3f})",
        ),
    ]
    if "random_circuit" in v:
        r = v["random_circuit"]["mean_loss"]
        checks.append(
            ("random_circuit", r > target, r, f"random circuits of equal size miss the target {target:g}")
        )
    for name in ("shuffled_labels", "nonsense_task"):
        if name in v:
            c = v[name]
            checks.append(
                (
                    name,
                    not c["reached_target"],
                    c["circuit_loss"],
                    f"pruning finds no circuit meeting the target {target:g} on held-out pairs",
                )
            )
    if "circuit_train_masks" in losses:
        gap = losses["circuit"] - losses["circuit_train_masks"]
        checks.append(
            (
                "generalisation",
                gap <= GENERALISATION_GAP,
                gap,
                f"test loss minus loss on the masks' own pairs <= {GENERALISATION_GAP}",
            )
        )
    return [{"name": n, "passed": bool(p), "value": float(x), "criterion": c} for n, p, x, c in checks]
