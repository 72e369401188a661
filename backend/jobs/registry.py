"""The job kinds, and everything derived from them: the API's request union, the kind names, the OpenAPI
schema (through the union) and the table the runners dispatch on.

A kind is one module in backend/jobs/kinds/ that defines `KIND = JobKind(...)`: its params model, its
checks at submission, its body, its cleanup after a failure and whether it resumes. Adding a kind is
adding such a module; nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, create_model

from ..schemas import Strict

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..models import Job
    from ..settings import Settings
    from .lifecycle import Attempt, JobContext


def no_checks(session: Session, settings: Settings, params: Any) -> None:
    pass


def nothing_to_clean(ctx: JobContext, session: Session, job_id: str) -> None:
    pass


@dataclass(frozen=True)
class JobKind:
    """One kind of job.

    run(ctx, job, params, attempt): the body; reports through attempt.progress and ends with
        attempt.finish(...) in the transaction that writes its results.
    check(session, settings, params): caps and references, before the job is queued (a ValueError is a
        422, checks.Conflict a 409, checks.LimitExceeded a 422 naming the setting).
    cleanup(ctx, session, job_id): after the job failed or was cancelled, and before a new attempt of a
        kind that does not resume.
    resumes: an attempt after a lost worker continues the previous one's work (else starts over).
    """

    name: str
    params: type[BaseModel]
    run: Callable[[JobContext, Job, Any, Attempt], None]
    check: Callable[[Session, Settings, Any], None] = no_checks
    cleanup: Callable[[JobContext, Session, str], None] = nothing_to_clean
    resumes: bool = False


_kinds: dict[str, JobKind] = {}
_job_models: dict[JobKind, type[BaseModel]] = {}


def kinds() -> dict[str, JobKind]:
    """Every registered kind by name; the modules of backend/jobs/kinds/ register on first use."""
    if not _kinds:
        from . import kinds as package

        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            register(importlib.import_module(f"{package.__name__}.{info.name}").KIND)
    return _kinds


def register(kind: JobKind) -> None:
    if kind.name in _kinds and _kinds[kind.name] is not kind:
        raise ValueError(f"job kind {kind.name!r} is already registered")
    _kinds[kind.name] = kind


def unregister(name: str) -> None:
    _kinds.pop(name, None)


def kind(name: str) -> JobKind:
    return kinds()[name]


def job_model(kind: JobKind) -> type[BaseModel]:
    """The request body of one kind, `{"kind": name, "params": {...}}` (params optional when every
    parameter has a default)."""
    if kind not in _job_models:
        required = any(f.is_required() for f in kind.params.model_fields.values())
        params = (kind.params, ...) if required else (kind.params, Field(default_factory=kind.params))
        _job_models[kind] = create_model(
            f"{kind.name.title()}Job", __base__=Strict, kind=(Literal[kind.name], ...), params=params
        )
    return _job_models[kind]


def job_create() -> Any:
    """The API's request body: one of the kinds' bodies, told apart by `kind`."""
    models = tuple(job_model(k) for k in kinds().values())
    return Annotated[Union[models], Field(discriminator="kind")]  # noqa: UP007 (a runtime tuple)


def kind_names() -> Any:
    """The kind names as a type (the `kind` filter of the job list)."""
    return Literal[tuple(kinds())]
