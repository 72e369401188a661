"""Circuits: list and filter, the full graph (nodes, edges, losses, loss-vs-k curve), and what the circuit
view draws beside it: a trace of the circuit on chosen prompts and automatic node labels.

A circuit never changes once its prune job wrote it, so the API process keeps the rendered JSON of
recently read circuits (an LRU by id): a repeated read costs one dictionary lookup."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import asdict
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from worker.engine.probes import PROBES
from worker.engine.trace import class_means, head_of, logit_weights, trace

from ..db import SessionDep
from ..model_cache import Lru
from ..models import ActivationExample, Circuit, Job, JobStatus, Model, ModelStatus, Task
from ..schemas import (
    CircuitEdgeRead,
    CircuitLabels,
    CircuitList,
    CircuitNodeRead,
    CircuitProbes,
    CircuitRead,
    CircuitSummary,
    ErrorBody,
    HeadRead,
    NodeLabel,
    ProbeResultRead,
    ProbeSpecRead,
    PromptTrace,
    TokenRead,
    TraceRequest,
    TraceResult,
)
from .models import loaded
from .nodes import check_node
from .tasks import task_data

router = APIRouter(prefix="/circuits", tags=["circuits"])
log = logging.getLogger("circuits.api")
NOT_FOUND = {404: {"model": ErrorBody, "description": "no such circuit"}}
CircuitId = Annotated[int, Path(ge=1, le=2**31 - 1, description="circuit id")]
RENDERED = 256  # circuits whose JSON is kept
VIEW_ERRORS = NOT_FOUND | {
    409: {"model": ErrorBody, "description": "the model is not trained yet"},
    422: {"model": ErrorBody, "description": "invalid input (named), or a transcoder circuit"},
}
LABEL_BINS = ("top_0.1", "top_1")  # the profile examples a label's tokens come from
LABEL_TOKENS = 3
LABEL_PAIRS = 64  # test pairs behind a label's class means


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
                ablation=c.params.get("ablation", "mean"),
                unit=c.params.get("unit", "nodes"),
                faithfulness=c.faithfulness,
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


PROBE_JOBS = 500  # newest finished probe jobs searched for a circuit's results


@router.get("/{circuit_id}/probes", response_model=CircuitProbes, responses=NOT_FOUND)
def circuit_probes(circuit_id: CircuitId, session: SessionDep) -> CircuitProbes:
    """The adversarial probes that run on this circuit's task, and the results of its finished probe
    jobs (submit one as a `probe` job)."""
    c = get_circuit_row(session, circuit_id)
    jobs = session.scalars(
        select(Job)
        .where(Job.kind == "probe", Job.status == JobStatus.succeeded)
        .order_by(Job.finished_at.desc())
        .limit(PROBE_JOBS)
    )
    results = [
        ProbeResultRead(
            job_id=j.id,
            finished_at=j.finished_at,
            **{k: j.result[k] for k in ProbeResultRead.model_fields if k in j.result},
        )
        for j in jobs
        if j.result.get("circuit_id") == circuit_id
    ]
    available = [
        ProbeSpecRead(**asdict(p))
        for p in PROBES.values()
        if p.task == c.task.name and c.transcoder_id is None
    ]
    return CircuitProbes(circuit_id=circuit_id, available=available, results=results)


def node_circuit(session: Session, circuit_id: int) -> Circuit:
    """A circuit of model nodes (the trace and the labels run the sparse model itself)."""
    c = get_circuit_row(session, circuit_id, graph=True)
    if c.transcoder_id is not None:
        raise HTTPException(
            422, f"circuit {circuit_id} is a transcoder circuit: its nodes are features, not traced"
        )
    return c


@router.post("/{circuit_id}/trace", response_model=TraceResult, responses=VIEW_ERRORS)
def trace_circuit(circuit_id: CircuitId, body: TraceRequest, request: Request, session: SessionDep):
    """The circuit on one prompt or a pair (class A, class B): every node's value at every token with
    the circuit running alone (the rest and the `off` nodes ablated as `ablation` says), the logit
    difference of the two completions at the last token, and each of its heads' attention from there."""
    t0 = time.perf_counter()
    c = node_circuit(session, circuit_id)
    model = c.model
    names = {n.name for n in c.nodes}
    for name in body.off:
        check_node(model, name)
        if name not in names:
            raise HTTPException(422, f"off: {name} is not a node of circuit {circuit_id}")
    lm = loaded(request, model)
    data = task_data(request, model, c.task.name, c.task)
    ablation, n_ctx = lm.ablation(body.ablation), lm.model.cfg.n_ctx
    scale = c.calibration.get("scale", 1.0)
    run_edits = None
    if c.params.get("unit") == "edges":  # the circuit's own edges run, not every edge among its nodes
        masks = lm.edge_masks()
        keep = masks.circuit_keep(c, names - set(body.off))
        run_edits = lambda batch, length: masks.edit(lm.model, ablation, keep, batch, length)  # noqa: E731
    traces = []
    for prompt in body.prompts:
        ids = lm.tok.encode(prompt).ids
        if not ids:
            raise HTTPException(422, f"prompt {prompt[:40]!r}: encodes to no tokens")
        kept = ids[-n_ctx:]
        t = trace(
            lm.model, kept, sorted(names), ablation, data.token_a, data.token_b, set(body.off), run_edits
        )
        traces.append(
            PromptTrace(
                prompt=prompt,
                tokens=[TokenRead(id=i, text=lm.tok.decode([i])) for i in kept],
                truncated=len(ids) > n_ctx,
                activations=t.activations,
                logit_diff=t.logit_diff,
                logit_diff_calibrated=scale * t.logit_diff,
                full_logit_diff=t.full_logit_diff,
                heads=[HeadRead(**vars(hp)) for hp in t.heads],
            )
        )
    return TraceResult(
        circuit_id=circuit_id,
        completion_a=data.completion_a,
        completion_b=data.completion_b,
        traces=traces,
        seconds=time.perf_counter() - t0,
    )


