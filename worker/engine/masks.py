"""Pruning masks: one logit tau per node (NodeMasks, the paper's) or per edge (EdgeMasks), clamped to
[-1, 1] by the pruner; forward Heaviside(tau), backward the gradient of sigmoid(tau / T) (PAPERS.md
section 4). Both give the pruner the same few things: the forward-pass edits of a keep vector, the
circuit of the kept units, and a circuit's units back as flat indices.

Edge masks optimise a circuit's size in edges, the paper's unit. The candidate edges are those a node
circuit counts (circuit.edges_from_weights):
- weight: a nonzero entry of a matrix between two node sites (circuit.weight_matrices);
- residual: write channel c of a sublayer -> read channel c of every later sublayer
  (circuit.residual_links).
The "qk" pairs are not masked: as in a node circuit, a key and a query channel of the same index that
both keep an edge are joined. A masked edge carries its source node's replacement (mean, zero or
resampled) to its destination only, while the source's other edges carry its value (model.EdgeEdit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .ablation import Ablation
from .circuit import (
    Circuit,
    Edge,
    Node,
    edges_from_weights,
    make_nodes,
    nodes_by_site,
    qk_edges,
    residual_links,
    weight_matrices,
)
from .model import EdgeEdit, SparseGPT
from .sites import node_name, site_kind, site_layer


class HeavisideSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tau: torch.Tensor, temperature: float) -> torch.Tensor:
        ctx.save_for_backward(tau)
        ctx.temperature = temperature
        return (tau > 0).to(tau.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (tau,) = ctx.saved_tensors
        s = torch.sigmoid(tau / ctx.temperature)
        return grad * s * (1 - s) / ctx.temperature, None


class Masks(torch.nn.Module):
    """All mask logits in one flat tensor; `slices` maps a part (a site, a matrix) to its range."""

    unit = ""

    def __init__(self, sizes: dict[str, int], mean: float, std: float, generator: torch.Generator):
        super().__init__()
        self.slices, start = {}, 0
        for part, size in sizes.items():
            self.slices[part] = (start, start + size)
            start += size
        self.tau = torch.nn.Parameter(mean + std * torch.randn(start, generator=generator))

    def keep(self, temperature: float) -> torch.Tensor:
        """Exactly 0/1 forward (Heaviside), sigmoid(tau / T) gradient backward."""
        return HeavisideSTE.apply(self.tau, temperature)


class NodeMasks(Masks):
    """One mask per node of the given sites."""

    unit = "nodes"

    def by_site(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {s: flat[a:b] for s, (a, b) in self.slices.items()}

    def edit(self, model: SparseGPT, ablation: Ablation, keep: torch.Tensor, batch: int, length: int) -> dict:
        """model(...) keyword arguments for a pass over `batch` prompts of `length` tokens in which the
        nodes with keep 0 are ablated."""
        return {"edits": ablation.edits(model, self.by_site(keep), batch, length)}

    def parts(self, model: SparseGPT, kept: list[int], tau: torch.Tensor) -> tuple[list[Node], list[Edge]]:
        """The circuit of the kept nodes (largest tau first): its nodes and the edges among them."""
        names = [self.node(i) for i in kept]
        nodes = make_nodes(names, {n: float(tau[i]) for n, i in zip(names, kept, strict=True)})
        return nodes, edges_from_weights(model, names)

    def indices(self, circuit: Circuit) -> list[int]:
        return [self.slices[n.site][0] + n.index for n in circuit.nodes]

    def node(self, flat_index: int) -> str:
        for site, (a, b) in self.slices.items():
            if a <= flat_index < b:
                return node_name(site, flat_index - a)
        raise IndexError(flat_index)


@dataclass
class EdgeGroup:
    """The candidate edges of one matrix (kind "weight") or one writer -> reader link ("residual")."""

    kind: str
    src: str
    dst: str
    src_index: torch.Tensor  # (n,) channel of the source site
    dst_index: torch.Tensor  # (n,) channel of the destination site
    weight: torch.Tensor  # (n,) the matrix entry; the reader's norm gain for a residual link

    @property
    def key(self) -> str:
        return f"{self.src}->{self.dst}"


@torch.no_grad()
def edge_groups(model: SparseGPT) -> list[EdgeGroup]:
    groups = []
    for src, dst, w in weight_matrices(model):
        dst_index, src_index = w.nonzero(as_tuple=True)
        weight = w[dst_index, src_index].float().cpu()
        groups.append(EdgeGroup("weight", src, dst, src_index.cpu(), dst_index.cpu(), weight))
    for writer, reader, gain in residual_links(model):
        channels = torch.arange(len(gain))
        groups.append(EdgeGroup("residual", writer, reader, channels, channels, gain.detach().float().cpu()))
    return groups


class EdgeMasks(Masks):
    """One mask per candidate edge of a model; `slices` maps an EdgeGroup's key to its range."""

    unit = "edges"

    def __init__(self, model: SparseGPT, mean: float, std: float, generator: torch.Generator):
        groups = edge_groups(model)
        super().__init__({g.key: len(g.weight) for g in groups}, mean, std, generator)
        self.groups, self.dims = groups, model.site_dims()
        self._index: dict[tuple[str, str], int] | None = None

    def _locate(self, flat_index: int) -> tuple[EdgeGroup, int]:
        for g in self.groups:
            a, b = self.slices[g.key]
            if a <= flat_index < b:
                return g, flat_index - a
        raise IndexError(flat_index)

    def edge(self, flat_index: int) -> Edge:
        g, i = self._locate(flat_index)
        src, dst = node_name(g.src, int(g.src_index[i])), node_name(g.dst, int(g.dst_index[i]))
        return Edge(src, dst, float(g.weight[i]), g.kind)

    def edit(self, model: SparseGPT, ablation: Ablation, keep: torch.Tensor, batch: int, length: int) -> dict:
        """model(...) keyword arguments for a pass over `batch` prompts of `length` tokens in which the
        edges with keep 0 are ablated (keep may be fractional and carry gradients)."""
        replace = ablation.replacements(model, sorted({g.src for g in self.groups}), batch, length)
        matrices, reads = {}, {}
        for g in self.groups:
            a, b = self.slices[g.key]
            if g.kind == "weight":
                full = torch.ones(self.dims[g.dst], self.dims[g.src]).index_put(
                    (g.dst_index, g.src_index), keep[a:b]
                )
                matrices[g.dst] = (full, replace[g.src])
            else:
                full = torch.ones(self.dims[g.src]).index_put((g.src_index,), keep[a:b])
                reads.setdefault(g.dst, []).append((g.src, full, replace[g.src]))
        return {"edge_edit": EdgeEdit(matrices, reads)}

    def parts(self, model: SparseGPT, kept: list[int], tau: torch.Tensor) -> tuple[list[Node], list[Edge]]:
        """The circuit of the kept edges (largest tau first): its nodes (every end of a kept edge, tau the
        largest of its edges') and its edges (the kept ones, then the qk pairs)."""
        edges = [self.edge(i) for i in kept]
        node_tau: dict[str, float] = {}
        for e, i in zip(edges, kept, strict=True):
            for name in (e.src, e.dst):
                node_tau.setdefault(name, float(tau[i]))
        kept_by_site = nodes_by_site(node_tau)
        layers = sorted(site_layer(s) for s in kept_by_site if site_kind(s) == "attn.q")
        edges += [e for layer in layers for e in qk_edges(kept_by_site, layer)]
        return make_nodes(list(node_tau), node_tau), edges

    def ends_in(self, names: set[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(source in names, destination in names): two bool vectors over the flat edges."""
        src, dst = (
            torch.zeros(self.tau.numel(), dtype=torch.bool),
            torch.zeros(self.tau.numel(), dtype=torch.bool),
        )
        chosen = nodes_by_site(names)
        for g in self.groups:
            a, b = self.slices[g.key]
            for site, ends, out in ((g.src, g.src_index, src), (g.dst, g.dst_index, dst)):
                if site in chosen:
                    member = torch.zeros(self.dims[site], dtype=torch.bool)
                    member[chosen[site]] = True
                    out[a:b] = member[ends]
        return src, dst

    def circuit_keep(
        self, circuit: Circuit, nodes: set[str], added: frozenset[str] = frozenset()
    ) -> torch.Tensor:
        """keep (0/1 over the flat edges) of an edge circuit run on the node set `nodes` (its own nodes,
        some switched off, some `added`): its edges between those nodes, and every edge between them that
        touches an added node."""
        in_circuit = torch.zeros(self.tau.numel(), dtype=torch.bool)
        in_circuit[self.indices(circuit)] = True
        src_kept, dst_kept = self.ends_in(nodes)
        src_added, dst_added = self.ends_in(set(added))
        return (src_kept & dst_kept & (in_circuit | src_added | dst_added)).float()

    def indices(self, circuit: Circuit) -> list[int]:
        """Flat indices of a circuit's masked edges (weight and residual kinds)."""
        if self._index is None:
            self._index = {}
            for g in self.groups:
                a, _ = self.slices[g.key]
                for i, (s, d) in enumerate(zip(g.src_index.tolist(), g.dst_index.tolist(), strict=True)):
                    self._index[node_name(g.src, s), node_name(g.dst, d)] = a + i
        return [self._index[e.src, e.dst] for e in circuit.edges if e.kind in ("weight", "residual")]
