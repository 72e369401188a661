"""`circuits import openai | openai-circuit`, `circuits models add` and `circuits export-graph`: models
and circuits made outside the app, in and out. backend/cli.py mounts these."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated

import typer

from backend.service_cli import HELP, _fail, _settings, _upgrade

import_app = typer.Typer(help="Bring released openai/circuit_sparsity models and circuits in.", **HELP)
models_app = typer.Typer(help="Model folders made outside the app.", **HELP)


def _user_errors():
    from pydantic import ValidationError

    from worker.engine.errors import UserError

    return (UserError, ValueError, ValidationError, OSError)


def _database():
    from backend.db import Database

    settings = _settings()
    _upgrade(settings)
    return settings, Database(settings)


def _one_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@import_app.callback()
def _import() -> None:
    """Bring released openai/circuit_sparsity models and circuits in."""


@import_app.command("openai")
def import_openai(
    folder: Annotated[Path, typer.Argument(help="released model folder: beeg_config.json + final_model.pt")],
    out: Annotated[Path, typer.Option(help="new model folder to write")],
    tokenizer: Annotated[
        Path | None, typer.Option(help="folder of the tokenizer's encoder.json + vocab.bpe (default: FOLDER)")
    ] = None,
) -> None:
    """Convert a released model into a model folder (eval-tasks, profile, prune read it; `circuits models
    add` puts it in the browser)."""
    from worker.engine.openai_format import import_released

    try:
        run = import_released(folder, out, tokenizer)
    except _user_errors() as e:
        _fail(_one_line(e))
    m = run.model
    typer.echo(
        f"model written to {out}: {m.n_layer} layers, d_model {m.d_model}, {m.n_head} heads x {m.d_head}, "
        f"vocab {m.vocab_size}, context {m.n_ctx} ({'dense' if run.train.dense else 'weight-sparse'})"
    )


@import_app.command("openai-circuit")
def import_openai_circuit(
    viz_data: Annotated[Path, typer.Argument(help="a released circuit's viz_data.pt")],
    model: Annotated[int, typer.Option(help="id of the imported model it belongs to", min=1)],
    task: Annotated[str | None, typer.Option(help="task name (default: from the file's folders)")] = None,
) -> None:
    """Store a released precomputed circuit as a circuit of an imported model (browsable, comparable)."""
    from backend.jobs.kinds.imports import import_circuit

    settings, db = _database()
    try:
        with db.session() as s:
            circuit_id = import_circuit(s, model, viz_data, task)
    except _user_errors() as e:
        _fail(_one_line(e))
    finally:
        db.dispose()
    typer.echo(f"circuit {circuit_id} of model {model}")


@models_app.callback()
def _models() -> None:
    """Model folders made outside the app."""


@models_app.command("add")
def models_add(
    folder: Annotated[
        Path, typer.Argument(help="a model folder (circuits train, bridge train, import openai)")
    ],
    name: Annotated[str | None, typer.Option(help="unique model name (default: the folder's name)")] = None,
) -> None:
    """Register a model folder (sparse, dense or bridged): copied under CIRCUITS_DATA_DIR/models, it can
    then be profiled, pruned and browsed."""
    from backend.jobs.kinds.imports import import_folder
    from backend.jobs.params import NAME_RE

    if name is not None and not NAME_RE.match(name):
        _fail(f"--name {name!r}: use 1-64 letters, digits, '_', '-' or '.'")
    settings, db = _database()
    try:
        model_id = import_folder(db, settings, "model", folder.resolve(), None, name, uuid.uuid4().hex[:12])
    except _user_errors() as e:
        _fail(_one_line(e))
    finally:
        db.dispose()
    typer.echo(f"model {model_id} ({name or folder.name})")


def export_graph(
    out: Annotated[Path, typer.Option(help="graph JSON file to write")],
    circuit: Annotated[int | None, typer.Option(help="id of a stored circuit", min=1)] = None,
    file: Annotated[Path | None, typer.Option(help="or a circuit JSON file (circuits prune --out)")] = None,
    model: Annotated[Path | None, typer.Option(help="with --file: its model folder")] = None,
) -> None:
    """Write a circuit as a circuit-tracer / Neuronpedia graph JSON."""
    from worker.engine.checkpoints import atomic_write_text

    if (circuit is None) == (file is None):
        _fail("give one of --circuit ID or --file CIRCUIT.json")
    try:
        if circuit is not None:
            graph = _stored_graph(circuit)
        else:
            graph = _file_graph(file, model)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(graph, indent=1))
    except _user_errors() as e:
        _fail(_one_line(e))
    typer.echo(f"{len(graph['nodes'])} nodes, {len(graph['links'])} links -> {out}")


def _stored_graph(circuit_id: int) -> dict:
    from sqlalchemy import select

    from backend.models import Circuit
    from backend.routes.circuits import circuit_graph_json

    _, db = _database()
    try:
        with db.session() as s:
            row = s.scalar(select(Circuit).where(Circuit.id == circuit_id))
            if row is None:
                raise ValueError(f"circuit {circuit_id} does not exist")
            return circuit_graph_json(row)
    finally:
        db.dispose()


def _file_graph(path: Path, model: Path | None) -> dict:
    from worker.engine.checkpoints import read_run_config
    from worker.engine.circuit import Circuit
    from worker.engine.graph_export import graph_json

    try:
        circuit = Circuit.from_json(json.loads(Path(path).read_text()))
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a circuit JSON file: {e}") from None
    folder = Path(model) if model is not None else Path(circuit.model)
    n_layer = read_run_config(folder).model.n_layer
    return graph_json(circuit, f"{folder.name}-{circuit.task}".lower(), folder.name, n_layer)
