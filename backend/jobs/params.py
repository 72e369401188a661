"""Building blocks of job parameters. Parameters that configure the engine are taken from its config
models (from_engine, overrides_of), so each default and bound exists once, in the engine; the API only
tightens bounds where it caps a value."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, create_model
from pydantic.fields import FieldInfo

from ..schemas import Strict

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _plain_name(v: str) -> str:
    if not NAME_RE.match(v):
        raise ValueError("use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
    return v


PlainName = Annotated[str, AfterValidator(_plain_name)]
# `x-options` names what the browser's form offers to choose from: ready models (of a kind), or tasks.
ModelId = Annotated[int, Field(ge=1, le=2**31 - 1, json_schema_extra={"x-options": "models"})]
DenseModelId = Annotated[int, Field(ge=1, le=2**31 - 1, json_schema_extra={"x-options": "dense models"})]
TaskName = Annotated[str, Field(min_length=1, max_length=128, json_schema_extra={"x-options": "tasks"})]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


def device_field() -> Any:
    return Field(
        None,
        pattern=r"^(cpu|auto|cuda(:\d+)?)$",
        description="where the job computes: cpu, cuda, cuda:N or auto (a GPU if there is one); "
        "default CIRCUITS_DEVICE",
    )


def from_engine(config: type[BaseModel], name: str, **tighter: Any) -> Any:
    """An engine config field as a job parameter: its default and bounds, plus `tighter` (e.g. a cap
    the API adds, or a description)."""
    engine = config.model_fields[name]
    if engine.default_factory is not None:  # a value, so that the schema (and the browser's form) shows it
        engine = FieldInfo.merge_field_infos(engine, default=engine.default_factory(), default_factory=None)
    return FieldInfo.merge_field_infos(engine, Field(**tighter))


def overrides_of(config: type[BaseModel], name: str, exclude: tuple[str, ...] = ()) -> type[Strict]:
    """A model of optional overrides of an engine config's fields (same types and bounds; unset or
    null keeps the value the job starts from). The config's own cross-field checks run when the
    overrides are applied."""
    fields = {
        field: (info.annotation | None, FieldInfo.merge_field_infos(info, Field(None)))
        for field, info in config.model_fields.items()
        if field not in exclude
    }
    return create_model(
        name,
        __base__=Strict,
        __doc__=f"{config.__name__} fields to override; unset ones keep the preset's value.",
        **fields,
    )


def set_fields(overrides: BaseModel) -> dict[str, Any]:
    """The overrides actually given."""
    return overrides.model_dump(exclude_none=True)
