"""Nodes of a model: statistics, activation examples, and edges in a circuit. A node is `site[index]`
(DESIGN.md); in a path its brackets are URL-encoded: /models/3/nodes/0.mlp.post_act%5B12%5D."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.engine.activations import BIN_FRACTIONS, SIDES
from worker.engine.sites import NODE_RE, is_feature_site, parse_node, site_layer
from worker.engine.transcoders import de_embedding

from ..db import SessionDep
from ..model_cache import get_model_cache
from ..models import ActivationExample, Circuit, CircuitEdge, CircuitNode, CorpusDocument, Model, NodeStat
from ..schemas import (
    NODE_DESCRIPTION,
    DeEmbedding,
    EdgeRef,
    ErrorBody,
    ExampleRead,
    NodeRead,
    NodeStatRow,
    NodeStats,
    SiteNodes,
    TokenScore,
)
from .models import ModelId, all_sites, current_transcoder, get_model_row, loaded, sites_of
from .transcoders import loaded_transcoders

router = APIRouter(prefix="/models", tags=["nodes"])
NOT_FOUND = {404: {"model": ErrorBody, "description": "no such model, site, node or circuit"}}
NodeName = Annotated[
    str, Path(min_length=4, max_length=64, pattern=NODE_RE.pattern, description=NODE_DESCRIPTION)
]
SiteName = Annotated[str, Path(min_length=1, max_length=48, description="e.g. `0.mlp.post_act`")]
BIN_ORDER = [f"{side}_{f * 100:g}" for side in SIDES for f in BIN_FRACTIONS]


def check_node(model: Model, node: str, dims: dict[str, int] | None = None) -> tuple[str, int]:
    """(site, index) of a node of this model; 422 for a malformed name, 404 for one the model lacks.
    `dims`: the sites to accept (default: the model's own, see routes/models.all_sites)."""
    try:
        site, index = parse_node(node)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    dims = sites_of(model) if dims is None else dims
    if site not in dims:
        raise HTTPException(404, f"model {model.id} has no site {site!r}; sites: {', '.join(dims)}")
    if index >= dims[site]:
        raise HTTPException(
            404, f"site {site} of model {model.id} has nodes 0..{dims[site] - 1}, not {index}"
        )
    return site, index


def examples(request: Request, session: Session, model: Model, node: str) -> list[ExampleRead]:
    text = func.substr(
        CorpusDocument.text, ActivationExample.offset + 1, ActivationExample.end - ActivationExample.offset
    )
    rows = session.execute(
        select(ActivationExample, CorpusDocument.path, text)
        .outerjoin(CorpusDocument, CorpusDocument.id == ActivationExample.document_id)
        .where(ActivationExample.model_id == model.id, ActivationExample.node == node)
    ).all()
    if not rows:
        return []
    settings = request.app.state.settings
    tok = get_model_cache(request).tokenizer(model.id, settings.artifact(model.artifact_path))
    order = {b: i for i, b in enumerate(BIN_ORDER)}
    out = []
    for ex, path, snippet in sorted(rows, key=lambda r: (order.get(r[0].bin, len(order)), r[0].rank)):
        ids = np.frombuffer(ex.token_ids, dtype="<i4").tolist()
        out.append(
            ExampleRead(
                bin=ex.bin,
                rank=ex.rank,
                activation=ex.activation,
                center=ex.center,
                tokens=[tok.decode([i]) for i in ids],
                token_ids=ids,
                values=np.frombuffer(ex.values, dtype="<f2").astype(float).tolist(),
                text=snippet,
                document=path,
                offset=ex.offset,
            )
        )
    return out


@router.get(
    "/{model_id}/nodes/{node}",
    response_model=NodeRead,
    responses=NOT_FOUND | {409: {"model": ErrorBody, "description": "its transcoders are not loadable"}},
)
def get_node(
    model_id: ModelId,
    node: NodeName,
    request: Request,
    session: SessionDep,
    circuit_id: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="give the node's edges in this circuit")
    ] = None,
) -> NodeRead:
    """A node's statistics over the corpus sample (mean, firing frequency, quantiles), its activation
    examples (top and bottom 0.1 %, 1 %, 10 %, 50 %), the circuits containing it and its edges in one.
    A transcoder feature (`{l}.mlp.transcoder[j]`) also gets its de-embedding."""
    model = get_model_row(session, model_id)
    site, index = check_node(model, node, all_sites(session, model))
    stat = session.scalar(select(NodeStat).where(NodeStat.model_id == model_id, NodeStat.name == node))
    circuits = session.scalars(
        select(CircuitNode.circuit_id)
        .join(Circuit, Circuit.id == CircuitNode.circuit_id)
        .where(CircuitNode.name == node, Circuit.model_id == model_id)
        .order_by(CircuitNode.circuit_id)
    ).all()
    incoming, outgoing = [], []
    if circuit_id is not None:
        owner = session.scalar(select(Circuit.model_id).where(Circuit.id == circuit_id))
        if owner != model_id:
            raise HTTPException(404, f"circuit {circuit_id} not found for model {model_id}")
        for e in session.scalars(
            select(CircuitEdge).where(
                CircuitEdge.circuit_id == circuit_id, (CircuitEdge.dst == node) | (CircuitEdge.src == node)
            )
        ):
            factors = {"activation": e.activation, "weight_product": e.weight_product}
            if e.dst == node:
                incoming.append(EdgeRef(node=e.src, weight=e.weight, kind=e.kind, **factors))
            if e.src == node:
                outgoing.append(EdgeRef(node=e.dst, weight=e.weight, kind=e.kind, **factors))
    stats = None
    if stat is not None:
        stats = NodeStats(
            mean=stat.mean, frequency=stat.frequency, quantiles=stat.quantiles, thresholds=stat.thresholds
        )
    return NodeRead(
        model_id=model_id,
        name=node,
        site=site,
        layer=site_layer(site),
        index=index,
        stats=stats,
        examples=examples(request, session, model, node) if stat is not None else [],
        circuits=list(circuits),
        circuit_id=circuit_id,
        incoming=incoming,
        outgoing=outgoing,
        **feature_fields(request, session, model, node, site),
    )


