"""Learned node masks -> the smallest circuit that does a task (PAPERS.md section 4).

One mask logit tau per node at every site of every layer, clamped to [-1, 1]. The forward pass uses
Heaviside(tau) (masked nodes are ablated: by their mean as in the paper, zero or resampled); the
backward pass uses the gradient of sigmoid(tau / T).
Objective: two-class task CE + k_coef * (number of active nodes). Then bisection on the number of kept
nodes (largest tau first) for the smallest circuit whose calibrated task loss <= target.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from .ablation import (
    ABLATION_MODES,
    Ablation,
    AblationMode,
    nonsense_task,
    prunable_sites,
    shuffled_labels,
    validation_checks,
)
from .circuit import Circuit
from .config import CONFIG, SEED_MAX
from .masks import EdgeMasks, NodeMasks
from .model import SparseGPT
from .search import drop_greedily, smallest_top_k
from .tasks.base import TaskData, pair_labels, source_file, two_class_logits


class PruneConfig(BaseModel):
    model_config = CONFIG

    target_loss: float = Field(0.15, gt=0, le=100)
    k_coef: float = Field(
        1e-3, gt=0, le=10
    )  # 10x the paper's centre: our runs take ~100 steps, not thousands
    lr: float = Field(3e-3, gt=0, le=10)
    weight_decay: float = Field(1e-3, ge=0, le=10)
    beta2: float = Field(0.95, gt=0, lt=1)
    temperature: float = Field(1.0, gt=0, le=100)
    steps: int = Field(100, ge=1, le=100_000)
    batch_pairs: int = Field(32, ge=1, le=65_536)
    eval_pairs: int = Field(256, ge=1, le=65_536)
    init_mean: float = Field(0.1, ge=-100, le=100)
    init_std: float = Field(0.01, ge=0, le=100)
    runs: int = Field(2, ge=1, le=256)  # hyper-parameter search around the centre
    # Pairs from further held-out files that choose between runs (0: the bisection pairs choose; a
    # wide search that picks the best of many runs on the pairs that sized them overfits those pairs).
    select_pairs: int = Field(0, ge=0, le=65_536)
    refine_nodes: int = Field(
        32, ge=0, le=65_536
    )  # greedy pass over the circuit's lowest-ranked nodes (0 = off)
    curve_points: int = Field(10, ge=2, le=64)  # loss-vs-k curve: k values on a geometric grid
    curve_pairs: int = Field(256, ge=1, le=65_536)  # test pairs each curve point is measured on
    seed: int = Field(0, ge=0, le=SEED_MAX)
    ablation: AblationMode = "mean"  # what masked nodes are replaced by (worker/engine/ablation.py)
    unit: Literal["nodes", "edges"] = "nodes"  # what the masks are on (worker/engine/masks.py)
    faithfulness_pairs: int = Field(128, ge=1, le=65_536)  # test pairs of each faithfulness-curve point


MAX_CALIBRATION_SCALE = 4.0


def calibrate(logits2: torch.Tensor, labels: torch.Tensor, steps: int = 16) -> tuple[float, float]:
    """Scale in (0, MAX_CALIBRATION_SCALE] and shift of the two-class logit difference that minimise CE
    (LBFGS). Bounded: on pairs a circuit separates perfectly the unbounded optimum is an infinite scale,
    and a circuit whose tiny logit differences are blown up that way fails on every new mistake; a
    positive scale never turns the circuit's answer around."""
    d = (logits2[:, 0] - logits2[:, 1]).detach()
    start = -math.log(MAX_CALIBRATION_SCALE - 1)  # scale 1 at the start
    params = torch.tensor([start, 0.0], requires_grad=True)
    opt = torch.optim.LBFGS([params], max_iter=steps, line_search_fn="strong_wolfe")
    sign = 1 - 2 * labels.float()  # +1 when A is right

    def closure():
        opt.zero_grad()
        scale = MAX_CALIBRATION_SCALE * torch.sigmoid(params[0])
        loss = F.softplus(-sign * (scale * d + params[1])).mean()
        loss.backward()
        return loss

    opt.step(closure)
    scale, shift = (MAX_CALIBRATION_SCALE * torch.sigmoid(params[0])).item(), params[1].item()
    if not (math.isfinite(scale) and math.isfinite(shift)):
        return 1.0, 0.0
    return scale, shift


