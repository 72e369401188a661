"""Mean ablation: per-node means over the pretraining distribution, and circuit validation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .data import encode_documents, fixed_batches, load_corpus, split_corpus
from .model import SiteEdit, SparseGPT
from .sites import layer_node_sites

MEANS = "means.safetensors"


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


def load_or_compute_means(
    folder: Path, model: SparseGPT, tok, run, n_batches: int = 16
) -> dict[str, torch.Tensor]:
    """Means cached in the model folder; computed once from training-split text (the pretraining data)."""
    path = Path(folder) / MEANS
    if path.is_file():
        return load_file(str(path))
    train_docs, _ = split_corpus(
        load_corpus(run.train.corpus, run.train.max_corpus_bytes), run.train.val_percent
    )
    stream = encode_documents(tok, train_docs)
    batches = fixed_batches(stream, n_batches, 32, model.cfg.n_ctx, seed=run.train.seed + 3)
    means = compute_means(model, batches)
    tmp = path.with_name(path.name + ".tmp")
    save_file(means, str(tmp))
    tmp.replace(path)
    return means


def ablation_edits(keep: dict[str, torch.Tensor], means: dict[str, torch.Tensor]) -> dict[str, SiteEdit]:
    """Nodes with keep 0 are replaced by their mean; keep may be fractional or carry gradients."""
    return {s: SiteEdit(keep=k, replace=means[s].to(k.device)) for s, k in keep.items()}


def shuffled_labels(task, seed: int = 0):
    """Control task: each pair's two prompts swapped at random, so the label no longer follows the feature."""
    g = torch.Generator().manual_seed(seed)

    def shuffle(prompts: torch.Tensor) -> torch.Tensor:
        swap = torch.rand(len(prompts), generator=g) < 0.5
        return torch.where(swap[:, None, None], prompts.flip(1), prompts)

    return replace(task, name=f"{task.name}/shuffled", train=shuffle(task.train), test=shuffle(task.test))
