"""Tasks: the built-in binary tasks and custom ones (prompt pairs written by a user)."""

from __future__ import annotations

import functools
import hashlib
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.engine.checkpoints import load_tokenizer
from worker.engine.data import is_validation, load_corpus
from worker.engine.tasks import (
    REGISTRY,
    CustomTask,
    TaskData,
    TaskError,
    build_custom_task,
    build_task,
    get_task,
    parse_custom_task,
)

from ..auth import WriteKey
from ..db import SessionDep
from ..interactive import ERRORS as INTERACTIVE_ERRORS
from ..interactive import HasKey
from ..models import Circuit, Model, ModelStatus, Task
from ..schemas import ErrorBody, TaskList, TaskRead, TaskSample, TaskSamples, TaskSummary
from .models import get_model_row, loaded

router = APIRouter(prefix="/tasks", tags=["tasks"])
NOT_FOUND = {404: {"model": ErrorBody, "description": "no such task"}}
TaskName = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_./-]+$")]
SAMPLE_CHARS = 240  # text shown before the edit point of a corpus-mined prompt
VALIDATION_TOKENIZERS = 8  # distinct tokenizers a new custom task is checked against


def circuit_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Task.name, func.count(Circuit.id)).join(Circuit).group_by(Task.name))
    return dict(rows.all())


def summary(name: str, row: Task | None, counts: dict[str, int]) -> TaskSummary:
    if row is not None and not row.builtin:
        return TaskSummary(
            name=name,
            builtin=False,
            completion_a=row.completion_a,
            completion_b=row.completion_b,
            description=row.description,
            n_pairs=len(row.spec.get("pairs", [])),
            n_circuits=counts.get(name, 0),
        )
    spec = REGISTRY[name]
    return TaskSummary(
        name=name,
        builtin=True,
        completion_a=spec.completion_a,
        completion_b=spec.completion_b,
        description=spec.description,
        n_pairs=None,
        n_circuits=counts.get(name, 0),
    )


def find_task(session: Session, name: str) -> Task | None:
    """The task's DB row (custom tasks; built-in ones once a job used them), 404 if it exists nowhere."""
    row = session.scalar(select(Task).where(Task.name == name))
    if row is None and name not in REGISTRY:
        raise HTTPException(404, f"task {name!r} not found")
    return row


def task_builder(name: str, row: Task | None):
    """How to tokenise the task for a model (the same construction the prune job uses)."""
    if row is not None and not row.builtin:
        spec = row.spec
        return lambda tok: build_custom_task(parse_custom_task(spec), tok)[0]
    return lambda tok: build_task(get_task(name), tok)


def task_data(request: Request, model: Model, name: str, row: Task | None) -> TaskData:
    key = f"{name}:{hashlib.sha256(repr(row.spec if row else None).encode()).hexdigest()[:16]}"
    return loaded(request, model).task(key, task_builder(name, row))


@router.get("", response_model=TaskList)
def list_tasks(
    session: SessionDep, builtin: Annotated[bool | None, Query(description="only built-in / custom")] = None
) -> TaskList:
    """Built-in tasks (the registry) and custom tasks (the database), by name."""
    counts = circuit_counts(session)
    rows = {t.name: t for t in session.scalars(select(Task))}
    names = sorted(set(REGISTRY) | {n for n, t in rows.items() if not t.builtin})
    items = [summary(n, rows.get(n), counts) for n in names]
    if builtin is not None:
        items = [t for t in items if t.builtin == builtin]
    return TaskList(items=items, total=len(items))


@router.get("/{name}", response_model=TaskRead, responses=NOT_FOUND)
def get_task_info(name: TaskName, session: SessionDep) -> TaskRead:
    row = find_task(session, name)
    base = summary(name, row, circuit_counts(session))
    created = row.created_at if row is not None and not row.builtin else None
    return TaskRead(**base.model_dump(), created_at=created)


@functools.lru_cache(maxsize=64)
def corpus_samples(name: str, split: str, n: int) -> tuple[TaskSample, ...]:
    """A built-in task's first pairs in the corpus, as text (no tokenizer needed)."""
    spec = get_task(name)
    found = []
    for doc in load_corpus(None):
        if (split == "test") != is_validation(doc.path, 10.0):
            continue
        for e in spec.edits(doc):
            found.append(
                TaskSample(
                    split=split,
                    source=e.source,
                    prompt_a=(e.context + e.tail_a)[-SAMPLE_CHARS:],
                    prompt_b=(e.context + e.tail_b)[-SAMPLE_CHARS:],
                    completion_a=spec.completion_a,
                    completion_b=spec.completion_b,
                )
            )
            if len(found) >= n:
                return tuple(found)
    return tuple(found)