def calibrated_loss(logits2: torch.Tensor, labels: torch.Tensor, scale: float, shift: float) -> float:
    d = scale * (logits2[:, 0] - logits2[:, 1]) + shift
    return F.softplus(-(1 - 2 * labels.float()) * d).mean().item()


@torch.no_grad()
def task_logits(
    model: SparseGPT, task: TaskData, prompts: torch.Tensor, keep_flat, masks, ablation: Ablation, chunk=128
):
    """Two-class logits of every prompt (pairs flattened) with the units (nodes or edges) outside keep
    ablated."""
    device, out = next(model.parameters()).device, []
    for i in range(0, len(prompts), chunk):
        x = prompts[i : i + chunk].flatten(0, 1).to(device)
        edits = {} if keep_flat is None else masks.edit(model, ablation, keep_flat, *x.shape)
        logits, _ = model(x, **edits, last_only=True)
        out.append(two_class_logits(logits, task).cpu())
    return torch.cat(out)


@dataclass
class SearchRun:
    k_coef: float
    lr: float
    nodes_active: int  # tau > 0 after training
    nodes: int  # after bisection
    loss: float  # calibrated loss of the circuit on the held-out train pairs
    reached_target: bool
    stage: str = "search"  # "search": a run's bisection; "greedy": the pass over the best run's circuit


@dataclass
class PruneResult:
    order: list[int]  # flat node indices, largest tau first
    tau: torch.Tensor
    k: int
    scale: float
    shift: float
    masks: NodeMasks
    selection_loss: float = math.nan  # calibrated loss on the held-out train pairs that chose k
    runs: list[SearchRun] = field(default_factory=list)


def make_masks(model: SparseGPT, unit: str, mean: float, std: float, generator: torch.Generator):
    """One mask logit per node of every prunable site, or per candidate edge (masks.py)."""
    if unit == "edges":
        return EdgeMasks(model, mean, std, generator)
    dims = model.site_dims()
    return NodeMasks({s: dims[s] for s in prunable_sites(model)}, mean, std, generator)


def learn_masks(
    model, task, prompts, ablation, cfg: PruneConfig, k_coef: float, lr: float, seed: int, progress=None
):
    """Mask logits trained on `prompts` (pairs) with the task CE + k_coef * active units objective."""
    g = torch.Generator().manual_seed(seed)
    masks = make_masks(model, cfg.unit, cfg.init_mean, cfg.init_std, g)
    opt = torch.optim.AdamW(masks.parameters(), lr=lr, betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay)
    device = next(model.parameters()).device  # masks stay on the CPU; SiteEdit moves them
    for step in range(cfg.steps):
        idx = torch.randint(0, len(prompts), (min(cfg.batch_pairs, len(prompts)),), generator=g)
        keep = masks.keep(cfg.temperature)
        x = prompts[idx].flatten(0, 1).to(device)
        logits, _ = model(x, **masks.edit(model, ablation, keep, *x.shape), last_only=True)
        task_ce = F.cross_entropy(two_class_logits(logits, task), pair_labels(len(idx), device))
        loss = task_ce.cpu() + k_coef * keep.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            masks.tau.clamp_(-1, 1)
        if progress:
            progress(step + 1, cfg.steps)
    return masks


def bisect_nodes(model, task, ablation, masks: NodeMasks, order: list[int], hi: int, target: float, prompts):
    """Smallest k (top-k nodes by tau) whose calibrated loss <= target; (k, loss, scale, shift)."""

    def fit(nodes: list[int]):
        return calibrated_fit(model, task, ablation, masks, keep_top(masks, nodes, len(nodes)), prompts)

    k, found = smallest_top_k(order, fit, lambda f: f[0] <= target, start=hi)
    return (k, *found)


