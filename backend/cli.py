"""The `circuits` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from backend.demo_cli import demo_app
from backend.import_cli import export_graph, import_app, models_app
from backend.service_cli import apikey_app, db_app, serve, worker
from worker.engine.errors import UserError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None
)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


# Bad input: one line, exit 2 (UserError: the engine's base class of such errors).
USER_ERRORS = (UserError, ValueError, ValidationError, OSError)


def describe(e: Exception) -> str:
    """One line naming the problem; pydantic errors name the offending field."""
    if isinstance(e, ValidationError):
        return "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def train_progress_bar(desc: str):
    """(progress callback, close) with a tqdm bar over training steps (from the records' figures)."""
    from tqdm import tqdm

    bar = None

    def progress(fraction: float, message: str, **rec) -> None:
        nonlocal bar
        if rec["stage"] != "train":
            if bar is None:
                typer.echo(f"{rec['stage']}...", err=True)
            return
        if bar is None:
            bar = tqdm(total=rec["total"], initial=rec["step"], desc=desc, unit="step", dynamic_ncols=True)
        if "loss" in rec:
            bar.update(rec["step"] - bar.n)
            post = {
                "loss": f"{rec['loss']:.3f}",
                "L0": f"{rec['density']:.4f}",
                "tok/s": f"{rec['tokens_per_s']:.0f}",
            }
            for key, label in (("val_loss", "val"), ("kl_d2s", "kl_d2s"), ("kl_s2d", "kl_s2d")):
                if key in rec:
                    post[label] = f"{rec[key]:.3f}"
            bar.set_postfix(post)

    def close() -> None:
        if bar is not None:
            bar.close()

    return progress, close


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="folder for the checkpoint, tokenizer and metrics")],
    preset: Annotated[str, typer.Option(help="test | small | small-long")] = "small",
    dense: Annotated[bool, typer.Option("--dense", help="same architecture without weight sparsity")] = False,
    steps: Annotated[int | None, typer.Option(help="optimizer steps (default: the preset's)")] = None,
    corpus: Annotated[
        str | None, typer.Option(help="directory or glob of text files (default: stdlib)")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="seed of weights and batches (default: the preset's)")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the run in --out from its checkpoint")
    ] = False,
) -> None:
    """Train a weight-sparse (or --dense) transformer."""
    from worker.engine import config as cfg
    from worker.engine.checkpoints import read_run_config
    from worker.engine.train import train as run_training

    if steps is not None and steps < 1:
        fail(f"--steps must be a positive integer, got {steps}")
    if seed is not None and not 0 <= seed < 2**31:
        fail(f"--seed must be in [0, 2**31), got {seed}")
    progress, close = train_progress_bar("train")
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
            if seed is not None:
                run.train = run.train.model_copy(update={"seed": seed})
        run_training(run, out, resume=resume, on_progress=progress)
    except USER_ERRORS as e:
        fail(describe(e))
    finally:
        close()
    typer.echo(f"model written to {out}")


