"""`circuits demo build | verify | load`: the shipped demo bundle (backend/demo.py). backend/cli.py
mounts these."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from backend.import_cli import _one_line, _user_errors
from backend.service_cli import HELP, _fail, _settings, _upgrade

demo_app = typer.Typer(help="The demo bundle: the default model, its dense twin, profiles, circuits.", **HELP)


def _bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="step", dynamic_ncols=True)

    def progress(message: str) -> None:
        bar.set_postfix_str(message)
        bar.update(1)

    return bar, progress


@demo_app.command("build")
def demo_build(
    sparse: Annotated[Path, typer.Option(help="the trained default model (recipe: demo.RECIPE)")] = Path(
        "runs/small-long-s0"
    ),
    dense: Annotated[Path, typer.Option(help="its trained dense twin")] = Path("runs/small-long-dense-s0"),
    out: Annotated[Path | None, typer.Option(help="bundle folder (default: the package's)")] = None,
    work: Annotated[Path, typer.Option(help="folder for intermediate results (resumable)")] = Path(
        "runs/demo-work"
    ),
    jobs: Annotated[int, typer.Option(help="processes at once, one torch thread each", min=1, max=8)] = 2,
) -> None:
    """Build the demo bundle from the two trained models: pack their weights, profile them, prune every
    task the sparse model does (with its controls) on both, and write the manifest."""
    from backend import demo

    bar, progress = _bar("demo build")
    try:
        manifest = demo.build(sparse, dense, out or demo.BUNDLE, work, jobs, progress=progress)
    except _user_errors() as e:
        _fail(_one_line(e))
    finally:
        bar.close()
    where = out or demo.BUNDLE
    size = demo.bundle_bytes(where) / 2**20
    typer.echo(f"bundle written to {where}: {len(manifest['circuits'])} circuits, {size:.1f} MiB")


@demo_app.command("verify")
def demo_verify(
    bundle: Annotated[Path | None, typer.Option(help="bundle folder (default: the package's)")] = None,
    tasks: Annotated[
        str | None, typer.Option(help="comma-separated tasks (default: every circuit's)")
    ] = None,
) -> None:
    """Prune the shipped models again and check that every shipped circuit's node set comes back exactly."""
    from backend import demo

    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    bar, progress = _bar("demo verify")
    try:
        rows = demo.verify(bundle or demo.BUNDLE, names, progress)
    except _user_errors() as e:
        _fail(_one_line(e))
    finally:
        bar.close()
    for r in rows:
        verdict = "same" if r["same"] else f"DIFFERENT (missing {r['missing'][:5]}, extra {r['extra'][:5]})"
        typer.echo(f"{r['kind']:6s} {r['task']:28s} {r['nodes']:4d} nodes: {verdict}")
    if not all(r["same"] for r in rows):
        raise typer.Exit(1)


@demo_app.command("show")
def demo_show(
    bundle: Annotated[Path | None, typer.Option(help="bundle folder (default: the package's)")] = None,
) -> None:
    """The bundle's table: per task, full-model test loss of both models, circuit sizes and test losses."""
    from backend import demo

    try:
        t = demo.table(bundle or demo.BUNDLE)
    except _user_errors() as e:
        _fail(_one_line(e))

    def pair(r: dict, key: str, form: str) -> str:
        return " / ".join(format(r[k][key], form) if key in r[k] else "–" for k in demo.KINDS)

    typer.echo(
        "| task | full (sparse / dense) | nodes | edges | circuit, test | circuit, held-out train | ablated |"
    )
    typer.echo("|---|---|---|---|---|---|---|")
    for r in t["tasks"]:
        miss = " (misses)" if not r["sparse"].get("meets_target", True) else ""
        cells = [pair(r, "full", ".3f"), pair(r, "nodes", "d"), pair(r, "edges", "d")]
        cells += [pair(r, "circuit", ".3f") + miss, pair(r, "circuit_train_heldout", ".3f")]
        typer.echo(f"| `{r['task']}` | " + " | ".join([*cells, pair(r, "ablated", ".3f")]) + " |")
    c = t["comparison"]
    typer.echo(
        f"dense/sparse edge ratio, geometric mean over {len(c['tasks'])} tasks both circuits meet "
        f"{t['target_loss']:g} on: {c['geomean_edge_ratio']:.2f} (nodes {c['geomean_node_ratio']:.2f})"
    )


@demo_app.command("load")
def demo_load(
    bundle: Annotated[Path | None, typer.Option(help="bundle folder (default: the package's)")] = None,
) -> None:
    """Add the demo's models, profiles and circuits to the database (beside your own rows; once)."""
    from backend import demo
    from backend.db import Database

    settings = _settings()
    _upgrade(settings)
    db = Database(settings)
    bar, progress = _bar("demo load")
    try:
        ids = demo.load(db, settings, bundle or demo.BUNDLE, progress)
    except _user_errors() as e:
        _fail(_one_line(e))
    finally:
        bar.close()
        db.dispose()
    typer.echo(f"demo models {ids}" if ids else "the demo is loaded already")
