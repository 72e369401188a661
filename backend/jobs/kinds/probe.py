"""probe: an adversarial probe of a circuit (worker/engine/probes.py): one knob turned on its task's
held-out prompts, the full model, the circuit and one of its nodes measured at every value. The figures
are the job's result (served per circuit by GET /circuits/{id}/probes)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from worker.engine.probes import PROBES

from ...models import Circuit, JobStatus
from ...schemas import Strict
from ...settings import Settings
from ..checks import ready_model
from ..lifecycle import job_device
from ..params import device_field
from ..registry import JobKind
from ..store import model_folder, task_data

ProbeName = Literal[tuple(PROBES)]  # type: ignore[valid-type]


class ProbeParams(Strict):
    """Turn one knob on a circuit's task prompts: accuracy of the model and the circuit, and a node's
    activation, against the knob."""

    circuit_id: int = Field(ge=1, le=2**31 - 1, description="the node circuit to probe")
    probe: ProbeName = Field(description="; ".join(f"{p.name}: {p.task}, {p.knob}" for p in PROBES.values()))
    node: str | None = Field(
        None,
        max_length=64,
        description="the circuit node whose activation is followed (default: its top node)",
    )
    pairs: int = Field(64, ge=1, le=512, description="held-out pairs per knob value")
    device: str | None = device_field()


def circuit_for(session, params: ProbeParams) -> Circuit:
    circuit = session.get(Circuit, params.circuit_id)
    if circuit is None:
        raise ValueError(f"params.circuit_id: circuit {params.circuit_id} does not exist")
    if circuit.transcoder_id is not None:
        raise ValueError("params.circuit_id: probes run on node circuits, not transcoder feature circuits")
    spec = PROBES[params.probe]
    if circuit.task.name != spec.task:
        raise ValueError(
            f"params.probe: {spec.name} runs on task {spec.task}; "
            f"circuit {circuit.id} is of {circuit.task.name}"
        )
    names = [n.name for n in circuit.nodes]
    if not names:
        raise ValueError(f"params.circuit_id: circuit {circuit.id} has no nodes")
    if params.node is not None and params.node not in names:
        raise ValueError(f"params.node: {params.node} is not a node of circuit {circuit.id}")
    return circuit


def check(session, settings: Settings, params: ProbeParams) -> None:
    circuit = circuit_for(session, params)
    ready_model(session, circuit.model_id)


def run(ctx, job, params: ProbeParams, attempt) -> None:
    from worker.engine.ablation import load_ablation
    from worker.engine.checkpoints import load_model
    from worker.engine.probes import run_probe

    with ctx.db.session() as s:
        circuit = circuit_for(s, params)
        nodes = [n.name for n in sorted(circuit.nodes, key=lambda n: -n.tau)]
        model_id, calibration = circuit.model_id, circuit.calibration
        mode = circuit.params.get("ablation", "mean")
        task = circuit.task
        task_name, spec, builtin = task.name, task.spec, task.builtin
    model, folder = model_folder(ctx, model_id)
    attempt.progress(0.0, "load", "loading the model and task", force=True)
    net, tok, run = load_model(folder, job_device(ctx.settings, params.device))
    data = task_data(task_name, spec, builtin, tok)
    ablation = load_ablation(folder, net, tok, run, mode)
    result = run_probe(
        net,
        tok,
        data,
        PROBES[params.probe],
        ablation,
        nodes,
        params.node or nodes[0],
        calibration,
        params.pairs,
        lambda f, m: attempt.progress(0.1 + 0.85 * f, "probe", m),
    )
    with ctx.db.session() as s:
        attempt.finish(
            s,
            JobStatus.succeeded,
            stage="done",
            message=f"{params.probe}: {len(result['points'])} knob values on circuit {params.circuit_id}",
            result={"circuit_id": params.circuit_id, "model_id": model_id, **result},
        )


KIND = JobKind("probe", ProbeParams, run, check=check)