def split_train(task: TaskData, eval_pairs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out pairs for bisection and calibration, pairs the masks are trained on), from disjoint
    files: the circuit's size and calibration are chosen on code the masks never saw, so that its loss
    there predicts its loss on the test split (pairs from same-file neighbours share the file's quirks).
    The held-out part takes whole files, in an order fixed by seed, until it has eval_pairs pairs
    (at most a quarter of the split)."""
    held_out, rest = split_files(task, [eval_pairs], seed)
    return held_out, rest


def split_files(task: TaskData, sizes: list[int], seed: int = 0) -> list[torch.Tensor]:
    """The train split in len(sizes) + 1 file-disjoint parts: whole files, in an order fixed by seed,
    until each part has its size (at most a quarter of the split each), then the rest."""
    train = task.train
    if len(train) < 8:
        return [train] * (len(sizes) + 1)
    sources = task.sources.get("train") or [f"pair{i}" for i in range(len(train))]
    files_of = [source_file(s) for s in sources]
    per_file = Counter(files_of)
    files = list(per_file)  # first-seen order, then shuffled by seed
    random.Random(f"{task.name}/{seed}").shuffle(files)
    parts, taken = [], set()
    for size in sizes:
        want, part, count = min(size, len(train) // 4), set(), 0
        for f in files:
            if count >= want:
                break
            if f not in taken and (count + per_file[f] <= want or not part):
                part.add(f)
                count += per_file[f]
        taken |= part
        parts.append(train[torch.tensor([f in part for f in files_of])])
    return [*parts, train[torch.tensor([f not in taken for f in files_of])]]


def train_parts(task: TaskData, cfg: PruneConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bisection and calibration pairs, run-selection pairs, mask-training pairs) for a prune."""
    if not cfg.select_pairs:
        held_out, mask_train = split_train(task, cfg.eval_pairs, cfg.seed)
        return held_out, held_out, mask_train
    held_out, select, mask_train = split_files(task, [cfg.eval_pairs, cfg.select_pairs], cfg.seed)
    return held_out, select, mask_train


@contextlib.contextmanager
def frozen(model: torch.nn.Module):
    """Model weights out of autograd (only the masks learn), restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval().requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def calibrated_fit(model, task, ablation, masks: NodeMasks, keep: torch.Tensor, prompts):
    """Calibrate the kept-node model on `prompts`; its calibrated loss there: (loss, scale, shift)."""
    labels = pair_labels(len(prompts))
    l2 = task_logits(model, task, prompts, keep, masks, ablation)
    scale, shift = calibrate(l2, labels)
    return calibrated_loss(l2, labels, scale, shift), scale, shift


def drop_unneeded(
    model, task, ablation, masks: NodeMasks, order: list[int], k: int, target: float, prompts, tries
):
    """One greedy pass after bisection: try leaving out each of the circuit's `tries` lowest-ranked nodes
    (lowest tau first) and keep it out while the calibrated loss stays <= target. Short mask training
    saturates many tau at the clamp, so the top-k order alone over-counts. -> (order, k, loss, scale, shift)
    with the kept nodes first in `order`."""

    def fit(nodes: list[int]):
        return calibrated_fit(model, task, ablation, masks, keep_top(masks, nodes, len(nodes)), prompts)

    circuit, dropped, found = drop_greedily(order[:k], fit, lambda f: f[0] <= target, tries)
    return [*circuit, *dropped, *order[k:]], len(circuit), *found


def search_grid(runs: int) -> list[tuple[float, float]]:
    """Multipliers of (k_coef, lr) around the centre: the centre first, then widening."""
    ks = [1, 2, 0.5, 4, 0.25, 8, 0.125, 16]
    lrs = [1, 3, 1 / 3, 10]
    grid = sorted(itertools.product(ks, lrs), key=lambda p: (abs(math.log(p[0])) + abs(math.log(p[1])), p))
    return [grid[i % len(grid)] for i in range(runs)]


def prune(
    model: SparseGPT,
    task: TaskData,
    ablation: Ablation,
    cfg: PruneConfig,
    on_progress: Callable[[float, str], None] | None = None,
) -> PruneResult:
    """Search over `cfg.runs` hyper-parameter settings; keep the smallest circuit that meets the target."""
    report = on_progress or (lambda f, m: None)
    held_out, select, mask_train = train_parts(task, cfg)
    best: PruneResult | None = None
    best_key = None
    runs: list[SearchRun] = []
    for r, (km, lm) in enumerate(search_grid(cfg.runs)):
        k_coef, lr = cfg.k_coef * km, cfg.lr * lm

        def progress(step, total, r=r):
            report(0.95 * (r + step / total) / cfg.runs, f"run {r + 1}/{cfg.runs}: mask step {step}/{total}")

        with frozen(model):
            masks = learn_masks(model, task, mask_train, ablation, cfg, k_coef, lr, cfg.seed + r, progress)
        tau = masks.tau.detach().clone()
        order = torch.argsort(tau, descending=True, stable=True).tolist()
        active = int((tau > 0).sum())
        target = cfg.target_loss
        k, loss, scale, shift = bisect_nodes(model, task, ablation, masks, order, active, target, held_out)
        if select is not held_out:  # the run is judged on other files, with the calibration it was sized with
            logits = task_logits(model, task, select, keep_top(masks, order, k), masks, ablation)
            loss = calibrated_loss(logits, pair_labels(len(select)), scale, shift)
        runs.append(SearchRun(k_coef, lr, active, k, loss, loss <= target))
        key = (runs[-1].reached_target, -k, -loss)  # meets the target, then fewest nodes, then lowest loss
        if best is None or key > best_key:
            best, best_key, best_run = PruneResult(order, tau, k, scale, shift, masks, loss), key, runs[-1]
    if best_key[0] and cfg.refine_nodes:  # the greedy pass, once, on the best run's circuit
        report(0.95, f"dropping unneeded nodes of {best.k}")
        best.order, best.k, best.selection_loss, best.scale, best.shift = drop_unneeded(
            model, task, ablation, best.masks, best.order, best.k, cfg.target_loss, held_out, cfg.refine_nodes
        )
        greedy = SearchRun(
            best_run.k_coef, best_run.lr, best_run.nodes_active, best.k, best.selection_loss, True, "greedy"
        )
        runs.append(greedy)
    best.runs = runs
    report(1.0, "done")
    return best


def keep_top(masks: NodeMasks, order: list[int], k: int) -> torch.Tensor:
    keep = torch.zeros(masks.tau.numel())
    keep[order[:k]] = 1
    return keep


def ce(logits2: torch.Tensor, labels: torch.Tensor) -> float:
    return F.cross_entropy(logits2, labels).item()


def circuit_losses(
    model, task: TaskData, ablation, masks: NodeMasks, keep: torch.Tensor, scale, shift
) -> dict:
    """Test-split losses: full model, circuit alone (calibrated and not), circuit's nodes ablated."""
    test = task.test
    labels = pair_labels(len(test))
    circuit = task_logits(model, task, test, keep, masks, ablation)
    return {
        "full": ce(task_logits(model, task, test, None, masks, ablation), labels),
        "circuit": calibrated_loss(circuit, labels, scale, shift),
        "circuit_uncalibrated": ce(circuit, labels),
        "ablated": ce(task_logits(model, task, test, 1 - keep, masks, ablation), labels),
    }


def loss_curve(
    model, task: TaskData, ablation, masks: NodeMasks, order: list[int], k_max: int, points: int, pairs: int
):
    """Calibrated test loss (first `pairs` test pairs) of the top-k circuit (k nodes or edges) for k on
    a geometric grid, with the circuit's number of edges (its size in the paper's unit)."""
    ks = sorted({int(round(k_max ** (i / (points - 1)))) for i in range(points)} | {0})
    tau = masks.tau.detach()
    return [
        {
            "k": k,
            "edges": len(masks.parts(model, order[:k], tau)[1]),
            "loss": calibrated_test_loss(model, task, ablation, masks, keep_top(masks, order, k), pairs),
        }
        for k in ks
    ]


def calibrated_test_loss(
    model, task: TaskData, ablation, masks: NodeMasks, keep: torch.Tensor, pairs: int | None = None
) -> float:
    """Calibrate the kept-node model on 128 train pairs, report its calibrated loss on the test split
    (or its first `pairs` pairs)."""
    train, test = task.train[:128], task.test[:pairs]
    scale, shift = calibrate(task_logits(model, task, train, keep, masks, ablation), pair_labels(len(train)))
    test_logits = task_logits(model, task, test, keep, masks, ablation)
    return calibrated_loss(test_logits, pair_labels(len(test)), scale, shift)


FAITHFULNESS_PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)


