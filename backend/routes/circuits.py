"""Circuits: list and filter, and the full graph (nodes, edges, losses, loss-vs-k curve).

A circuit never changes once its prune job wrote it, so the API process keeps the rendered JSON of
recently read circuits (an LRU by id): a repeated read costs one dictionary lookup."""

from __future__ import annotations

import logging
import threading
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from ..db import SessionDep
from ..model_cache import Lru
from ..models import Circuit, Model, ModelStatus, Task
from ..schemas import CircuitEdgeRead, CircuitList, CircuitNodeRead, CircuitRead, CircuitSummary, ErrorBody
from .models import loaded
from .tasks import task_data

router = APIRouter(prefix="/circuits", tags=["circuits"])
log = logging.getLogger("circuits.api")
NOT_FOUND = {404: {"model": ErrorBody, "description": "no such circuit"}}
CircuitId = Annotated[int, Path(ge=1, le=2**31 - 1, description="circuit id")]
RENDERED = 256  # circuits whose JSON is kept


def get_circuit_row(session: Session, circuit_id: int, graph: bool = False) -> Circuit:
    query = select(Circuit).where(Circuit.id == circuit_id)
    if graph:
        query = query.options(selectinload(Circuit.nodes), selectinload(Circuit.edges))
    circuit = session.scalar(query)
    if circuit is None:
        raise HTTPException(404, f"circuit {circuit_id} not found")
    return circuit


def circuit_summary(c: Circuit) -> CircuitSummary:
    return CircuitSummary(
        id=c.id,
        model_id=c.model_id,
        model_name=c.model.name,
        task=c.task.name,
        target_loss=c.target_loss,
        n_nodes=c.n_nodes,
        n_edges=c.n_edges,
        losses=c.losses,
        transcoder_id=c.transcoder_id,
        created_at=c.created_at,
    )


@router.get("", response_model=CircuitList)
def list_circuits(
    session: SessionDep,
    model_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    task: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    max_nodes: Annotated[int | None, Query(ge=0, le=10_000_000, description="at most this many")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> CircuitList:
    """Circuits, newest first, filtered by model, task and size."""
    query = select(Circuit).join(Task).join(Model)
    if model_id is not None:
        query = query.where(Circuit.model_id == model_id)
    if task is not None:
        query = query.where(Task.name == task)
    if max_nodes is not None:
        query = query.where(Circuit.n_nodes <= max_nodes)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(
        query.options(selectinload(Circuit.model), selectinload(Circuit.task))
        .order_by(Circuit.created_at.desc(), Circuit.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return CircuitList(items=[circuit_summary(c) for c in rows], total=total, limit=limit, offset=offset)


_create = threading.Lock()


def rendered_cache(request: Request) -> tuple[Lru, threading.Lock]:
    """The app's LRU of rendered circuits (per app: ids are per database)."""
    state = request.app.state
    with _create:
        if getattr(state, "rendered_circuits", None) is None:
            state.rendered_circuits = (Lru(RENDERED), threading.Lock())
    return state.rendered_circuits


def warm(request: Request, model: Model, task: Task) -> None:
    """Load what live ablation of this circuit needs (weights, means, tokenised task) ahead of time."""
    try:
        if model.status == ModelStatus.ready:
            loaded(request, model).means()
            task_data(request, model, task.name, task)
    except Exception as e:  # a broken artifact shows up (as a 4xx) when the ablation is requested
        log.warning("could not prepare model %s for live ablation: %s", model.id, e)


def render(request: Request, circuit_id: int) -> bytes:
    """Read and render a circuit (not cached yet), and start preparing its model in a thread."""
    with request.app.state.db.session() as session:
        c = get_circuit_row(session, circuit_id, graph=True)
        body = (
            CircuitRead(
                **circuit_summary(c).model_dump(),
                calibration=c.calibration,
                curve=c.curve,
                runs=c.runs,
                validation=c.validation,
                params=c.params,
                nodes=[CircuitNodeRead.model_validate(n) for n in c.nodes],
                edges=[CircuitEdgeRead.model_validate(e) for e in c.edges],
            )
            .model_dump_json()
            .encode()
        )
        model, task = c.model, c.task
    threading.Thread(target=warm, args=(request, model, task), daemon=True, name="warm-model").start()
    return body


@router.get("/{circuit_id}", response_model=CircuitRead, responses=NOT_FOUND)
async def get_circuit(circuit_id: CircuitId, request: Request) -> Response:
    """The full circuit: nodes (largest tau first), edges with weights, test losses, calibration,
    loss-vs-k curve, the hyper-parameter search and the validation controls. The first read also
    starts preparing the model for live ablation."""
    rendered, lock = rendered_cache(request)
    with lock:
        body = rendered.hit(circuit_id)  # a dictionary lookup: no thread, no database
    if body is None:
        body = await run_in_threadpool(render, request, circuit_id)
        with lock:
            rendered.put(circuit_id, body)
    return Response(body, media_type="application/json")


def engine_circuit(c: Circuit):
    """A circuit row as the engine's Circuit (what the graph export reads)."""
    from worker.engine.circuit import Circuit as EngineCircuit
    from worker.engine.circuit import Edge, Node

    return EngineCircuit(
        task=c.task.name,
        model=str(c.model_id),
        target_loss=c.target_loss,
        nodes=[Node(n.name, n.site, n.layer, n.index, n.tau) for n in c.nodes],
        edges=[Edge(e.src, e.dst, e.weight, e.kind, e.activation, e.weight_product) for e in c.edges],
        losses=c.losses,
        calibration=c.calibration,
        curve=c.curve,
    )


def circuit_graph_json(c: Circuit) -> dict:
    """The circuit-tracer / Neuronpedia graph JSON of a circuit row."""
    from worker.engine.graph_export import graph_json

    n_layer = int((c.model.config or {}).get("model", {}).get("n_layer", 0))
    slug = f"{c.model.name}-{c.task.name}-{c.id}".lower()
    return graph_json(engine_circuit(c), slug, c.model.name, n_layer)


@router.get("/{circuit_id}/graph", responses=NOT_FOUND)
def get_circuit_graph(circuit_id: CircuitId, session: SessionDep) -> dict:
    """The circuit as a circuit-tracer / Neuronpedia graph JSON (`metadata`, `qParams`, `nodes`,
    `links`), to open in that graph viewer; nodes sit at the task's last position."""
    return circuit_graph_json(get_circuit_row(session, circuit_id, graph=True))