@router.get(
    "/{name}/samples",
    response_model=TaskSamples,
    responses=NOT_FOUND | INTERACTIVE_ERRORS,
)
async def task_samples(
    name: TaskName,
    request: Request,
    session: SessionDep,
    has_key: HasKey,
    model_id: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="show the prompts as this model sees them")
    ] = None,
    split: Annotated[str, Query(pattern="^(train|test)$")] = "test",
    n: Annotated[int, Query(ge=1, le=50)] = 5,
) -> TaskSamples:
    """A few prompt pairs with both completions. With model_id: the tokenised prompts that model is
    evaluated on (built-in tasks are mined from the corpus on first use: seconds); without: the text.
    Runs on the interactive threads (the corpus is searched on first use)."""
    work = request.app.state.interactive
    return await work.run(request, not has_key, samples, name, request, session, model_id, split, n)


def samples(name: str, request: Request, session, model_id: int | None, split: str, n: int) -> TaskSamples:
    row = find_task(session, name)
    if model_id is not None:
        model = get_model_row(session, model_id)
        data = task_data(request, model, name, row)
        tok = loaded(request, model).tok
        prompts, sources = data.split(split)[:n], data.sources.get(split, [])
        items = [
            TaskSample(
                split=split,
                source=sources[i] if i < len(sources) else "",
                prompt_a=tok.decode(pair[0].tolist()),
                prompt_b=tok.decode(pair[1].tolist()),
                completion_a=data.completion_a,
                completion_b=data.completion_b,
            )
            for i, pair in enumerate(prompts)
        ]
    elif row is not None and not row.builtin:
        task = parse_custom_task(row.spec)
        pairs = [(i, p) for i, p in enumerate(task.pairs) if task.split_of(p) == split][:n]
        items = [
            TaskSample(
                split=split,
                source=f"pairs[{i}]",
                prompt_a=p.prompt_a,
                prompt_b=p.prompt_b,
                completion_a=task.completion_a,
                completion_b=task.completion_b,
            )
            for i, p in pairs
        ]
    else:
        items = list(corpus_samples(name, split, n))
    return TaskSamples(task=name, model_id=model_id, items=items)


def check_tokenization(session: Session, request: Request, task: CustomTask) -> None:
    """The completions must start with different tokens, and pairs must survive tokenisation, under
    the tokenizer of every ready model (a task is only useful if models can be pruned on it)."""
    settings = request.app.state.settings
    seen: set[str] = set()
    for model in session.scalars(select(Model).where(Model.status == ModelStatus.ready).order_by(Model.id)):
        folder = settings.artifact(model.artifact_path)
        try:
            tok_json = (folder / "tokenizer.json").read_bytes()
        except OSError:
            continue
        digest = hashlib.sha256(tok_json).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        tok = load_tokenizer(folder)
        ids_a, ids_b = tok.encode(task.completion_a).ids, tok.encode(task.completion_b).ids
        if ids_a and ids_b and ids_a[0] == ids_b[0]:
            shared = tok.decode([ids_a[0]])
            raise HTTPException(
                422,
                f"completion_a {task.completion_a!r} and completion_b {task.completion_b!r} both start with "
                f"the token {shared!r} (id {ids_a[0]}) under the tokenizer of model {model.id} "
                f"({model.name}); the task needs completions whose first tokens differ",
            )
        try:
            build_custom_task(task, tok)
        except TaskError as e:
            raise HTTPException(422, f"{e} (tokenizer of model {model.id}, {model.name})") from None
        if len(seen) >= VALIDATION_TOKENIZERS:
            break


@router.post(
    "",
    status_code=201,
    response_model=TaskRead,
    responses={
        401: {"model": ErrorBody, "description": "missing or invalid x-api-key"},
        409: {"model": ErrorBody, "description": "a task of that name exists"},
        422: {"model": ErrorBody, "description": "invalid task (the problem is named)"},
    },
)
def create_task(task: CustomTask, request: Request, session: SessionDep, key: WriteKey) -> TaskRead:
    """Create a custom task from prompt pairs and two completions (validated against the tokenizers
    of the ready models: the completions' first tokens must differ)."""
    if session.scalar(select(Task.id).where(Task.name == task.name)) is not None:
        raise HTTPException(409, f"a task named {task.name!r} exists")
    check_tokenization(session, request, task)
    row = Task(
        name=task.name,
        builtin=False,
        completion_a=task.completion_a,
        completion_b=task.completion_b,
        description=task.description,
        spec=task.model_dump(mode="json"),
    )
    session.add(row)
    session.flush()
    base = summary(task.name, row, {})
    return TaskRead(**base.model_dump(), created_at=row.created_at)