def mean_logit_difference(logits2: torch.Tensor, labels: torch.Tensor) -> float:
    """The faithfulness metric m: mean over prompts of the right completion's logit minus the wrong one's."""
    d = logits2[:, 0] - logits2[:, 1]
    return float(torch.where(labels == 0, d, -d).mean())


def curve_areas(points: list[dict]) -> tuple[float, float]:
    """MIB's scores of a faithfulness curve over the fraction x of nodes kept, with f(x=0) = 0 (the empty
    circuit, by definition) prepended: CPR = area under f, CMD = area under |1 - f| (trapezoid rule)."""
    xs = [0.0] + [p["percent"] / 100 for p in points]
    fs = [0.0] + [p["f"] for p in points]
    return trapezoid(xs, fs), trapezoid(xs, [abs(1 - f) for f in fs])


def trapezoid(xs: list[float], ys: list[float]) -> float:
    return sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))


def faithfulness_curve(
    model, task: TaskData, ablation: Ablation, masks: NodeMasks, order, pairs: int
) -> dict:
    """f(C) = (m(C) - m(empty)) / (m(N) - m(empty)) on the first `pairs` test pairs, for circuits of the
    top FAITHFULNESS_PERCENTS % of all nodes (or edges) in the pruner's order, and its CPR / CMD."""
    test = task.test[:pairs]
    labels = pair_labels(len(test))

    def m(keep):
        return mean_logit_difference(task_logits(model, task, test, keep, masks, ablation), labels)

    m_full, m_empty = m(None), m(torch.zeros(masks.tau.numel()))
    points = []
    for percent in FAITHFULNESS_PERCENTS:
        k = max(1, round(len(order) * percent / 100))
        mk = m(keep_top(masks, order, k))
        points.append({"percent": percent, masks.unit: k, "m": mk, "f": (mk - m_empty) / (m_full - m_empty)})
    cpr, cmd = curve_areas(points)
    return {"m_full": m_full, "m_empty": m_empty, "points": points, "cpr": cpr, "cmd": cmd}