def top_tokens(request: Request, session: Session, model: Model, nodes: list[str]) -> dict[str, list[str]]:
    """Per node, the centre tokens of its top profile examples, most frequent first."""
    rows = session.execute(
        select(ActivationExample.node, ActivationExample.center, ActivationExample.token_ids).where(
            ActivationExample.model_id == model.id,
            ActivationExample.node.in_(nodes),
            ActivationExample.bin.in_(LABEL_BINS),
        )
    ).all()
    if not rows:
        return {}
    tok = loaded(request, model).tok
    counts: dict[str, Counter] = {}
    for node, center, ids in rows:
        token = int(np.frombuffer(ids, dtype="<i4")[center])
        counts.setdefault(node, Counter())[tok.decode([token])] += 1
    return {n: [t for t, _ in cnt.most_common(LABEL_TOKENS)] for n, cnt in counts.items()}


def label_text(tokens: list[str], a: float | None, b: float | None, logit: float | None) -> str:
    """e.g. `'"' '(' A>B →A`: what the node fires on, which class drives it more, which answer it writes."""
    parts = [" ".join(repr(t) for t in tokens[:2])] if tokens else []
    if a is not None and b is not None and a != b:
        parts.append("A>B" if a > b else "B>A")
    if logit:
        parts.append("→A" if logit > 0 else "→B")
    return " ".join(parts) or "–"


@router.get("/{circuit_id}/labels", response_model=CircuitLabels, responses=VIEW_ERRORS)
def circuit_labels(circuit_id: CircuitId, request: Request, session: SessionDep) -> CircuitLabels:
    """A short automatic label for every node: the tokens it fires on most in its top profile examples,
    its mean on class A vs class B test prompts (circuit running alone, the rest mean-ablated), and for
    residual writes the sign of its direct weight on logit(A) - logit(B). q/k/v channels name their head."""
    c = node_circuit(session, circuit_id)
    model = c.model
    names = sorted(n.name for n in c.nodes)
    lm = loaded(request, model)
    data = task_data(request, model, c.task.name, c.task)
    prompts = data.test[:LABEL_PAIRS]
    mean = lm.ablation("mean")
    sides = lm.memo(("class-means", circuit_id), lambda: class_means(lm.model, prompts, names, mean))
    logit = logit_weights(lm.model, names, data.token_a, data.token_b)
    tokens = top_tokens(request, session, model, names)
    items = []
    for n in names:
        a, b = sides[n]
        lh = head_of(n, lm.model.cfg.d_head)
        items.append(
            NodeLabel(
                node=n,
                label=label_text(tokens.get(n, []), a, b, logit.get(n)),
                top_tokens=tokens.get(n, []),
                a_mean=a,
                b_mean=b,
                logit_weight=logit.get(n),
                head=None if lh is None else lh[1],
            )
        )
    return CircuitLabels(circuit_id=circuit_id, profiled=model.profiled, items=items)


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
