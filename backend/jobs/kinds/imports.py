"""import: a model folder made outside the app becomes a Model row: a released openai/circuit_sparsity
model (`source="openai"`, converted by worker/engine/openai_format.py) or a folder the `circuits` CLI
trained (`source="model"`: sparse, dense or bridged). Paths are relative to CIRCUITS_IMPORT_ROOT; the
folder is written beside the models and renamed into place with its row, so a failed import leaves no
row and no folder. `circuits import openai` / `circuits models add` use the same functions."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from sqlalchemy import select

from worker.engine.config import ModelConfig

from ...models import JobStatus, Model, ModelKind, ModelStatus
from ...schemas import Strict
from ...settings import Settings
from ..checks import Conflict, name_free
from ..params import PlainName
from ..registry import JobKind

RelativePath = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*$")]


class ImportParams(Strict):
    """Register a model folder from CIRCUITS_IMPORT_ROOT: a released openai/circuit_sparsity model
    (beeg_config.json + final_model.pt + encoder.json + vocab.bpe) or a folder `circuits train` wrote."""

    source: Literal["openai", "model"] = Field(
        description="openai: a released model folder; model: a folder the circuits CLI trained"
    )
    path: RelativePath = Field(description="the folder, relative to CIRCUITS_IMPORT_ROOT on the server")
    tokenizer_path: RelativePath | None = Field(
        None,
        description="openai: the folder of encoder.json + vocab.bpe, relative to the root (default: path)",
    )
    name: PlainName | None = Field(None, description="unique model name (default: the folder's name)")


def under_root(root: Path | None, relative: str, what: str = "params.path") -> Path:
    """`root / relative`, refused unless it stays inside the import root (no `..`, no links out)."""
    if root is None:
        raise ValueError(f"{what}: imports through the API are off; set CIRCUITS_IMPORT_ROOT on the server")
    base = Path(root).resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise ValueError(f"{what}: {relative!r} is outside the import root")
    if not path.is_dir():
        raise ValueError(f"{what}: no folder {relative!r} under the import root")
    return path


def check(session, settings: Settings, params: ImportParams) -> None:
    """The folder and its config (cheap; the weights are checked by the job)."""
    from worker.engine.checkpoints import read_run_config
    from worker.engine.openai_format import read_config

    path = under_root(settings.import_root, params.path)
    if params.tokenizer_path is not None:
        under_root(settings.import_root, params.tokenizer_path, "params.tokenizer_path")
    name_free(session, params.name)
    try:
        if params.source == "openai":
            read_config(path)
        else:
            read_run_config(path)
    except ValueError as e:
        raise ValueError(f"params.path: {e}") from None


def model_row(folder: Path, name: str) -> Model:
    """A ready Model row for a model folder (artifact_path set by `register`)."""
    from worker.engine.budget import count_params
    from worker.engine.checkpoints import read_run_config

    from ..training import read_metrics, summarize, thin

    run = read_run_config(folder)
    metrics = read_metrics(folder)
    return Model(
        name=name,
        kind=ModelKind.dense if run.train.dense else ModelKind.sparse,
        status=ModelStatus.ready,
        config=run.model_dump(mode="json"),
        n_params=count_params(run.model),
        metrics=thin(metrics),
        summary={**summarize(metrics), **({"imported_from": run.imported_from} if run.imported_from else {})},
        artifact_path="",
    )


def dense_model_of(session, settings: Settings, folder: Path) -> int:
    """A bridged model's dense model among the registered ones (same weights), or a clear error."""
    from worker.engine.checkpoints import WEIGHTS, file_sha256, read_run_config

    want = read_run_config(folder).bridge.dense.weights_sha256
    for model_id, path in session.execute(select(Model.id, Model.artifact_path).where(Model.kind == "dense")):
        weights = settings.artifact(path) / WEIGHTS
        if weights.is_file() and file_sha256(weights) == want:
            return model_id
    raise ValueError(
        f"{folder} was bridged to a dense model that is not registered; add that model first "
        "(circuits models add DENSE_DIR)"
    )


