"""A released precomputed circuit (`viz_data.pt` of openai/circuit_sparsity) as our Circuit.

`circuit_data` {location: kept channel indices} gives the nodes, `importances["pair_data"]` the edges
([matrix src x tgt, src indices (a trailing "bias"), tgt indices, (src location, tgt location)]), and the
losses, stored as twice the per-prompt loss (both prompts of a pair summed), are halved. Locations use
the released hook names, mapped by openai_format.our_hook_name.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .circuit import Circuit, Edge, Node
from .config import ModelConfig
from .openai_format import ReleaseFormatError, our_hook_name
from .sites import node_name, site_dims, site_layer

RELEASED_TARGET = 0.15  # the paper's target loss (PAPERS.md section 4); viz_data does not record it
TASK_SAMPLES_KEPT = 16  # task prompts kept with the circuit


def read_viz_data(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ReleaseFormatError(f"no file {path}")
    try:
        viz = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReleaseFormatError(f"{path} is not a plain viz_data file ({first})") from None
    if not isinstance(viz, dict) or not isinstance(viz.get("circuit_data"), dict):
        raise ReleaseFormatError(f"{path} holds no circuit_data: is it a viz_data.pt?")
    if not isinstance(viz.get("importances"), dict):
        raise ReleaseFormatError(f"{path} holds no importances")
    return viz


def _ints(xs) -> list:
    return [x if isinstance(x, str) else int(x) for x in (xs.tolist() if torch.is_tensor(xs) else xs)]


def _half(x) -> float:
    return float(x) / 2


def pair_entries(importances: dict) -> list:
    pairs = importances.get("pair_data", importances.get("pair_data_connections", []))
    if pairs and isinstance(pairs[0], list) and pairs[0] and isinstance(pairs[0][0], list):
        pairs = [p for rank in pairs for p in rank]  # one list per rank in some versions
    return pairs


def strip_padding(tokens: torch.Tensor) -> list[list[int]]:
    """Rows of token ids padded with 0 at the end, without the padding (a pitfall: the model must not
    see it)."""
    out = []
    for row in tokens.tolist():
        end = len(row)
        while end > 0 and row[end - 1] == 0:
            end -= 1
        out.append(row[:end])
    return out


def circuit_from_viz(viz: dict, cfg: ModelConfig, task: str, model_ref: str, source: str) -> Circuit:
    dims = site_dims(cfg)
    imp = viz["importances"]
    kept: dict[str, list[int]] = {}
    tau: dict[str, float] = {}
    ch_losses = imp.get("ch_interv_losses", {})
    for location, indices in viz["circuit_data"].items():
        site = our_hook_name(str(location))
        if site not in dims:
            raise ReleaseFormatError(f"circuit location {location!r} is not a node site of this model")
        idx = _ints(indices)
        bad = [i for i in idx if not isinstance(i, int) or not 0 <= i < dims[site]]
        if bad:
            raise ReleaseFormatError(f"{location}: channels {bad[:3]} outside 0..{dims[site] - 1}")
        kept[site] = idx
        losses = ch_losses.get(location)
        losses = losses.tolist() if torch.is_tensor(losses) else list(losses or [])
        for j, i in enumerate(idx):
            # a node's importance: the task loss with that channel ablated
            tau[node_name(site, i)] = _half(losses[j]) if len(losses) == len(idx) else 0.0
    nodes = sorted(
        (
            Node(n, s, site_layer(s), i, tau[n])
            for s, idx in kept.items()
            for i in idx
            for n in [node_name(s, i)]
        ),
        key=lambda n: -n.tau,
    )
    names = {n.name for n in nodes}
    edges: list[Edge] = []
    for entry in pair_entries(imp):
        matrix, src_idx, tgt_idx, (src_loc, tgt_loc) = entry
        src, dst = our_hook_name(str(src_loc)), our_hook_name(str(tgt_loc))
        src_idx, tgt_idx = _ints(src_idx), _ints(tgt_idx)
        m = torch.as_tensor(matrix, dtype=torch.float32)
        for i, j in m.nonzero().tolist():
            if i >= len(src_idx) or j >= len(tgt_idx) or src_idx[i] == "bias":
                continue
            a, b = node_name(src, src_idx[i]), node_name(dst, tgt_idx[j])
            if a in names and b in names:
                edges.append(Edge(a, b, float(m[i, j]), "weight"))
    losses = {"full": _half(imp["loss"]) if "loss" in imp else None}
    losses["circuit"] = _half(imp["interv_loss"]) if "interv_loss" in imp else None
    return Circuit(
        task=task,
        model=model_ref,
        target_loss=RELEASED_TARGET,
        nodes=nodes,
        edges=edges,
        losses=losses,
        calibration={},
        curve=[],
        validation={"released": released_extras(imp, source)},
    )


def released_extras(imp: dict, source: str) -> dict:
    """What else the release says about the circuit: per-layer ablation losses (halved) and the task's
    prompts (padding stripped; the first half are class A)."""
    out: dict = {"source": source}
    layers = imp.get("layer_interv_losses", {})
    out["layer_interv_losses"] = {str(k): _half(v) for k, v in layers.items()}
    samples = imp.get("task_samples")
    if isinstance(samples, (list, tuple)) and samples and torch.is_tensor(samples[0]):
        rows = strip_padding(samples[0])
        half = len(rows) // 2
        keep = list(range(min(half, TASK_SAMPLES_KEPT // 2))) + list(
            range(half, min(len(rows), half + TASK_SAMPLES_KEPT // 2))
        )
        out["task_samples"] = [{"class": "a" if i < half else "b", "token_ids": rows[i]} for i in keep]
    return out