def faithfulness(model, task: TaskData, ablation: Ablation, masks: NodeMasks, order, pairs: int) -> dict:
    """The faithfulness curve under every ablation mode the Ablation can take (resample needs its
    windows), in the same node order."""
    modes = [m for m in ABLATION_MODES if m != "resample" or ablation.windows is not None]
    return {
        "metric": "mean logit difference, right minus wrong completion, test split",
        "unit": masks.unit,
        "pairs": min(pairs, len(task.test)),
        "modes": {
            mode: faithfulness_curve(model, task, ablation.as_mode(mode), masks, order, pairs)
            for mode in modes
        },
    }


def find_circuit(
    model, task: TaskData, ablation: Ablation, cfg: PruneConfig, model_ref: str, on_progress=None
) -> Circuit:
    """prune() -> a Circuit with edges, test losses, the loss-vs-k curve and the faithfulness curves."""
    report = on_progress or (lambda f, m: None)
    result = prune(model, task, ablation, cfg, lambda f, m: report(0.85 * f, m))
    masks, order, k = result.masks, result.order, result.k
    report(0.85, "losses and loss-vs-k curve")
    keep = keep_top(masks, order, k)
    nodes, edges = masks.parts(model, order[:k], result.tau)
    active = max(k, int((result.tau > 0).sum()))
    *_, mask_train = train_parts(task, cfg)
    own_pairs = mask_train[: cfg.eval_pairs]
    own = task_logits(model, task, own_pairs, keep, masks, ablation)
    circuit = Circuit(
        task=task.name,
        model=model_ref,
        target_loss=cfg.target_loss,
        nodes=nodes,
        edges=edges,
        losses={
            **circuit_losses(model, task, ablation, masks, keep, result.scale, result.shift),
            "circuit_train_heldout": result.selection_loss,
            "circuit_train_masks": calibrated_loss(
                own, pair_labels(len(own_pairs)), result.scale, result.shift
            ),
        },
        calibration={"scale": result.scale, "shift": result.shift},
        curve=loss_curve(
            model,
            task,
            ablation,
            masks,
            order,
            min(len(order), max(2 * active, 4)),
            cfg.curve_points,
            cfg.curve_pairs,
        ),
        runs=[asdict(r) for r in result.runs],
        ablation=ablation.mode,
        unit=masks.unit,
    )
    report(0.92, "faithfulness curves")
    circuit.faithfulness = faithfulness(model, task, ablation, masks, order, cfg.faithfulness_pairs)
    report(1.0, "done")
    return circuit


