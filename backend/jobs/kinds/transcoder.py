"""transcoder: a sweep of transcoders and an SAE baseline over every MLP of a model at several L1
coefficients, trained into transcoders/{job id}; then the selected transcoders' features profiled as
nodes `{l}.mlp.transcoder[j]` of the model and a circuit built per task, all registered in one
transaction. An attempt after a lost worker starts over (the folder is removed first)."""

from __future__ import annotations

from dataclasses import replace as with_tensors
from typing import Annotated

from pydantic import Field
from sqlalchemy import delete, select

from worker.engine.activations import ProfileConfig
from worker.engine.transcoders import CircuitConfig, TranscoderConfig

from ...models import JobStatus, Transcoder
from ...schemas import Strict
from ...settings import Settings
from ..checks import Conflict, cap, engine_config, ready_model
from ..lifecycle import job_device
from ..params import ModelId, Seed, device_field, from_engine
from ..registry import JobKind
from ..store import delete_node_rows, model_folder, task_data, task_row, write_circuit, write_profile

SWEEP = ("l1", "steps", "batch_size", "expansion", "sae", "selected", "eval_batches", "seed")


class TranscoderParams(Strict):
    """Train transcoders and an SAE baseline on every MLP of a model at several L1 coefficients, profile
    the selected transcoders' features and build their circuits for `tasks`
    (worker/engine/transcoders.py)."""

    model_id: ModelId
    l1: list[Annotated[float, Field(gt=0, le=1000)]] = from_engine(
        TranscoderConfig, "l1", description="the L1 sweep"
    )
    steps: int = from_engine(TranscoderConfig, "steps", description="training steps")
    batch_size: int = from_engine(
        TranscoderConfig, "batch_size", le=1024, description="sequences of n_ctx tokens per step"
    )
    expansion: int = from_engine(
        TranscoderConfig, "expansion", description="latents per layer = expansion * d_mlp"
    )
    sae: bool = from_engine(TranscoderConfig, "sae", description="also train the SAE baseline")
    selected: int | None = from_engine(
        TranscoderConfig,
        "selected",
        description="index into l1 of the transcoders behind features and circuits (default middle)",
    )
    eval_batches: int = from_engine(TranscoderConfig, "eval_batches", le=64, description="validation batches")
    profile_tokens: int = Field(
        ProfileConfig.model_fields["tokens"].default,
        ge=0,
        le=100_000_000,
        description="feature profile sample; 0 = no feature pages",
    )
    tasks: list[str] = Field(
        ["single_double_quote"],
        max_length=32,
        description="tasks to build circuits for",
    )
    tolerance: float = from_engine(
        CircuitConfig, "tolerance", description="allowed rise of a circuit's task CE"
    )
    replace: bool = Field(False, description="replace the model's existing transcoders (else 409)")
    seed: Seed = from_engine(TranscoderConfig, "seed")
    device: str | None = device_field()


def sweep_config(params: TranscoderParams) -> TranscoderConfig:
    return engine_config(TranscoderConfig, params.model_dump(include=set(SWEEP)))


def check(session, settings: Settings, params: TranscoderParams) -> None:
    cfg = sweep_config(params)
    cfg.selected_index()  # a ValueError naming `selected`
    cap(cfg.steps, settings.max_transcoder_steps, "params.steps", "max_transcoder_steps")
    cap(params.profile_tokens, settings.max_profile_tokens, "params.profile_tokens", "max_profile_tokens")
    model = ready_model(session, params.model_id)
    step_tokens = cfg.batch_size * model.config["model"]["n_ctx"]
    cap(step_tokens, settings.max_batch_tokens, "batch_size * n_ctx", "max_batch_tokens")
    for name in params.tasks:
        task_row(session, name)  # TaskError (422) naming the known tasks
    existing = session.scalar(select(Transcoder.id).where(Transcoder.model_id == model.id).limit(1))
    if existing is not None and not params.replace:
        raise Conflict(
            f"model {model.id} already has transcoders ({existing}); set params.replace to replace them"
        )


