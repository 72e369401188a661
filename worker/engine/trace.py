"""What a circuit computes, for the circuit view: its nodes' activations at every position of one prompt
(the circuit running alone, every other node ablated, as when it was pruned), the logit difference
it writes, the attention pattern of its heads from the last position, and per node the numbers its
automatic label is made of (mean on class A vs class B prompts, direct weight on the logit difference).

A q/k/v channel belongs to head `index // d_head` of its layer: `1.attn.k[91]` is head 5 with d_head 16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .ablation import Ablation, prunable_sites
from .model import SparseGPT
from .sites import layer_site, parse_node, site_kind, site_layer

HEAD_KINDS = ("attn.q", "attn.k", "attn.v")


def head_of(node: str, d_head: int) -> tuple[int, int] | None:
    """(layer, head) of a q/k/v channel, None for any other node."""
    site, index = parse_node(node)
    if site_kind(site) not in HEAD_KINDS:
        return None
    return site_layer(site), index // d_head


@dataclass
class HeadPattern:
    layer: int
    head: int
    nodes: list[str]  # the circuit's q/k/v channels of this head
    pattern: list[float]  # attention of the last position to every position (sums to 1 - sink)
    sink: float | None  # attention to the sink slot (None: the model has no sink)


@dataclass
class Trace:
    activations: dict[str, list[float]]  # node -> its value at every position, in the circuit run
    logit_diff: float  # logit(A) - logit(B) at the last position, circuit run (uncalibrated)
    full_logit_diff: float  # the same for the full model
    heads: list[HeadPattern]


def circuit_edits(model: SparseGPT, kept: set[str], ablation: Ablation, batch: int, length: int):
    """Edits that run only the `kept` nodes; every other node of the 8 layer sites is ablated."""
    dims = model.site_dims()
    keep = {s: torch.zeros(dims[s]) for s in prunable_sites(model)}
    for n in kept:
        site, index = parse_node(n)
        keep[site][index] = 1.0
    return ablation.edits(model, keep, batch, length)


def _pattern(
    model: SparseGPT, acts: dict[str, torch.Tensor], layer: int, head: int
) -> tuple[list[float], float | None]:
    """Softmax attention of the last query to every key of one head (the sink slot included)."""
    cfg = model.cfg
    sl = slice(head * cfg.d_head, (head + 1) * cfg.d_head)
    q = acts[layer_site(layer, "attn.q")][0, -1, sl].float()
    k = acts[layer_site(layer, "attn.k")][0, :, sl].float()
    scores = k @ q / cfg.d_head**0.5
    sink = model.blocks[layer].attn.sink
    if sink is None:
        return scores.softmax(-1).tolist(), None
    p = torch.cat([sink[head].view(1).float(), scores]).softmax(-1)
    return p[1:].tolist(), float(p[0])


@torch.no_grad()
def trace(
    model: SparseGPT,
    ids: list[int],
    nodes: list[str],
    ablation: Ablation,
    token_a: int,
    token_b: int,
    off: set[str] = frozenset(),
    run_edits=None,
) -> Trace:
    """The circuit (`nodes` less `off`) on one prompt of token ids. `run_edits(batch, length)`: the
    model(...) keyword arguments of the circuit run when it is not the node set alone (an edge
    circuit: masks.EdgeMasks.edit)."""
    heads: dict[tuple[int, int], list[str]] = {}
    for n in nodes:
        if (lh := head_of(n, model.cfg.d_head)) is not None:
            heads.setdefault(lh, []).append(n)
    capture = {parse_node(n)[0] for n in nodes}
    capture |= {layer_site(layer, kind) for layer, _ in heads for kind in ("attn.q", "attn.k")}
    x = torch.tensor([ids])
    if run_edits is None:
        edits = {"edits": circuit_edits(model, set(nodes) - set(off), ablation, 1, len(ids))}
    else:
        edits = run_edits(1, len(ids))
    logits, acts = model(x, **edits, capture=capture)
    full, _ = model(x, last_only=True)
    out = []
    for (layer, head), members in sorted(heads.items()):
        pattern, sink = _pattern(model, acts, layer, head)
        out.append(HeadPattern(layer, head, sorted(members), pattern, sink))
    diff = lambda lg: float(lg[0, -1, token_a] - lg[0, -1, token_b])  # noqa: E731
    return Trace(
        activations={n: acts[s][0, :, i].tolist() for n in nodes for s, i in [parse_node(n)]},
        logit_diff=diff(logits),
        full_logit_diff=diff(full),
        heads=out,
    )


@torch.no_grad()
def class_means(
    model: SparseGPT, prompts: torch.Tensor, nodes: list[str], ablation: Ablation, chunk: int = 64
) -> dict[str, tuple[float, float]]:
    """Per node, its mean at the last position on the class-A and the class-B prompts of task pairs
    (pairs, 2, length), with the circuit running alone."""
    sites = {parse_node(n)[0] for n in nodes}
    sums = {s: torch.zeros(2, model.site_dims()[s], dtype=torch.float64) for s in sites}
    for i in range(0, len(prompts), chunk):
        batch = prompts[i : i + chunk]
        edits = circuit_edits(model, set(nodes), ablation, 2 * len(batch), prompts.shape[-1])
        _, acts = model(batch.flatten(0, 1), edits=edits, capture=sites)
        for s in sites:
            last = acts[s][:, -1].double().view(len(batch), 2, -1)
            sums[s] += last.sum(0)
    n = max(len(prompts), 1)
    return {
        node: (float(sums[s][0, i]) / n, float(sums[s][1, i]) / n)
        for node in nodes
        for s, i in [parse_node(node)]
    }


@torch.no_grad()
def logit_weights(model: SparseGPT, nodes: list[str], token_a: int, token_b: int) -> dict[str, float]:
    """Residual-write nodes' direct weight on logit(A) - logit(B): the final norm's gain times the
    unembedding difference at the node's channel (the input-dependent RMS factor left out)."""
    direction = model.final_norm.weight * (model.lm_head.weight[token_a] - model.lm_head.weight[token_b])
    out = {}
    for n in nodes:
        site, index = parse_node(n)
        if site_kind(site) in ("attn.resid_delta", "mlp.resid_delta"):
            out[n] = float(direction[index])
    return out
