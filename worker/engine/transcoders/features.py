"""Transcoder features as nodes `{l}.mlp.transcoder[j]`: their activations for profiles, and their
de-embedding (the tokens that drive a feature directly)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..activations import corpus_windows, profile_activations
from ..data import load_corpus, split_corpus
from ..model import SparseGPT
from ..search import ProgressFn
from ..sites import feature_site, is_feature_site, parse_node, site_layer
from .coders import SparseCoder
from .replacement import mlp_io


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
    if not is_feature_site(site):
        raise ValueError(f"{node!r} is not a transcoder feature `{{layer}}.mlp.transcoder[index]`")
    layer = site_layer(site)
    if layer >= len(widths) or j >= widths[layer]:
        raise ValueError(
            f"{node!r}: no such feature (layers 0..{len(widths) - 1}, indices 0..{widths[0] - 1})"
        )
    return layer, j
