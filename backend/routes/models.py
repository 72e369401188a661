"""Models: list, get (with their sites), training metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.engine.config import ModelConfig
from worker.engine.sites import Site, catalog, site_dims

from ..db import SessionDep
from ..model_cache import LoadedModel, get_model_cache
from ..models import Circuit, Model, ModelStatus, Transcoder
from ..schemas import ErrorBody, ModelList, ModelMetrics, ModelRead, ModelSummary

router = APIRouter(prefix="/models", tags=["models"])
NOT_FOUND = {404: {"model": ErrorBody, "description": "no such model"}}
ModelId = Annotated[int, Path(ge=1, le=2**31 - 1, description="model id")]


def get_model_row(session: Session, model_id: int) -> Model:
    model = session.get(Model, model_id)
    if model is None:
        raise HTTPException(404, f"model {model_id} not found")
    return model


def model_config(model: Model) -> ModelConfig:
    return ModelConfig.model_validate(model.config["model"])


def sites_of(model: Model) -> dict[str, int]:
    """The sites of the model's own forward pass (what playground and live ablation can reach)."""
    return site_dims(model_config(model))


def current_transcoder(session: Session, model_id: int) -> Transcoder | None:
    """The model's newest transcoders: their features are the nodes `{l}.mlp.transcoder[j]`."""
    return session.scalar(
        select(Transcoder)
        .where(Transcoder.model_id == model_id)
        .order_by(Transcoder.created_at.desc(), Transcoder.id.desc())
        .limit(1)
    )


def site_catalog(session: Session, model: Model) -> list[Site]:
    """Every site of the model in forward order; once it has transcoders, with their feature sites."""
    row = current_transcoder(session, model.id)
    return catalog(model_config(model), None if row is None else row.width)


def all_sites(session: Session, model: Model) -> dict[str, int]:
    """The sites holding nodes: the model's own plus, once it has transcoders, their feature sites."""
    return {s.name: s.dim for s in site_catalog(session, model) if s.holds_nodes}


def loaded(request: Request, model: Model) -> LoadedModel:
    """The model's weights from the process's LRU cache (409 while it is not trained)."""
    if model.status != ModelStatus.ready:
        raise HTTPException(409, f"model {model.id} is {model.status}, not ready")
    settings = request.app.state.settings
    return get_model_cache(request).get(model.id, settings.artifact(model.artifact_path))


@router.get("", response_model=ModelList)
def list_models(
    session: SessionDep,
    kind: Annotated[str | None, Query(pattern="^(sparse|dense)$")] = None,
    status: Annotated[str | None, Query(pattern="^(training|ready|failed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ModelList:
    """Models, newest first."""
    query = select(Model)
    if kind:
        query = query.where(Model.kind == kind)
    if status:
        query = query.where(Model.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(
        query.order_by(Model.created_at.desc(), Model.id.desc()).limit(limit).offset(offset)
    )
    return ModelList(
        items=[ModelSummary.model_validate(m) for m in rows], total=total, limit=limit, offset=offset
    )


@router.get("/{model_id}", response_model=ModelRead, responses=NOT_FOUND)
def get_model(model_id: ModelId, session: SessionDep) -> ModelRead:
    """A model with its configuration, training summary and sites (where its nodes live; with
    transcoders, also their feature sites `{l}.mlp.transcoder`)."""
    model = get_model_row(session, model_id)
    n_circuits = session.scalar(select(func.count()).where(Circuit.model_id == model_id))
    sites = [s for s in site_catalog(session, model) if s.holds_nodes]
    return ModelRead(
        **ModelSummary.model_validate(model).model_dump(),
        config=model.config,
        summary=model.summary,
        job_id=model.job_id,
        sites=sites,
        n_circuits=n_circuits,
    )


@router.get("/{model_id}/sites", response_model=list[Site], responses=NOT_FOUND)
def get_sites(model_id: ModelId, session: SessionDep) -> list[Site]:
    """The model's site catalog in forward order: every site with its layer, kind and width, whether it
    holds nodes (the residual-stream locations `{l}.attn.resid_in` / `{l}.mlp.resid_in` do not) and
    whether it is a transcoder feature site (`{l}.mlp.transcoder`, once the model has transcoders)."""
    return site_catalog(session, get_model_row(session, model_id))


@router.get("/{model_id}/metrics", response_model=ModelMetrics, responses=NOT_FOUND)
def get_metrics(model_id: ModelId, session: SessionDep) -> ModelMetrics:
    """The training curve: loss per logged step, validation loss at eval steps."""
    model = get_model_row(session, model_id)
    return ModelMetrics(model_id=model_id, points=model.metrics or [])
