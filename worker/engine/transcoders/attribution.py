"""Attribution circuits between transcoder features (PAPERS.md section 6).

In the replacement model (every MLP replaced by its transcoder), at any position feature i of layer l
writes a_i W_dec_l[:, i] into the residual stream and feature j of a later layer l' reads it through its
RMSNorm, whose scale s_l' (input dependent) is frozen at its value on the prompt. The edge is
    a_i * s_l' * [j active]  x  W_dec_l[:, i] . (g_l' * W_enc_l'[j, :])
    (activation factor)          (weight factor: input invariant; g = the norm's weight)
averaged over the task's prompts and their positions (`activation` is the mean of the first factor).
Paths through attention to other positions are not edges. A feature's importance (a node's `tau`) is its
effect on the task: on log sigmoid(logit difference), the logit difference being correct minus wrong
completion at the last position (so minus the per-prompt two-class CE), mean over prompts; activation x
gradient summed over positions, by autograd through the whole replacement model, i.e. the first-order
effect of switching the feature off, paths through attention included. Positive: the feature helps.
Pruning switches features off (zero at every position, like a pruned node), keeping those that carry the
task: a bisection on the number kept (largest |effect| first), then a greedy pass (search.py), while the
replacement model's task CE stays within `tolerance` of its CE with every feature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from ..circuit import Circuit, Edge, Node
from ..config import CONFIG, SEED_MAX
from ..model import SparseGPT
from ..prune import frozen
from ..search import ProgressFn, bisect_then_greedy
from ..sites import feature_site, node_name
from ..tasks import TaskData
from ..tasks.base import pair_labels, two_class_logits
from .coders import SparseCoder, Transcoders
from .replacement import Replacement, coder_fn, coder_times, norm_scale, replacement_model


class CircuitConfig(BaseModel):
    model_config = CONFIG

    tolerance: float = Field(0.02, ge=0, le=10)  # allowed rise of the per-prompt task CE over all features
    # Parts of the test split (see transcoder_circuit), each at most a quarter of it; the rest reports.
    attribution_pairs: int = Field(64, ge=1, le=4096)  # pairs the graph and the effects are averaged over
    eval_pairs: int = Field(128, ge=1, le=4096)  # pairs the pruning is judged on
    seed: int = Field(0, ge=0, le=SEED_MAX)  # which pairs go where
    curve_points: int = Field(12, ge=2, le=64)
    min_edge: float = Field(0.0, ge=0, le=1e6)  # leave out edges with |weight| below this


@dataclass
class Attribution:
    """The linearised graph of the replacement model over a task's prompts (all positions), and each
    feature's effect on the task's logit difference."""

    acts: list[torch.Tensor]  # per layer (N, width): feature activations at every (prompt, position)
    scales: list[torch.Tensor]  # per layer (N,): the frozen RMSNorm scale of that layer's MLP input
    weight_products: dict[tuple[int, int], torch.Tensor]  # (l, l') -> (width_l, width_l')
    effects: list[torch.Tensor]  # per layer (width,): effect on the task (minus its CE), see feature_effects


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
    mults = [torch.ones(c.width, requires_grad=True) for c in coders]
    fns = {i: coder_times(c, m) for i, (c, m) in enumerate(zip(coders, mults, strict=True))}
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
        logits = _last_logits(model, coders, part.flatten(0, 1), keep)
        l2 = two_class_logits(logits, task)
        losses += F.cross_entropy(l2, pair_labels(len(part)), reduction="sum").item()
        diffs += float(logit_difference(logits, task).sum())
        n += 2 * len(part)
    return losses / n, diffs / n


@torch.no_grad()
def task_logits_with(model, coders, task: TaskData, prompts: torch.Tensor, keep=None, chunk: int = 64):
    """Two-class logits of every prompt (pairs flattened) of the replacement model with only the
    features of `keep` on (as in task_loss_with): live ablation of a transcoder circuit."""
    return torch.cat(
        [
            two_class_logits(_last_logits(model, coders, prompts[i : i + chunk].flatten(0, 1), keep), task)
            for i in range(0, len(prompts), chunk)
        ]
    )


def _last_logits(model, coders, x: torch.Tensor, keep) -> torch.Tensor:
    if keep == "clean":
        return model(x, last_only=True)[0]
    return replacement_model(model, coders, keep)(x, last_only=True)[0]


def prune_features(
    candidates: list[int],
    loss: Callable[[list[int]], float],
    target: float,
    on_progress: ProgressFn | None = None,
) -> tuple[list[int], int]:
    """The features to keep, from `candidates` (most important first): the smallest top-k whose loss is
    <= target, then one greedy pass over them (search.bisect_then_greedy). -> (kept, k of the bisection)."""
    found = bisect_then_greedy(candidates, loss, lambda value: value <= target, on_progress=on_progress)
    return found.kept, found.bisection_k


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
    found = bisect_then_greedy(
        candidates, loss, lambda value: value <= target, on_progress=lambda f, m: report(0.2 + 0.6 * f, m)
    )
    kept, bisection_k, held_loss = found.kept, found.bisection_k, found.score

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
