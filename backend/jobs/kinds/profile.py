"""profile: per-node statistics and percentile-binned activation examples of a trained model over a
corpus sample, and its mean activations (for mean ablation) beside the weights."""

from __future__ import annotations

from sqlalchemy import update

from worker.engine.activations import ProfileConfig

from ...models import JobStatus, Model
from ...schemas import Strict
from ...settings import Settings
from ..checks import cap, ready_model
from ..lifecycle import job_device
from ..params import ModelId, Seed, device_field, from_engine
from ..registry import JobKind
from ..store import model_folder, write_profile


class ProfileParams(Strict):
    """Per-node statistics and activation examples of a trained model over a corpus sample."""

    model_id: ModelId
    tokens: int = from_engine(ProfileConfig, "tokens", ge=1024, description="corpus tokens to run through")
    examples_per_bin: int = from_engine(ProfileConfig, "examples", le=20)
    context: int = from_engine(
        ProfileConfig, "context", le=64, description="tokens of context on each side of an example"
    )
    seed: Seed = from_engine(ProfileConfig, "seed")
    device: str | None = device_field()


def check(session, settings: Settings, params: ProfileParams) -> None:
    cap(params.tokens, settings.max_profile_tokens, "params.tokens", "max_profile_tokens")
    ready_model(session, params.model_id)


def run(ctx, job, params: ProfileParams, attempt) -> None:
    from safetensors.torch import save_file

    from worker.engine.ablation import MEANS
    from worker.engine.activations import profile_model
    from worker.engine.checkpoints import load_model
    from worker.engine.data import load_corpus, split_corpus

    model, folder = model_folder(ctx, params.model_id)
    attempt.progress(0.0, "load", "loading the model and corpus", force=True)
    net, tok, run = load_model(folder, job_device(ctx.settings, params.device))
    docs, _ = split_corpus(load_corpus(run.train.corpus, run.train.max_corpus_bytes), run.train.val_percent)
    cfg = ProfileConfig(
        tokens=params.tokens, context=params.context, examples=params.examples_per_bin, seed=params.seed
    )
    profile = profile_model(net, tok, docs, cfg, lambda f, m: attempt.progress(0.02 + 0.8 * f, "profile", m))
    attempt.progress(0.82, "store", "writing node statistics and examples", force=True)
    # The means feed mean ablation (prune jobs, live ablation): cached beside the weights.
    tmp = folder / (MEANS + ".tmp")
    save_file({k: v.contiguous().cpu() for k, v in profile.means.items()}, str(tmp))
    tmp.replace(folder / MEANS)
    corpus = run.train.corpus or "stdlib"
    with ctx.db.session() as s:
        # No progress writes inside this transaction: on SQLite they would wait for its own write lock.
        counts = write_profile(s, model.id, profile, corpus, lambda f: attempt.check())
        s.execute(update(Model).where(Model.id == model.id).values(profiled=True))
        attempt.finish(
            s,
            JobStatus.succeeded,
            stage="done",
            message=f"profiled {counts['nodes']} nodes over {profile.n_tokens} tokens",
            result={"model_id": model.id, "tokens": profile.n_tokens, **counts},
        )


KIND = JobKind("profile", ProfileParams, run, check=check)
