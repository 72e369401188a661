"""Adversarial probes of a circuit (PAPERS.md section 5: the bracket circuit averages a depth signal over
the list, so long lists dilute it). A probe turns one knob on a task's held-out prompts: the same filler
text is appended `value` times to both prompts of every pair, and the full model, the circuit (its nodes
kept, the rest ablated as when it was pruned) and one circuit node's activation at the last position
are measured at each value."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .ablation import Ablation, prunable_sites
from .masks import NodeMasks
from .model import SparseGPT
from .prune import calibrated_loss, task_logits
from .sites import parse_node
from .tasks.base import TaskData, pair_labels


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    task: str  # the task whose held-out prompts it turns the knob on
    knob: str  # what one step of the knob adds
    filler: str  # the text appended per step, at the end of every prompt (both sides of a pair)
    values: tuple[int, ...]
    description: str


PROBES = {
    p.name: p
    for p in (
        ProbeSpec(
            "quote_distance",
            "single_double_quote",
            "words inside the string, between the opening quote and the end",
            " a",
            (0, 1, 2, 4, 8, 16, 32, 64),
            "The string literal grows before its closing quote: does the circuit still see which quote "
            "opened it?",
        ),
        ProbeSpec(
            "bracket_dilution",
            "bracket_counting",
            "elements appended to the list before its end",
            ", 1",
            (0, 1, 2, 4, 8, 16, 32),
            "The paper's bracket example: a longer list dilutes the averaged nesting-depth signal, and the "
            "model closes a nested list with `]`.",
        ),
    )
}


class ProbeError(ValueError):
    pass


def probe_prompts(prompts: torch.Tensor, unit: list[int], value: int) -> torch.Tensor:
    """(pairs, 2, T) -> (pairs, 2, T + value * len(unit)): the filler tokens appended to every prompt."""
    tail = torch.tensor(unit * value, dtype=prompts.dtype, device=prompts.device)
    return torch.cat([prompts, tail.expand(*prompts.shape[:2], -1)], -1)


@torch.no_grad()
def run_probe(
    model: SparseGPT,
    tok,
    task: TaskData,
    spec: ProbeSpec,
    ablation: Ablation,
    nodes: list[str],
    node: str,
    calibration: dict,
    pairs: int = 64,
    on_progress=None,
) -> dict:
    """The probe's figures at every knob value that fits the model's context: full-model and circuit
    accuracy and loss (circuit: calibrated with its own scale and shift), and `node`'s mean activation
    at the last position on the A and on the B prompts (full model)."""
    if task.name != spec.task:
        raise ProbeError(f"probe {spec.name} runs on task {spec.task}, not {task.name}")
    unit = tok.encode(spec.filler).ids
    dims = model.site_dims()
    masks = NodeMasks({s: dims[s] for s in prunable_sites(model)}, 0.0, 0.0, None)
    keep = torch.zeros(masks.tau.numel())
    for name in nodes:
        site, index = parse_node(name)
        keep[masks.slices[site][0] + index] = 1
    site, index = parse_node(node)
    base = task.test[:pairs]
    labels = pair_labels(len(base))
    fits = [v for v in spec.values if base.shape[-1] + v * len(unit) <= model.cfg.n_ctx]
    scale, shift = calibration.get("scale", 1.0), calibration.get("shift", 0.0)
    points = []
    for i, value in enumerate(fits):
        prompts = probe_prompts(base, unit, value)
        full = task_logits(model, task, prompts, None, masks, ablation)
        circuit = task_logits(model, task, prompts, keep, masks, ablation)
        _, acts = model(prompts.flatten(0, 1).to(next(model.parameters()).device), capture=[site])
        last = acts[site][:, -1, index].view(-1, 2).float().cpu()
        points.append(
            {
                "value": value,
                "tokens": value * len(unit),
                "full_accuracy": float((full.argmax(-1) == labels).float().mean()),
                "full_loss": F.cross_entropy(full, labels).item(),
                "circuit_accuracy": float((circuit.argmax(-1) == labels).float().mean()),
                "circuit_loss": calibrated_loss(circuit, labels, scale, shift),
                "node_a": float(last[:, 0].mean()),
                "node_b": float(last[:, 1].mean()),
            }
        )
        if on_progress:
            on_progress((i + 1) / len(fits), f"{spec.knob}: {value}")
    return {
        "probe": spec.name,
        "task": task.name,
        "knob": spec.knob,
        "filler": spec.filler,
        "node": node,
        "pairs": len(base),
        "ablation": ablation.mode,
        "points": points,
    }
