"""Transcoders: the sweeps trained by transcoder jobs (sparsity-fidelity curves against the SAE baseline,
matched-L0 comparison) and the coders behind feature pages. A feature is a node `{l}.mlp.transcoder[j]`
of its model: its page is GET /models/{id}/nodes/{node} (profile examples + de-embedding), its circuits
are ordinary circuits with `transcoder_id` set."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.engine.checkpoints import CheckpointError, check_dense
from worker.engine.sites import catalog
from worker.engine.transcoders import TranscoderRun, Transcoders, read_transcoders

from ..db import SessionDep
from ..model_cache import get_model_cache
from ..models import Circuit, Model, Transcoder
from ..schemas import ErrorBody, TranscoderList, TranscoderRead, TranscoderSummary
from .models import model_config

router = APIRouter(prefix="/transcoders", tags=["transcoders"])
NOT_FOUND = {404: {"model": ErrorBody, "description": "no such transcoders"}}
TranscoderId = Annotated[int, Path(ge=1, le=2**31 - 1, description="transcoders id")]


def get_transcoder_row(session: Session, transcoder_id: int) -> Transcoder:
    row = session.get(Transcoder, transcoder_id)
    if row is None:
        raise HTTPException(404, f"transcoders {transcoder_id} not found")
    return row


def loaded_transcoders(request: Request, row: Transcoder, model: Model) -> Transcoders:
    """The coders of a transcoder row from the model cache, read once and checked against the model's
    weights (a model folder that changed since is a 409 naming the mismatch)."""
    settings = request.app.state.settings

    def load() -> Transcoders:
        try:
            tr = read_transcoders(settings.artifact(row.artifact_path))
            check_dense(tr.run.dense, settings.artifact(model.artifact_path), "the transcoders")
        except (CheckpointError, OSError) as e:
            raise HTTPException(409, f"transcoders {row.id}: {e}") from None
        return tr

    return get_model_cache(request).artifact(("transcoders", row.id), load)


def summary(row: Transcoder, model: Model) -> TranscoderSummary:
    cfg, sweep = TranscoderRun.model_validate(row.config).config, row.sweep
    matched = sweep.get("matched", {})
    return TranscoderSummary(
        id=row.id,
        model_id=row.model_id,
        model_name=model.name,
        width=row.width,
        l1=cfg.l1,
        selected_l1=cfg.l1[cfg.selected_index()],
        clean_ce=sweep["reference"]["clean_ce"],
        transcoder_better_settings=matched.get("transcoder_better_settings", 0),
        settings=len(matched.get("settings", [])),
        job_id=row.job_id,
        created_at=row.created_at,
    )


def curves(points: list[dict]) -> dict[str, dict[str, list[dict[str, float]]]]:
    """layer -> kind -> [{l0, ce, l1}] sorted by L0: one line per kind in a sparsity-fidelity plot."""
    out: dict[str, dict[str, list[dict[str, float]]]] = {}
    for p in sorted(points, key=lambda p: p["l0"]):
        line = out.setdefault(str(p["layer"]), {}).setdefault(p["kind"], [])
        line.append({"l0": p["l0"], "ce": p["ce"], "l1": p["l1"]})
    return out


@router.get("", response_model=TranscoderList)
def list_transcoders(
    session: SessionDep,
    model_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> TranscoderList:
    """Transcoder sweeps, newest first, optionally of one model."""
    query = select(Transcoder, Model).join(Model, Model.id == Transcoder.model_id)
    if model_id is not None:
        query = query.where(Transcoder.model_id == model_id)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.execute(
        query.order_by(Transcoder.created_at.desc(), Transcoder.id.desc()).limit(limit).offset(offset)
    ).all()
    return TranscoderList(items=[summary(t, m) for t, m in rows], total=total)


@router.get("/{transcoder_id}", response_model=TranscoderRead, responses=NOT_FOUND)
def get_transcoder(transcoder_id: TranscoderId, session: SessionDep) -> TranscoderRead:
    """A sweep: reference CEs (clean, each MLP zero- and mean-ablated), every point (kind, L1, layer,
    L0, CE with the MLP replaced, FVU, dead latents), plot-ready curves, the matched-L0 comparison, the
    feature sites and the circuits built from the features."""
    row = get_transcoder_row(session, transcoder_id)
    model = session.get(Model, row.model_id)
    circuits = session.scalars(
        select(Circuit.id).where(Circuit.transcoder_id == row.id).order_by(Circuit.id)
    ).all()
    return TranscoderRead(
        **summary(row, model).model_dump(),
        config=row.config,
        reference=row.sweep["reference"],
        points=row.sweep["points"],
        curves=curves(row.sweep["points"]),
        matched=row.sweep.get("matched", {}),
        feature_sites=[s for s in catalog(model_config(model), row.width) if s.is_feature_site],
        circuits=list(circuits),
    )
