"""Any circuit (pruned, transcoder attribution, imported) as a circuit-tracer / Neuronpedia graph JSON:
`metadata`, `qParams`, `nodes` (node_id, feature, layer, ctx_idx, feature_type, activation, influence,
clerp, ...) and `links` (source, target, weight), the fields circuit-tracer's frontend graph model reads.

Our nodes are channels, not positions: every node sits at the task's last position (`ctx_idx`). A layer
holds 8 sites, so `feature` is slot * stride + channel (stride a power of ten above the widest site) and
`clerp` is our node name, e.g. `1.mlp.post_act[7]`."""

from __future__ import annotations

import math

from .circuit import Circuit
from .sites import LAYER_FORWARD, parse_node, site_kind, site_layer


def _slot(site: str) -> int:
    kind = site_kind(site)
    return LAYER_FORWARD.index(kind) if kind in LAYER_FORWARD else 0


def graph_json(
    circuit: Circuit,
    slug: str,
    model_name: str,
    n_layer: int,
    prompt_tokens: list[str] | None = None,
    title: str | None = None,
) -> dict:
    tokens = list(prompt_tokens or [])
    ctx = max(len(tokens) - 1, 0)
    parsed = [(n, *parse_node(n.name)) for n in circuit.nodes]
    widest = max((i for _, _, i in parsed), default=0) + 1
    stride = 10 ** math.ceil(math.log10(widest + 1))

    def layer_of(site: str) -> str:
        if site == "embed":
            return "E"
        if site == "final_resid":
            return str(n_layer)
        return str(site_layer(site))

    ids: dict[str, str] = {}
    nodes = []
    for node, site, index in parsed:
        layer = layer_of(site)
        feature = index if site in ("embed", "final_resid") else _slot(site) * stride + index
        node_id = f"{layer}_{feature}_{ctx}"
        ids[node.name] = node_id
        nodes.append(
            {
                "node_id": node_id,
                "jsNodeId": f"{layer}_{feature}-0",
                "feature": feature,
                "layer": layer,
                "ctx_idx": ctx,
                "feature_type": "embedding" if site == "embed" else "cross layer transcoder",
                "token_prob": 0.0,
                "is_target_logit": False,
                "run_idx": 0,
                "reverse_ctx_idx": 0,
                "activation": None,
                "influence": node.tau,
                "clerp": node.name,
            }
        )
    links = [
        {"source": ids[e.src], "target": ids[e.dst], "weight": e.weight}
        for e in circuit.edges
        if e.src in ids and e.dst in ids
    ]
    return {
        "metadata": {
            "slug": slug,
            "scan": model_name,
            "transcoder_list": [],
            "prompt_tokens": tokens,
            "prompt": "".join(tokens),
            "node_threshold": None,
            "title": title or f"{circuit.task} circuit of {model_name}",
            "losses": circuit.losses,
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }
