"""Every setting of the backend and the worker: one class, environment variables prefixed CIRCUITS_."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CIRCUITS_", extra="ignore")

    # Storage: artifacts (model folders) live under data_dir; the database defaults to a SQLite file there.
    data_dir: Path = Path("./data")
    database_url: str | None = None  # e.g. postgresql+psycopg://user@host/db; None = SQLite in data_dir
    database_connect_retry_seconds: float = Field(10.0, ge=0)  # keep trying a (re)starting server this long

    # Jobs: Celery with this broker (e.g. redis://localhost:6379/0); None = in-process runner threads.
    broker_url: str | None = None
    inprocess_workers: int = Field(1, ge=1, le=16)
    job_max_attempts: int = Field(3, ge=1, le=20)  # a job whose worker died this often is failed
    heartbeat_seconds: float = Field(2.0, gt=0)  # a running job touches its row this often
    stale_after_seconds: float = Field(60.0, gt=0)  # no heartbeat for this long = its worker died
    sweep_seconds: float = Field(15.0, gt=0)  # how often workers look for jobs of dead workers
    # Celery: a job queued this long with no worker claim is published again (its message may be lost).
    republish_after_seconds: float = Field(300.0, gt=0)
    visibility_timeout_seconds: int = Field(3600, ge=1)  # Redis redelivers unacked messages after this
    broker_timeout_seconds: float = Field(3.0, gt=0)  # give up reaching the broker after this (-> 503)
    progress_min_interval: float = Field(0.5, ge=0)  # seconds between progress writes to the database
    device: str = Field("cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$")  # jobs' default; their `device` overrides
    torch_threads: int | None = Field(None, ge=1)  # CPU threads a job's torch may use; None = torch default

    # Access: writes always need an x-api-key; reads only when this is set.
    reads_require_key: bool = False
    job_rate_limit: int = Field(30, ge=1)  # job submissions per key ...
    job_rate_window_seconds: float = Field(3600.0, gt=0)  # ... per this window

    # Interactive forward passes (playground, live ablation, steering, task samples) run on their own
    # threads: this many at once, this many more waiting, then 503; reads never wait behind them.
    interactive_workers: int = Field(2, ge=1, le=64)
    interactive_queue: int = Field(8, ge=0, le=1024)
    interactive_max_tokens: int = Field(131_072, ge=1)  # tokens one request may run through a model
    anonymous_rate: float = Field(2.0, gt=0)  # interactive requests per second per client without a key
    anonymous_burst: int = Field(30, ge=1)  # ... in bursts of at most this many (then 429)

    # Caps on job parameters (422 naming the limit when exceeded).
    max_job_memory_bytes: int = Field(16 * 2**30, ge=1)  # estimated peak memory of a job (budget.py)
    max_job_flops: float = Field(1e17, gt=0, allow_inf_nan=False)  # estimated compute of a job
    max_model_params: int = Field(50_000_000, ge=1)  # weights of a model to train
    max_train_steps: int = Field(20_000, ge=1)
    max_corpus_bytes: int = Field(200_000_000, ge=1)
    max_batch_tokens: int = Field(262_144, ge=1)  # batch_size * n_ctx of a training step (and its evals)
    max_prune_steps: int = Field(2_000, ge=1)
    max_prune_runs: int = Field(16, ge=1)
    max_profile_tokens: int = Field(2_000_000, ge=1)
    max_transcoder_steps: int = Field(20_000, ge=1)  # training steps of a transcoder sweep
    max_import_params: int = Field(600_000_000, ge=1)  # weights of a released model to import

    # The first `circuits serve` on an empty database loads the shipped demo (backend/demo.py).
    demo: bool = True

    # Imports (the `import` job): server-side folders under this root only; None = imports are off.
    import_root: Path | None = None

    # The API process's LRU cache of loaded models for interactive forward passes.
    model_cache_size: int = Field(4, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)  # larger request bodies get 413

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'circuits.db').resolve()}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    def artifact(self, relative: str) -> Path:
        """Artifact paths are stored relative to data_dir, so API and worker may mount it anywhere."""
        return self.data_dir / relative


@lru_cache
def get_settings() -> Settings:
    return Settings()