@app.command("eval-tasks")
def eval_tasks(
    model: Annotated[Path, typer.Option(help="trained model folder")],
    tasks: Annotated[
        str | None, typer.Option(help="comma-separated task names or custom .json files (default: all)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Accuracy and per-prompt two-class loss of a model on the tasks' test split."""
    from worker.engine.checkpoints import load_model
    from worker.engine.data import load_corpus
    from worker.engine.tasks import REGISTRY, evaluate_task, load_task

    try:
        names = [n.strip() for n in tasks.split(",")] if tasks else sorted(REGISTRY)
        net, tok, _ = load_model(model)
        docs = load_corpus(None)
        results = {}
        for name in names:
            data = load_task(name, tok, docs)
            results[data.name] = {**evaluate_task(net, data), "files": split_files(data)}
    except USER_ERRORS as e:
        fail(describe(e))
    if as_json:
        typer.echo(json.dumps({"tasks": results}, indent=2))
    else:
        for name, r in results.items():
            files = r["files"]
            typer.echo(
                f"{name:26s} accuracy {r['accuracy']:.3f}  loss {r['loss']:.4f}  ({r['prompts']} prompts; "
                f"test {files['test']['files']} files, largest {files['test']['largest_share']:.0%}; "
                f"train {files['train']['files']} files)"
            )


def split_files(data) -> dict:
    """Files per split and the largest file's share of the split's pairs."""
    out = {}
    for split in ("train", "test"):
        counts = data.files(split)
        total = max(1, sum(counts.values()))
        out[split] = {"files": len(counts), "largest_share": max(counts.values(), default=0) / total}
    return out


class FractionBar:
    """A tqdm bar driven by (fraction, message) progress callbacks."""

    def __init__(self, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(
            total=1000, desc=desc, dynamic_ncols=True, bar_format="{l_bar}{bar}| {elapsed} {postfix}"
        )

    def __call__(self, fraction: float, message: str, **figures) -> None:
        self.bar.update(int(fraction * 1000) - self.bar.n)
        self.bar.set_postfix_str(message)

    def close(self) -> None:
        self.bar.close()


TargetLoss = Annotated[
    float | None, typer.Option(help="per-prompt two-class CE the circuit must reach (default: PruneConfig's)")
]
Runs = Annotated[int | None, typer.Option(help="hyper-parameter search runs (default: PruneConfig's)")]
Steps = Annotated[int | None, typer.Option(help="mask optimisation steps per run (default: PruneConfig's)")]


Ablation = Annotated[
    str | None,
    typer.Option(help="what masked nodes are replaced by: mean | zero | resample (default: PruneConfig's)"),
]


Unit = Annotated[
    str | None,
    typer.Option(help="what the masks are on: nodes | edges (default: PruneConfig's, nodes)"),
]


SelectPairs = Annotated[
    int | None,
    typer.Option(help="pairs from further held-out files that choose between runs (0: the bisection pairs)"),
]


def prune_config(
    target_loss: float | None,
    runs: int | None,
    steps: int | None,
    ablation: str | None = None,
    unit: str | None = None,
    select_pairs: int | None = None,
):
    from worker.engine.prune import PruneConfig

    given = {
        "target_loss": target_loss,
        "runs": runs,
        "steps": steps,
        "ablation": ablation,
        "unit": unit,
        "select_pairs": select_pairs,
    }
    return PruneConfig(**{k: v for k, v in given.items() if v is not None})


def prune_one(model: Path, task: str, cfg, validate: bool = False):
    """Load a model and its cached ablation statistics, prune it on one task (with a progress bar)."""
    from worker.engine.ablation import load_ablation
    from worker.engine.checkpoints import load_model
    from worker.engine.prune import find_circuit
    from worker.engine.prune import validate as validate_circuit
    from worker.engine.tasks import load_task

    net, tok, run = load_model(model)
    data = load_task(task, tok)
    ablation = load_ablation(model, net, tok, run, cfg.ablation, cfg.seed)
    bar = FractionBar(f"prune {data.name} ({model.name})")
    try:
        circuit = find_circuit(net, data, ablation, cfg, str(model), bar)
        if validate:
            bar(1.0, "controls")
            validate_circuit(net, data, ablation, circuit, cfg)
    finally:
        bar.close()
    return circuit


@app.command()
def prune(
    model: Annotated[Path, typer.Option(help="trained model folder")],
    task: Annotated[str, typer.Option(help="task name (see eval-tasks) or a custom task's .json file")],
    out: Annotated[Path, typer.Option(help="circuit JSON file to write")],
    target_loss: TargetLoss = None,
    runs: Runs = None,
    steps: Steps = None,
    ablation: Ablation = None,
    unit: Unit = None,
    select_pairs: SelectPairs = None,
    validate: Annotated[bool, typer.Option("--validate", help="also run the controls")] = False,
) -> None:
    """Prune a model to the smallest circuit that does a task."""
    from worker.engine.checkpoints import atomic_write_text

    try:
        cfg = prune_config(target_loss, runs, steps, ablation, unit, select_pairs)
        circuit = prune_one(model, task, cfg, validate)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(circuit.to_json(), indent=1))
    except USER_ERRORS as e:
        fail(describe(e))
    losses = circuit.losses
    typer.echo(
        f"{circuit.task}: {len(circuit.nodes)} nodes, {len(circuit.edges)} edges; loss full "
        f"{losses['full']:.3f} circuit {losses['circuit']:.3f} ablated {losses['ablated']:.3f} -> {out}"
    )
    for mode, curve in circuit.faithfulness["modes"].items():
        typer.echo(f"faithfulness ({mode} ablation): CPR {curve['cpr']:.3f} CMD {curve['cmd']:.3f}")
    if validate:
        for check in circuit.validation["checks"]:
            verdict = "pass" if check["passed"] else "FAIL"
            typer.echo(f"{verdict} {check['name']}: {check['value']:.3f} ({check['criterion']})")


@app.command()
def compare(
    sparse: Annotated[Path, typer.Option(help="weight-sparse model folder")],
    dense: Annotated[Path, typer.Option(help="dense baseline model folder")],
    tasks: Annotated[str, typer.Option(help="comma-separated task names or custom .json files")],
    target_loss: TargetLoss = None,
    runs: Runs = None,
    steps: Steps = None,
    out: Annotated[Path | None, typer.Option(help="folder for the circuits and the table (JSON)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the table as JSON")] = False,
) -> None:
    """Prune a sparse model and its dense baseline on the same tasks; print circuit sizes and ratios."""
    from worker.engine.checkpoints import atomic_write_text
    from worker.engine.circuit import size_comparison

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        fail("--tasks names no task")
    try:
        cfg = prune_config(target_loss, runs, steps)
        pairs = {}
        for name in names:
            pair = tuple(prune_one(folder, name, cfg) for folder in (sparse, dense))
            pairs[pair[0].task] = pair
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                for kind, c in zip(("sparse", "dense"), pair, strict=True):
                    atomic_write_text(out / f"{c.task}.{kind}.json", json.dumps(c.to_json(), indent=1))
    except USER_ERRORS as e:
        fail(describe(e))
    table = size_comparison(pairs)
    if out is not None:
        atomic_write_text(out / "comparison.json", json.dumps(table, indent=1))
    if as_json:
        typer.echo(json.dumps(table, indent=2))
        return
    typer.echo(f"{'task':28s} {'sparse n/e':>12s} {'dense n/e':>12s} {'edge ratio':>10s}  losses s/d")
    for r in table["tasks"]:
        typer.echo(
            f"{r['task']:28s} {r['sparse_nodes']:5d}/{r['sparse_edges']:<6d} {r['dense_nodes']:5d}/"
            f"{r['dense_edges']:<6d} {r['edge_ratio']:10.2f}  {r['sparse_loss']:.3f}/{r['dense_loss']:.3f}"
        )
    typer.echo(
        f"geometric mean over {len(table['tasks'])} tasks: edge ratio {table['geomean_edge_ratio']:.2f}, "
        f"node ratio {table['geomean_node_ratio']:.2f}"
    )


bridge_app = typer.Typer(
    help="Bridges between a dense model and a sparse one; steering the dense model through sparse nodes.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
)


def print_bridge_report(report: dict) -> None:
    typer.echo(
        f"step {report.get('step')}: sparse val loss {report.get('val_loss', float('nan')):.3f}, dense "
        f"{report.get('dense_val_loss', float('nan')):.3f}, KL(dense || sparse) {report['kl_sparse']:.3f}"
    )
    typer.echo(f"{'location':18s} {'NMSE enc':>9s} {'NMSE dec':>9s} {'KL d->s':>9s} {'KL s->d':>9s}")
    for loc, r in report["locations"].items():
        typer.echo(
            f"{loc:18s} {r['nmse_enc']:9.3f} {r['nmse_dec']:9.3f} {r['kl_d2s']:9.3f} {r['kl_s2d']:9.3f}"
        )


@bridge_app.command("train")
def bridge_train(
    out: Annotated[Path, typer.Option(help="folder for the bridged sparse model")],
    dense: Annotated[
        Path | None, typer.Option(help="trained dense model folder (frozen); with --resume: the saved one")
    ] = None,
    preset: Annotated[str, typer.Option(help="sparse model's preset: test | small | small-long")] = "small",
    steps: Annotated[int | None, typer.Option(help="optimizer steps (default: the preset's)")] = None,
    hybrid_sites_per_step: Annotated[
        int | None, typer.Option(help="locations per step and direction for the hybrid KL (0 = all)")
    ] = None,
    kl_coef: Annotated[float | None, typer.Option(help="weight of each hybrid KL term")] = None,
    nmse_coef: Annotated[float | None, typer.Option(help="weight of the encoder + decoder NMSE")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the final report as JSON")] = False,
) -> None:
    """Train a sparse model jointly with bridges to a frozen dense model; print per-location NMSE and KL."""
    from worker.engine.bridges import bridged_run, final_report, train_bridged

    if steps is not None and steps < 1:
        fail(f"--steps must be a positive integer, got {steps}")
    if not resume and dense is None:
        fail("--dense is required (the trained dense model folder)")
    given = {"hybrid_sites_per_step": hybrid_sites_per_step, "kl_coef": kl_coef, "nmse_coef": nmse_coef}
    options = {k: v for k, v in given.items() if v is not None}
    if resume and (options or steps is not None):
        fail("resume keeps the saved configuration; drop --steps and the bridge options")
    progress, close = train_progress_bar("bridge")
    try:
        run = None if resume else bridged_run(dense, preset, steps, **options)
        train_bridged(run, out, dense_folder=dense, resume=resume, on_progress=progress)
        report = final_report(out)
    except USER_ERRORS as e:
        fail(describe(e))
    finally:
        close()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_bridge_report(report)
        typer.echo(f"bridged model written to {out}")


@bridge_app.command("report")
def bridge_report(
    model: Annotated[Path, typer.Option(help="bridged model folder")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Per-location NMSE and hybrid KL of a bridged model's last evaluation."""
    from worker.engine.bridges import final_report

    try:
        report = final_report(model)
    except USER_ERRORS as e:
        fail(describe(e))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_bridge_report(report)


def parse_strengths(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"--strengths must be comma-separated numbers, got {text!r}")
    if not values:
        fail("--strengths names no number")
    return values


@bridge_app.command("steer")
def bridge_steer(
    model: Annotated[Path, typer.Option(help="bridged model folder")],
    task: Annotated[str, typer.Option(help="task name or custom task .json whose test prompts are used")],
    node: Annotated[
        str,
        typer.Option(help="sparse node `site[index]`, or `auto`: the node that best tells the classes apart"),
    ],
    mode: Annotated[str, typer.Option(help="add | set")] = "add",
    strengths: Annotated[
        str | None,
        typer.Option(
            help="comma-separated values (default: steps from the node's mean on these prompts' "
            "class towards its mean on the other class)"
        ),
    ] = None,
    prompts: Annotated[str, typer.Option(help="class of the prompts to steer: a | b")] = "a",
    pairs: Annotated[int, typer.Option(help="test pairs to use", min=1)] = 128,
    position: Annotated[str, typer.Option(help="edit the node at the last position or at all")] = "last",
    circuit: Annotated[
        Path | None, typer.Option(help="with --node auto: pick among this circuit's nodes")
    ] = None,
    dense: Annotated[
        Path | None, typer.Option(help="the dense model folder (default: the saved path)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the random control node")] = 0,
    correct_only: Annotated[
        bool, typer.Option("--correct-only", help="only prompts the unsteered dense model gets right")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Steer the dense model through a sparse node: sweep strengths, print P(A), P(B) of the dense and the
    sparse model per strength, and the same for a random node of the same site (control)."""
    from worker.engine.bridges import load_bridged, node_class_means, steer
    from worker.engine.sites import node_name, site_dims
    from worker.engine.tasks import load_task

    values = parse_strengths(strengths)
    try:
        b = load_bridged(model, dense)
        data = load_task(task, b.tok)
        if node == "auto":
            if circuit is not None:
                nodes = [n["name"] for n in json.loads(circuit.read_text())["nodes"]]
            else:
                nodes = [node_name(s, i) for s, d in site_dims(b.sparse.cfg).items() for i in range(d)]
            if not nodes:
                fail(f"{circuit} has no nodes")
            ranked = node_class_means(b.sparse, data, nodes, pairs)
            node = max(ranked, key=lambda n: ranked[n]["effect"])
            typer.echo(f"auto: {node} (effect size {ranked[node]['effect']:.2f})", err=True)
        result = steer(b, data, node, mode, values, prompts, pairs, position, seed, correct_only)
    except USER_ERRORS as e:
        fail(describe(e))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    m = result["node_means"]
    typer.echo(
        f"{result['task']}: {result['mode']} {result['node']} ({result['position']} position) on "
        f"{result['prompts']} class-{result['prompt_class']} prompts"
        f"{' the dense model gets right' if result['correct_only'] else ''}, read at {result['location']}; "
        f"node mean on A {m['a']:.3f}, on B {m['b']:.3f}"
    )
    base = result["baseline"]
    typer.echo(
        f"unsteered: dense P(A) {base['dense_p_a']:.3f} P(B) {base['dense_p_b']:.3f}; "
        f"sparse P(A) {base['sparse_p_a']:.3f} P(B) {base['sparse_p_b']:.3f}  "
        f"(A = {result['completion_a']!r}, B = {result['completion_b']!r}, two-way)"
    )
    typer.echo(
        f"{'strength':>9s} | {'dense P(A)':>10s} {'P(B)':>6s} {'sparse P(A)':>11s} {'P(B)':>6s} | "
        f"control {result['control_node']}: dense P(B) sparse P(B)"
    )
    node_c, ctrl = result["curves"]["node"], result["curves"]["control"]
    for i, s in enumerate(result["strengths"]):
        typer.echo(
            f"{s:9.3f} | {node_c['dense_p_a'][i]:10.3f} {node_c['dense_p_b'][i]:6.3f} "
            f"{node_c['sparse_p_a'][i]:11.3f} {node_c['sparse_p_b'][i]:6.3f} | "
            f"{ctrl['dense_p_b'][i]:10.3f} {ctrl['sparse_p_b'][i]:11.3f}"
        )


transcoder_app = typer.Typer(
    help="Transcoders (and an SAE baseline) over a dense model's MLPs; attribution circuits of features.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
)


def parse_floats(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{option} takes comma-separated numbers, got {text!r}")
    if not values:
        fail(f"{option} names no value")
    return values


@transcoder_app.command("train")
def transcoder_train(
    dense: Annotated[Path, typer.Option(help="trained model folder whose MLPs get transcoders")],
    out: Annotated[Path, typer.Option(help="folder for the transcoders (config, weights, sweep)")],
    l1: Annotated[
        str | None, typer.Option(help="comma-separated L1 coefficients (default 3 settings)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="training steps (default: TranscoderConfig's)")] = None,
    expansion: Annotated[int, typer.Option(help="latents per layer = expansion * d_mlp")] = 1,
    sae: Annotated[bool, typer.Option("--sae/--no-sae", help="also train the SAE baseline")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the sweep as JSON")] = False,
) -> None:
    """Train a transcoder and an SAE per MLP layer at each L1 setting; print the sparsity-fidelity table."""
    from worker.engine.checkpoints import load_model
    from worker.engine.transcoders import TranscoderConfig, sweep_table, train_transcoders

    given = {"l1": parse_floats(l1, "--l1") if l1 is not None else None, "steps": steps}
    bar = None
    try:
        cfg = TranscoderConfig(
            expansion=expansion, sae=sae, **{k: v for k, v in given.items() if v is not None}
        )
        if out.exists() and any(out.iterdir()):
            fail(f"--out {out} exists and is not empty")
        model, tok, run = load_model(dense)
        bar = FractionBar(f"transcoders ({dense.name})")
        tr = train_transcoders(model, tok, run, cfg, dense, out, bar)
    except USER_ERRORS as e:
        fail(describe(e))
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        typer.echo(json.dumps(tr.sweep, indent=2))
    else:
        typer.echo("\n".join(sweep_table(tr.sweep)))
    typer.echo(f"transcoders written to {out} ({tr.sweep['seconds']:.0f} s)")


@transcoder_app.command("report")
def transcoder_report(
    transcoders: Annotated[Path, typer.Option(help="transcoder folder")],
    evaluate: Annotated[
        int | None,
        typer.Option(help="evaluate again on this many validation batches first (rewrites sweep.json)"),
    ] = None,
    dense: Annotated[
        Path | None, typer.Option(help="the dense model folder (default: where it was at training time)")
    ] = None,
) -> None:
    """Print a transcoder folder's sweep table (optionally evaluated again on more validation batches)."""
    from worker.engine.checkpoints import atomic_write_text
    from worker.engine.transcoders import (
        SWEEP,
        evaluate_transcoders,
        load_transcoders,
        read_transcoders,
        sweep_table,
    )

    bar = None
    try:
        if evaluate is not None and evaluate < 1:
            fail(f"--evaluate must be a positive number of batches, got {evaluate}")
        if evaluate is None:
            tr = read_transcoders(transcoders)
        else:
            tr, model, tok, run = load_transcoders(transcoders, dense)
            bar = FractionBar("evaluate")
            evaluate_transcoders(tr, model, tok, run, evaluate, bar)
            atomic_write_text(transcoders / SWEEP, json.dumps(tr.sweep, indent=1))
    except USER_ERRORS as e:
        fail(describe(e))
    finally:
        if bar is not None:
            bar.close()
    typer.echo("\n".join(sweep_table(tr.sweep)))


@transcoder_app.command("circuit")
def transcoder_circuit_cmd(
    transcoders: Annotated[Path, typer.Option(help="transcoder folder")],
    task: Annotated[str, typer.Option(help="task name (see eval-tasks) or a custom task's .json file")],
    out: Annotated[Path, typer.Option(help="circuit JSON file to write")],
    dense: Annotated[
        Path | None, typer.Option(help="the dense model folder (default: where it was at training time)")
    ] = None,
    tolerance: Annotated[float, typer.Option(help="allowed rise of the task CE over all features")] = 0.02,
) -> None:
    """Attribution graph between the selected transcoders' features on a task, pruned greedily."""
    from worker.engine.checkpoints import atomic_write_text
    from worker.engine.tasks import load_task
    from worker.engine.transcoders import CircuitConfig, load_transcoders, transcoder_circuit

    bar = None
    try:
        cfg = CircuitConfig(tolerance=tolerance)
        tr, model, tok, _ = load_transcoders(transcoders, dense)
        data = load_task(task, tok)
        bar = FractionBar(f"transcoder circuit {data.name}")
        circuit = transcoder_circuit(tr, model, data, cfg, str(dense or tr.run.dense.path), bar)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(circuit.to_json(), indent=1))
    except USER_ERRORS as e:
        fail(describe(e))
    finally:
        if bar is not None:
            bar.close()
    losses = circuit.losses
    typer.echo(
        f"{circuit.task}: {len(circuit.nodes)} features, {len(circuit.edges)} edges; test CE clean "
        f"{losses['full']:.3f}, replacement {losses['replacement']:.3f}, circuit {losses['circuit']:.3f}, "
        f"no features {losses['ablated']:.3f}; logit diff clean {losses['logit_diff_full']:.2f}, circuit "
        f"{losses['logit_diff_circuit']:.2f} -> {out}"
    )


app.command()(serve)
app.command()(worker)
app.add_typer(bridge_app, name="bridge")
app.add_typer(transcoder_app, name="transcoder")
app.add_typer(db_app, name="db")
app.add_typer(apikey_app, name="apikey")
app.add_typer(import_app, name="import")
app.add_typer(models_app, name="models")
app.add_typer(demo_app, name="demo")
app.command("export-graph")(export_graph)


def main() -> None:
    app(prog_name="circuits")


if __name__ == "__main__":
    sys.exit(main())