def feature_fields(request: Request, session: Session, model: Model, node: str, site: str) -> dict:
    """A transcoder feature's de-embedding: the tokens whose embeddings drive it directly."""
    if is_feature_site(site):
        row = current_transcoder(session, model.id)
        tr = loaded_transcoders(request, row, model)
        lm = loaded(request, model)
        scores = de_embedding(lm.model, tr.selected, node)

        def tokens(pairs):
            return [TokenScore(id=i, text=lm.tok.decode([i]), score=v) for i, v in pairs]

        return {
            "de_embedding": DeEmbedding(top=tokens(scores["top"]), bottom=tokens(scores["bottom"])),
            "transcoder_id": row.id,
        }
    return {}


@router.get("/{model_id}/sites/{site}/nodes", response_model=SiteNodes, responses=NOT_FOUND)
def site_nodes(
    model_id: ModelId,
    site: SiteName,
    session: SessionDep,
    order: Annotated[str, Query(pattern="^(index|frequency|mean)$")] = "index",
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> SiteNodes:
    """Statistics of every node of a site (empty until the model is profiled)."""
    model = get_model_row(session, model_id)
    if site not in all_sites(session, model):
        raise HTTPException(404, f"model {model_id} has no site {site!r}")
    key = {"index": NodeStat.index, "frequency": NodeStat.frequency.desc(), "mean": NodeStat.mean.desc()}[
        order
    ]
    rows = session.scalars(
        select(NodeStat)
        .where(NodeStat.model_id == model_id, NodeStat.site == site)
        .order_by(key)
        .limit(limit)
    )
    items = [NodeStatRow(name=r.name, index=r.index, mean=r.mean, frequency=r.frequency) for r in rows]
    return SiteNodes(model_id=model_id, site=site, items=items)