def random_control(model, task: TaskData, ablation, circuit: Circuit, draws: int = 3, seed: int = 0) -> dict:
    """Circuits of the same size drawn at random (as many nodes per site, or edges per matrix and
    residual link): calibrated test loss."""
    masks = make_masks(model, circuit.unit, 0.0, 0.0, torch.Generator())
    ranges, units = list(masks.slices.values()), masks.indices(circuit)
    per_range = Counter(next(r for r in ranges if r[0] <= i < r[1]) for i in units)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(draws):
        keep = torch.zeros(masks.tau.numel())
        for (a, b), count in per_range.items():
            keep[a + torch.randperm(b - a, generator=g)[:count]] = 1
        losses.append(calibrated_test_loss(model, task, ablation, masks, keep))
    return {
        circuit.unit: len(units),
        "losses": losses,
        "mean_loss": sum(losses) / len(losses),
    }


def control_summary(control: Circuit, target: float) -> dict:
    return {
        "nodes": len(control.nodes),
        "edges": len(control.edges),
        "circuit_loss": control.losses["circuit"],
        "reached_target": control.losses["circuit"] <= target,
    }


def validate(model, task: TaskData, ablation: Ablation, circuit: Circuit, cfg: PruneConfig) -> dict:
    """Necessity and sufficiency (from the circuit's losses), a random circuit of equal size, the same
    pruning on two control tasks a faithful method should find nothing small for (shuffled labels, a
    nonsense task), the generalisation gap, and each judged pass/fail (ablation.validation_checks)."""
    quick = cfg.model_copy(update={"faithfulness_pairs": 1})  # the controls' own curves are not shown
    shuffled = find_circuit(model, shuffled_labels(task, cfg.seed), ablation, quick, circuit.model)
    nonsense = find_circuit(model, nonsense_task(task, cfg.seed), ablation, quick, circuit.model)
    circuit.validation = {
        "ablation": ablation.mode,
        "necessity_ablated_loss": circuit.losses["ablated"],
        "sufficiency_circuit_loss": circuit.losses["circuit"],
        "generalisation_gap": circuit.losses["circuit"] - circuit.losses["circuit_train_masks"],
        "random_circuit": random_control(model, task, ablation, circuit),
        "shuffled_labels": control_summary(shuffled, cfg.target_loss),
        "nonsense_task": control_summary(nonsense, cfg.target_loss),
    }
    circuit.validation["checks"] = validation_checks(circuit, cfg.target_loss)
    return circuit.validation
