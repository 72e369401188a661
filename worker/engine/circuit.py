"""Circuit / Node / Edge: the kept nodes of a pruned model, edges read off its weights, JSON form.

JSON schema (version 1), top-level keys:
  schema_version  1
  task, model     task name; model reference (folder or id)
  target_loss     the bisection target (per-prompt two-class CE)
  nodes           [{name, site, layer, index, tau}]  name = "site[index]", largest tau first
                  (transcoder circuits: tau = the feature's attribution to the logit difference,
                  largest |tau| first)
  edges           [{src, dst, weight, kind}]  kind: "weight" (a nonzero matrix entry), "residual"
                  (a write channel to the same-index read channel later on; weight = reader's norm
                  gain), "qk" (a key channel and the query channel it is dotted with; weight 1) or
                  "attribution" (transcoder circuits: feature -> later feature, with two more fields,
                  weight = activation x weight_product, see worker/engine/transcoders.py)
  losses          {full, circuit, ablated, circuit_uncalibrated}: mean per-prompt CE on the test split;
                  circuit_train_masks: the calibrated CE on (up to eval_pairs of) the pairs the masks
                  trained on (test minus this = the generalisation gap);
                  circuit_train_heldout: the circuit's calibrated CE on the held-out train pairs
                  (transcoder circuits add `replacement` and the mean logit differences `logit_diff_*`)
  calibration     {scale, shift} on the two-class logit difference
  curve           [{k, edges, loss}]  calibrated test loss of the top-k nodes by tau (edges among them)
  runs            the hyper-parameter search, one record per run
  validation      optional: controls (random circuit, shuffled labels, nonsense task, generalisation
                  gap) and `checks`, each control judged pass/fail against its stated criterion
  ablation        what masked nodes were replaced by while pruning: mean | zero | resample
  unit            what the masks were on: "nodes" (the paper's) or "edges" (worker/engine/masks.py);
                  k in `curve`, the random control and the faithfulness points count that unit
  faithfulness    {metric, unit, pairs, modes: {mode: {m_full, m_empty, points: [{percent, nodes|edges, m,
                  f}], cpr, cmd}}}: the MIB faithfulness curve over the pruner's order, per ablation
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .model import SparseGPT
from .sites import LAYER_SITES, layer_site, node_name, parse_node, site_kind, site_layer

SCHEMA_VERSION = 1


@dataclass
class Node:
    name: str
    site: str
    layer: int
    index: int
    tau: float


@dataclass
class Edge:
    src: str
    dst: str
    weight: float
    kind: str
    activation: float | None = None  # attribution edges: the input-dependent factor
    weight_product: float | None = None  # attribution edges: the input-invariant factor


@dataclass
class Circuit:
    task: str
    model: str
    target_loss: float
    nodes: list[Node]
    edges: list[Edge]
    losses: dict[str, float]
    calibration: dict[str, float]
    curve: list[dict]
    runs: list[dict] = field(default_factory=list)
    validation: dict = field(default_factory=dict)
    ablation: str = "mean"
    faithfulness: dict = field(default_factory=dict)
    unit: str = "nodes"  # what the pruner's masks were on: nodes or edges

    def to_json(self) -> dict:
        out = {"schema_version": SCHEMA_VERSION, **asdict(self)}
        out["edges"] = [{k: v for k, v in e.items() if v is not None} for e in out["edges"]]
        return out

    @classmethod
    def from_json(cls, data: dict) -> Circuit:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"circuit schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}")
        body = {k: v for k, v in data.items() if k != "schema_version"}
        body["nodes"] = [Node(**n) for n in body["nodes"]]
        body["edges"] = [Edge(**e) for e in body["edges"]]
        return cls(**body)


def nodes_by_site(nodes) -> dict[str, list[int]]:
    """Node names -> {site: sorted channel indices}."""
    out: dict[str, list[int]] = {}
    for n in nodes:
        site, idx = parse_node(n)
        out.setdefault(site, []).append(idx)
    return {s: sorted(v) for s, v in out.items()}


def _matrix_edges(w: torch.Tensor, src: str, dst: str, kept: dict[str, list[int]]) -> list[Edge]:
    """Edges src[i] -> dst[j] for nonzero w[j, i] (torch Linear layout: out x in)."""
    ins, outs = kept.get(src, []), kept.get(dst, [])
    if not ins or not outs:
        return []
    sub = w[outs][:, ins]
    return [
        Edge(node_name(src, ins[i]), node_name(dst, outs[j]), float(sub[j, i]), "weight")
        for j, i in sub.nonzero().tolist()
    ]


def weight_matrices(model: SparseGPT) -> list[tuple[str, str, torch.Tensor]]:
    """(source site, destination site, weight out x in) of every matrix between node sites, in forward
    order. The heads' outputs reach the output projection through the attention mixing, so its source
    is `attn.v`."""
    out = []
    for layer, block in enumerate(model.blocks):
        at = [layer_site(layer, kind) for kind in LAYER_SITES]
        act_in, q, k, v, attn_delta, mlp_in, post_act, mlp_delta = at
        out += [
            (act_in, q, block.attn.q_proj.weight),
            (act_in, k, block.attn.k_proj.weight),
            (act_in, v, block.attn.v_proj.weight),
            (v, attn_delta, block.attn.o_proj.weight),
            (mlp_in, post_act, block.mlp.fc_in.weight),
            (post_act, mlp_delta, block.mlp.fc_out.weight),
        ]
    return out


def residual_links(model: SparseGPT) -> list[tuple[str, str, torch.Tensor]]:
    """(writer site, reader site, the reader's norm gain) for every sublayer's residual write and every
    later sublayer's residual read: write channel c reaches read channel c."""
    readers = [
        (layer_site(layer, f"{kind}.act_in"), block_norm.weight)
        for layer, block in enumerate(model.blocks)
        for kind, block_norm in (("attn", block.attn.norm), ("mlp", block.mlp.norm))
    ]
    writers = [r.replace("act_in", "resid_delta") for r, _ in readers]
    return [(w, r, gain) for i, w in enumerate(writers) for r, gain in readers[i + 1 :]]


def qk_edges(kept: dict[str, list[int]], layer: int) -> list[Edge]:
    """A key channel and the query channel it is dotted with, where both are kept (weight 1)."""
    q, k = layer_site(layer, "attn.q"), layer_site(layer, "attn.k")
    return [
        Edge(node_name(k, c), node_name(q, c), 1.0, "qk")
        for c in sorted(set(kept.get(q, [])) & set(kept.get(k, [])))
    ]


@torch.no_grad()
def edges_from_weights(model: SparseGPT, nodes: list[str]) -> list[Edge]:
    kept = nodes_by_site(nodes)
    edges: list[Edge] = []
    for src, dst, w in weight_matrices(model):
        edges += _matrix_edges(w, src, dst, kept)
        if site_kind(dst) == "attn.v":
            edges += qk_edges(kept, site_layer(dst))
    for wsite, rsite, gain in residual_links(model):
        for c in sorted(set(kept.get(wsite, [])) & set(kept.get(rsite, []))):
            edges.append(Edge(node_name(wsite, c), node_name(rsite, c), float(gain[c]), "residual"))
    return edges


def make_nodes(names: list[str], tau: dict[str, float]) -> list[Node]:
    out = []
    for n in names:
        site, idx = parse_node(n)
        out.append(Node(n, site, site_layer(site), idx, tau[n]))
    return out


def size_comparison(pairs: dict[str, tuple[Circuit, Circuit]]) -> dict:
    """Dense/sparse circuit sizes per task (sparse, dense) and the geometric mean of the ratios.
    A ratio counts an empty circuit (a task the direct path alone does) as size 1, on both sides, so that
    it stays finite and two empty circuits compare as 1."""
    rows = []
    for task, (sparse, dense) in pairs.items():
        rows.append(
            {
                "task": task,
                "sparse_nodes": len(sparse.nodes),
                "sparse_edges": len(sparse.edges),
                "dense_nodes": len(dense.nodes),
                "dense_edges": len(dense.edges),
                "sparse_loss": sparse.losses["circuit"],
                "dense_loss": dense.losses["circuit"],
                "node_ratio": max(1, len(dense.nodes)) / max(1, len(sparse.nodes)),
                "edge_ratio": max(1, len(dense.edges)) / max(1, len(sparse.edges)),
            }
        )

    def geomean(key: str) -> float:
        return math.exp(sum(math.log(max(r[key], 1e-12)) for r in rows) / len(rows)) if rows else float("nan")

    return {
        "tasks": rows,
        "geomean_edge_ratio": geomean("edge_ratio"),
        "geomean_node_ratio": geomean("node_ratio"),
    }
