"""The `circuits` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None
)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _user_errors():
    from pydantic import ValidationError

    return (ValueError, ValidationError, OSError)


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="folder for the checkpoint, tokenizer and metrics")],
    preset: Annotated[str, typer.Option(help="test | small")] = "small",
    dense: Annotated[bool, typer.Option("--dense", help="same architecture without weight sparsity")] = False,
    steps: Annotated[int | None, typer.Option(help="optimizer steps (default: the preset's)")] = None,
    corpus: Annotated[
        str | None, typer.Option(help="directory or glob of text files (default: stdlib)")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the run in --out from its checkpoint")
    ] = False,
) -> None:
    """Train a weight-sparse (or --dense) transformer."""
    from tqdm import tqdm

    from worker.engine import config as cfg
    from worker.engine.checkpoints import read_run_config
    from worker.engine.train import train as run_training

    if steps is not None and steps < 1:
        fail(f"--steps must be a positive integer, got {steps}")
    bar = None

    def progress(rec: dict) -> None:
        nonlocal bar
        if rec["stage"] != "train":
            if bar is None:
                typer.echo(f"{rec['stage']}...", err=True)
            return
        if bar is None:
            bar = tqdm(total=rec["total"], initial=rec["step"], desc="train", unit="step", dynamic_ncols=True)
        if "loss" in rec:
            bar.update(rec["step"] - bar.n)
            post = {
                "loss": f"{rec['loss']:.3f}",
                "L0": f"{rec['density']:.4f}",
                "tok/s": f"{rec['tokens_per_s']:.0f}",
            }
            if "val_loss" in rec:
                post["val"] = f"{rec['val_loss']:.3f}"
            bar.set_postfix(post)

    try:
        if resume:
            run = read_run_config(out)
            if steps is not None and steps != run.train.steps:
                fail(
                    f"--steps {steps} differs from the run's {run.train.steps}; resume keeps the saved config"
                )
        else:
            run = cfg.preset(preset, dense=dense, steps=steps)
            if corpus is not None:
                run.train = run.train.model_copy(update={"corpus": corpus})
        run_training(run, out, resume=resume, on_progress=progress)
    except _user_errors() as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    finally:
        if bar is not None:
            bar.close()
    typer.echo(f"model written to {out}")


@app.command("eval-tasks")
def eval_tasks(
    model: Annotated[Path, typer.Option(help="trained model folder")],
    tasks: Annotated[str | None, typer.Option(help="comma-separated task names (default: all)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Accuracy and per-prompt two-class loss of a model on the tasks' test split."""
    from worker.engine.checkpoints import load_model
    from worker.engine.data import load_corpus
    from worker.engine.tasks import REGISTRY, build_task, evaluate_task, get_task

    try:
        names = tasks.split(",") if tasks else sorted(REGISTRY)
        specs = [get_task(n.strip()) for n in names]
        net, tok, _ = load_model(model)
        docs = load_corpus(None)
        results = {s.name: evaluate_task(net, build_task(s, tok, docs)) for s in specs}
    except _user_errors() as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps({"tasks": results}, indent=2))
    else:
        for name, r in results.items():
            typer.echo(
                f"{name:24s} accuracy {r['accuracy']:.3f}  loss {r['loss']:.4f}  ({r['prompts']} prompts)"
            )


def main() -> None:
    app(prog_name="circuits")


if __name__ == "__main__":
    sys.exit(main())