def folder_of(job_id: str) -> str:
    return f"transcoders/{job_id}"


def run(ctx, job, params: TranscoderParams, attempt) -> None:
    from worker.engine.checkpoints import load_model
    from worker.engine.sites import feature_site
    from worker.engine.transcoders import profile_features, train_transcoders, transcoder_circuit

    model, dense_folder = model_folder(ctx, params.model_id)
    model_id, relative = model.id, folder_of(job.id)
    attempt.progress(0.0, "load", "loading the model", force=True)
    device = job_device(ctx.settings, params.device)
    net, tok, run = load_model(dense_folder, device)
    with_profile, n_tasks = params.profile_tokens > 0, len(params.tasks)
    span = 0.7 if (with_profile or n_tasks) else 0.97
    tr = train_transcoders(
        net,
        tok,
        run,
        sweep_config(params),
        dense_folder,
        ctx.settings.artifact(relative),
        lambda f, m: attempt.progress(0.01 + span * f, "train", m),
    )
    profile = None
    if with_profile:
        pcfg = ProfileConfig(tokens=params.profile_tokens, seed=params.seed)
        profile = profile_features(
            net, tok, run, tr.selected, pcfg, lambda f, m: attempt.progress(0.72 + 0.1 * f, "profile", m)
        )
    with ctx.db.session() as s:
        tasks = [(name, *task_fields(task_row(s, name))) for name in params.tasks]
    ccfg = CircuitConfig(tolerance=params.tolerance)
    circuits = []
    for k, (name, task_id, builtin, spec) in enumerate(tasks):
        data = task_data(name, spec, builtin, tok)
        data = with_tensors(data, train=data.train.to(device), test=data.test.to(device))

        def report(f: float, m: str, k=k, name=name) -> None:
            attempt.progress(0.83 + 0.15 * (k + f) / n_tasks, f"circuit {name}", m)

        circuits.append((task_id, transcoder_circuit(tr, net, data, ccfg, str(model_id), report)))
    attempt.progress(0.98, "store", "writing the sweep, features and circuits", force=True)
    with ctx.db.session() as s:
        if params.replace:  # the old features' rows go too: unprofiled new features have none
            s.execute(delete(Transcoder).where(Transcoder.model_id == model_id))
            delete_node_rows(s, model_id, [feature_site(i) for i in range(net.cfg.n_layer)])
        row = Transcoder(
            model_id=model_id,
            config=tr.run.model_dump(mode="json"),
            sweep=tr.sweep,
            width=tr.run.width,
            artifact_path=relative,
            job_id=job.id,
        )
        s.add(row)
        s.flush()
        counts = {}
        if profile is not None:
            counts = write_profile(
                s, model_id, profile, run.train.corpus or "stdlib", lambda f: attempt.check()
            )
        circuit_ids = [
            write_circuit(s, model_id, task_id, c, ccfg, job.id, transcoder_id=row.id)
            for task_id, c in circuits
        ]
        matched = tr.sweep["matched"]
        attempt.finish(
            s,
            JobStatus.succeeded,
            stage="done",
            message=(
                f"transcoders {row.id}: transcoder <= SAE at matched L0 in "
                f"{matched['transcoder_better_settings']} of {len(matched['settings'])} settings; "
                f"{len(circuit_ids)} circuits"
            ),
            result={"model_id": model_id, "transcoder_id": row.id, "circuit_ids": circuit_ids, **counts},
        )


def task_fields(row) -> tuple[int, bool, dict]:
    return row.id, row.builtin, row.spec


def remove_sweep(ctx, session, job_id: str) -> None:
    """Cleanup: the job's folder (nothing refers to it before the job succeeded)."""
    from worker.engine.transcoders import remove_folder

    remove_folder(ctx.settings.artifact(folder_of(job_id)))


KIND = JobKind("transcoder", TranscoderParams, run, check=check, cleanup=remove_sweep)
