"""prune: the smallest circuit of a model that does a task (learned node masks, bisection to the target
loss, calibration) or edge masks, optionally with its controls, stored as a Circuit with nodes and edges."""

from __future__ import annotations

from dataclasses import replace as with_tensors
from typing import Literal

from pydantic import Field

from worker.engine.ablation import AblationMode
from worker.engine.prune import PruneConfig

from ...models import JobStatus
from ...schemas import Strict
from ...settings import Settings
from ..checks import cap, ready_model
from ..lifecycle import job_device
from ..params import ModelId, Seed, TaskName, from_engine
from ..registry import JobKind
from ..store import model_folder, task_data, task_row, write_circuit

PAIRS = 4096  # the API's bound on pairs per batch, evaluation and curve point


class PruneParams(Strict):
    """Prune a model to the smallest circuit that does a task (PruneConfig fields, bounded)."""

    model_id: ModelId
    task: TaskName
    target_loss: float = from_engine(PruneConfig, "target_loss", le=10)
    runs: int = from_engine(PruneConfig, "runs", description="hyper-parameter search runs")
    steps: int = from_engine(PruneConfig, "steps", description="mask steps per run")
    k_coef: float = from_engine(PruneConfig, "k_coef")
    lr: float = from_engine(PruneConfig, "lr")
    batch_pairs: int = from_engine(PruneConfig, "batch_pairs", le=PAIRS)
    eval_pairs: int = from_engine(PruneConfig, "eval_pairs", le=PAIRS)
    select_pairs: int = from_engine(
        PruneConfig,
        "select_pairs",
        le=PAIRS,
        description="pairs from further held-out train files that choose between runs (0: bisection pairs)",
    )
    curve_points: int = from_engine(PruneConfig, "curve_points")
    curve_pairs: int = from_engine(PruneConfig, "curve_pairs", le=PAIRS)
    seed: Seed = from_engine(PruneConfig, "seed")
    ablation: AblationMode = from_engine(
        PruneConfig, "ablation", description="what masked nodes are replaced by: mean, zero or resample"
    )
    faithfulness_pairs: int = from_engine(PruneConfig, "faithfulness_pairs", le=PAIRS)
    unit: Literal["nodes", "edges"] = from_engine(
        PruneConfig,
        "unit",
        description="what the masks are on: nodes (the paper's) or edges (weights and residual links, so "
        "that the circuit's size in edges is what the pruner minimises)",
    )
    validate_circuit: bool = Field(
        False, description="also run the controls (random circuit, shuffled labels, nonsense task)"
    )
    device: str | None = Field(
        None,
        pattern=r"^(cpu|auto|cuda(:\d+)?)$",
        description="where the model and task tensors go: cpu, cuda, cuda:N or auto; default cpu (the "
        "engine's pruning keeps its masks on the CPU, so CIRCUITS_DEVICE does not apply)",
    )


def prune_config(params: PruneParams) -> PruneConfig:
    return PruneConfig(**params.model_dump(exclude={"model_id", "task", "validate_circuit", "device"}))


def check(session, settings: Settings, params: PruneParams) -> None:
    cfg = prune_config(params)
    cap(cfg.steps, settings.max_prune_steps, "params.steps", "max_prune_steps")
    cap(cfg.runs, settings.max_prune_runs, "params.runs", "max_prune_runs")
    task_row(session, params.task)  # TaskError (422) naming the known tasks
    ready_model(session, params.model_id)


def run(ctx, job, params: PruneParams, attempt) -> None:
    from worker.engine.ablation import load_ablation
    from worker.engine.checkpoints import load_model
    from worker.engine.prune import find_circuit, validate

    model, folder = model_folder(ctx, params.model_id)
    cfg = prune_config(params)
    with ctx.db.session() as s:
        task = task_row(s, params.task)
        task_id, builtin, spec = task.id, task.builtin, task.spec
    attempt.progress(0.0, "load", "loading the model and task", force=True)
    device = job_device(ctx.settings, params.device or "cpu")
    net, tok, run = load_model(folder, device)
    data = task_data(params.task, spec, builtin, tok)
    data = with_tensors(data, train=data.train.to(device), test=data.test.to(device))
    attempt.progress(0.02, "means", "ablation statistics (means, resample windows)", force=True)
    ablation = load_ablation(folder, net, tok, run, cfg.ablation, cfg.seed)
    span = 0.5 if params.validate_circuit else 0.93
    circuit = find_circuit(
        net, data, ablation, cfg, str(model.id), lambda f, m: attempt.progress(0.05 + span * f, "prune", m)
    )
    if params.validate_circuit:
        attempt.progress(
            0.55, "validate", "controls: random circuit, shuffled labels, nonsense task", force=True
        )
        validate(net, data, ablation, circuit, cfg)
    attempt.progress(0.98, "store", "writing the circuit", force=True)
    with ctx.db.session() as s:
        circuit_id = write_circuit(s, model.id, task_id, circuit, cfg, job.id)
        attempt.finish(
            s,
            JobStatus.succeeded,
            stage="done",
            message=f"circuit {circuit_id}: {len(circuit.nodes)} nodes, {len(circuit.edges)} edges",
            result={"model_id": model.id, "circuit_id": circuit_id},
        )


KIND = JobKind("prune", PruneParams, run, check=check)
