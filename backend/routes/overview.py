"""The landing page's figures: the demo sparse model and its dense twin (else the newest ready ones), one
circuit per task for each, the paper's headline figure (circuit size needed for a task loss, sparse vs
dense) and the dense/sparse edge ratio, all computed from the database."""

from __future__ import annotations

import math
from collections.abc import Sequence

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from ..db import SessionDep
from ..models import Circuit, Model, ModelKind, ModelStatus
from ..schemas import EdgeRatio, Headline, Overview, OverviewModel, OverviewTask, TaskCircuit
from .circuits import circuit_summary

router = APIRouter(tags=["overview"])
TARGETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)  # task losses of the headline figure (the paper's is 0.15)
PAPER_EDGE_RATIO = 16.0  # PAPERS.md section 4: circuits about 16x smaller than in dense models


def geomean(values: Sequence[float]) -> float | None:
    """Geometric mean of positive values (sizes pass through `at_least_one` first)."""
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def at_least_one(size: float) -> float:
    """A size of 0 (an empty circuit) counts as 1, as in engine.circuit.size_comparison."""
    return max(size, 1.0)


def headline(curves: list[tuple[list[dict], list[dict]]], targets: Sequence[float] = TARGETS) -> Headline:
    """The figure from (sparse curve, dense curve) per task, each [{k, loss, edges?}]: per target, over
    the tasks where both curves have a point with loss <= target, per model the geometric mean of the
    smallest size among those points. Size is edges when every point has them, else kept nodes k."""
    points = [p for pair in curves for curve in pair for p in curve]
    size = "edges" if points and all(p.get("edges") is not None for p in points) else "nodes"
    key = "edges" if size == "edges" else "k"

    def smallest(curve: list[dict], target: float) -> float | None:
        sizes = [p[key] for p in curve if p.get("loss") is not None and p["loss"] <= target]
        return at_least_one(min(sizes)) if sizes else None

    sparse, dense, counts = [], [], []
    for target in targets:
        both = [(smallest(s, target), smallest(d, target)) for s, d in curves]
        both = [(s, d) for s, d in both if s is not None and d is not None]
        sparse.append(geomean([s for s, _ in both]))
        dense.append(geomean([d for _, d in both]))
        counts.append(len(both))
    return Headline(targets=list(targets), sparse=sparse, dense=dense, tasks=counts, size=size)


def edge_ratio(pairs: list[tuple[TaskCircuit, TaskCircuit]]) -> EdgeRatio:
    """Dense edges / sparse edges at the circuits' own size, over the tasks where both meet their target."""
    met = [(s, d) for s, d in pairs if s.meets_target and d.meets_target]
    ratios = [at_least_one(d.edges) / at_least_one(s.edges) for s, d in met]
    return EdgeRatio(geomean=geomean(ratios), tasks=len(met), target=PAPER_EDGE_RATIO)


def shown_model(session: Session, kind: ModelKind, demo: bool) -> Model | None:
    """The demo model of this kind; without a demo, the newest ready one with circuits, else the newest."""
    query = select(Model).where(Model.kind == kind, Model.status == ModelStatus.ready, Model.demo == demo)
    newest = (Model.created_at.desc(), Model.id.desc())
    with_circuits = query.where(Model.circuits.any(Circuit.transcoder_id.is_(None)))
    return session.scalar(with_circuits.order_by(*newest).limit(1)) or session.scalar(
        query.order_by(*newest).limit(1)
    )


def task_circuits(session: Session, model: Model | None) -> dict[str, Circuit]:
    """The model's newest non-transcoder circuit per task."""
    if model is None:
        return {}
    rows = session.scalars(
        select(Circuit)
        .where(Circuit.model_id == model.id, Circuit.transcoder_id.is_(None))
        .options(selectinload(Circuit.model), selectinload(Circuit.task))
        .order_by(Circuit.created_at.desc(), Circuit.id.desc())
    )
    out: dict[str, Circuit] = {}
    for c in rows:
        out.setdefault(c.task.name, c)
    return out


def task_circuit(c: Circuit | None) -> TaskCircuit | None:
    if c is None:
        return None
    summary = circuit_summary(c)
    return TaskCircuit(
        model_id=c.model_id,
        circuit_id=c.id,
        full_loss=c.losses.get("full"),
        circuit_loss=c.losses.get("circuit"),
        target_loss=c.target_loss,
        nodes=c.n_nodes,
        edges=c.n_edges,
        meets_target=summary.meets_target,
    )


@router.get("/overview", response_model=Overview)
def get_overview(session: SessionDep) -> Overview:
    """The landing page: the demo sparse model and its dense twin (without demo models, the newest
    ready sparse and dense ones), their circuit per task, the headline figure (per task-loss target, the
    geometric mean circuit size reaching it, sparse vs dense) and the dense/sparse edge ratio."""
    demo = session.scalar(select(Model.id).where(Model.demo).limit(1)) is not None
    sparse, dense = (shown_model(session, kind, demo) for kind in (ModelKind.sparse, ModelKind.dense))
    models = [m for m in (sparse, dense) if m is not None]
    circuits = task_circuits(session, sparse), task_circuits(session, dense)
    tasks = [
        OverviewTask(task=t, sparse=task_circuit(circuits[0].get(t)), dense=task_circuit(circuits[1].get(t)))
        for t in sorted(set(circuits[0]) | set(circuits[1]))
    ]
    both = [t for t in tasks if t.sparse is not None and t.dense is not None]
    curves = [(circuits[0][t.task].curve or [], circuits[1][t.task].curve or []) for t in both]
    return Overview(
        demo=demo,
        models=[
            OverviewModel(
                id=m.id,
                name=m.name,
                kind=m.kind,
                n_params=m.n_params,
                val_loss=(m.summary or {}).get("val_loss"),
                demo=m.demo,
            )
            for m in models
        ],
        tasks=tasks,
        headline=headline(curves),
        edge_ratio=edge_ratio([(t.sparse, t.dense) for t in both]),
    )