def register(session, settings: Settings, staged: Path, name: str, job_id: str | None) -> Path:
    """Give the staged folder (beside the models, complete) a Model row and move it to models/{id}; the
    caller's transaction commits the row. Returns the folder's new place."""
    if session.scalar(select(Model.id).where(Model.name == name)):
        raise Conflict(f"a model named {name!r} already exists")
    model = model_row(staged, name)
    model.job_id = job_id
    if model.bridged:
        model.summary = {**model.summary, "dense_model_id": dense_model_of(session, settings, staged)}
    session.add(model)
    session.flush()
    model.artifact_path = f"models/{model.id}"
    target = settings.artifact(model.artifact_path)
    if target.exists():
        raise Conflict(f"{target} already exists")
    staged.rename(target)
    return target


def stage(settings: Settings, source: str, path: Path, tokenizer: Path | None, tag: str) -> Path:
    """The model folder, complete, at models/.import-{tag}.{name} (checked by loading it)."""
    from worker.engine.checkpoints import CHECKPOINT, load_model
    from worker.engine.openai_format import import_released

    staged = settings.models_dir / f".import-{tag}.{path.name}"
    shutil.rmtree(staged, ignore_errors=True)
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    try:
        if source == "openai":
            import_released(path, staged, tokenizer, max_params=settings.max_import_params)
        else:
            load_model(path)  # a complete, readable model folder (config, tokenizer, weights)
            shutil.copytree(path, staged, ignore=shutil.ignore_patterns(CHECKPOINT, "*.tmp"))
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def import_folder(
    db,
    settings: Settings,
    source: str,
    path: Path,
    tokenizer: Path | None,
    name: str | None,
    tag: str,
    job_id: str | None = None,
) -> int:
    """Stage and register; on any error nothing is left (no row, no folder). Returns the model id."""
    staged = stage(settings, source, path, tokenizer, tag)
    placed = None
    try:
        with db.session() as s:
            placed = register(s, settings, staged, name or path.name, job_id)
            model_id = int(placed.name)
        return model_id
    except BaseException:
        for folder in (staged, placed):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        raise


def run(ctx, job, params: ImportParams, attempt) -> None:
    settings = ctx.settings
    path = under_root(settings.import_root, params.path)
    tokenizer = None
    if params.tokenizer_path is not None:
        tokenizer = under_root(settings.import_root, params.tokenizer_path, "params.tokenizer_path")
    attempt.progress(0.0, "import", f"reading {params.path}", force=True)
    model_id = import_folder(ctx.db, settings, params.source, path, tokenizer, params.name, job.id, job.id)
    with ctx.db.session() as s:
        attempt.finish(
            s, JobStatus.succeeded, stage="done", message=f"model {model_id}", result={"model_id": model_id}
        )


def cleanup(ctx, session, job_id: str) -> None:
    for leftover in ctx.settings.models_dir.glob(f".import-{job_id}.*"):
        shutil.rmtree(leftover, ignore_errors=True)


KIND = JobKind("import", ImportParams, run, check=check, cleanup=cleanup)


def task_from_path(path: Path) -> str:
    """The task a released viz_data.pt belongs to, from its folders (…/bracket_counting_beeg/…)."""
    from worker.engine.tasks import REGISTRY

    for part in reversed(path.parts[:-1]):
        for name in sorted(REGISTRY, key=len, reverse=True):
            if part == name or part.startswith(f"{name}_"):
                return name
    raise ValueError(f"cannot tell the task of {path} from its folders; give it (--task)")


def import_circuit(session, model_id: int, viz_path: Path, task: str | None = None) -> int:
    """A released viz_data.pt as a circuit of model `model_id` (an imported released model)."""
    from worker.engine.openai_circuits import circuit_from_viz, read_viz_data

    from ..store import task_row, write_circuit

    model = session.get(Model, model_id)
    if model is None:
        raise ValueError(f"model {model_id} does not exist")
    task = task or task_from_path(Path(viz_path))
    row = task_row(session, task)
    cfg = ModelConfig.model_validate(model.config["model"])
    source = f"openai/circuit_sparsity viz_data: {Path(viz_path).resolve()}"
    circuit = circuit_from_viz(read_viz_data(viz_path), cfg, task, str(model_id), source)
    return write_circuit(session, model_id, row.id, circuit, ReleasedCircuit(source=source), job_id=None)


class ReleasedCircuit(Strict):
    """The params of an imported circuit: where it came from."""

    source: str
