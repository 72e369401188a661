"""ORM tables. Node names are the `site[index]` strings of DESIGN.md; every API lookup has an index.

Changing a table means adding an Alembic migration (migrations/versions); tests/test_db.py checks that
the migrations and these classes agree.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Explicit constraint names, so migrations are identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores no zone; we store UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use datetime.now(UTC)")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict: JSON, list: JSON}


class ModelKind(enum.StrEnum):
    sparse = "sparse"
    dense = "dense"


class ModelStatus(enum.StrEnum):
    training = "training"
    ready = "ready"
    failed = "failed"


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # ModelKind
    status: Mapped[str] = mapped_column(String(16), index=True)  # ModelStatus
    config: Mapped[dict]  # the RunConfig (config.json)
    n_params: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[list] = mapped_column(default=list)  # training curve: [{step, loss, val_loss, ...}]
    summary: Mapped[dict] = mapped_column(default=dict)  # final val_loss, L0, dead neurons, ...
    artifact_path: Mapped[str] = mapped_column(String(512))  # folder, relative to data_dir
    profiled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Shipped with the app (the demo bundle loaded into a fresh data dir), not trained here.
    demo: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    job_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    circuits: Mapped[list[Circuit]] = relationship(back_populates="model", cascade="all, delete-orphan")

    @property
    def bridged(self) -> bool:
        """A sparse model trained with bridges to a dense one (its config has a bridge section)."""
        return bool((self.config or {}).get("bridge"))


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    completion_a: Mapped[str] = mapped_column(String(256))
    completion_b: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict] = mapped_column(default=dict)  # custom tasks: their definition
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Circuit(Base):
    __tablename__ = "circuits"
    __table_args__ = (Index("ix_circuits_model_task", "model_id", "task_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    target_loss: Mapped[float] = mapped_column(Float)
    n_nodes: Mapped[int] = mapped_column(Integer)
    n_edges: Mapped[int] = mapped_column(Integer)
    losses: Mapped[dict]  # {full, circuit, ablated, circuit_uncalibrated}
    calibration: Mapped[dict]  # {scale, shift}
    curve: Mapped[list]  # loss vs k: [{k, loss}]
    runs: Mapped[list]  # the hyper-parameter search
    validation: Mapped[dict] = mapped_column(default=dict)
    faithfulness: Mapped[dict] = mapped_column(default=dict)  # per ablation mode: curve, CPR, CMD
    params: Mapped[dict] = mapped_column(default=dict)  # the PruneConfig (or transcoder CircuitConfig) used
    # Transcoder circuits: the transcoders whose features are the nodes (deleted with them).
    transcoder_id: Mapped[int | None] = mapped_column(
        ForeignKey("transcoders.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    model: Mapped[Model] = relationship(back_populates="circuits")
    task: Mapped[Task] = relationship()
    nodes: Mapped[list[CircuitNode]] = relationship(
        cascade="all, delete-orphan", order_by="CircuitNode.id", passive_deletes=True
    )
    edges: Mapped[list[CircuitEdge]] = relationship(
        cascade="all, delete-orphan", order_by="CircuitEdge.id", passive_deletes=True
    )


class CircuitNode(Base):
    __tablename__ = "circuit_nodes"
    __table_args__ = (UniqueConstraint("circuit_id", "name"), Index("ix_circuit_nodes_name", "name"))

    id: Mapped[int] = mapped_column(primary_key=True)
    circuit_id: Mapped[int] = mapped_column(ForeignKey("circuits.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))  # site[index]
    site: Mapped[str] = mapped_column(String(48))
    layer: Mapped[int | None] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    tau: Mapped[float] = mapped_column(Float)


class CircuitEdge(Base):
    __tablename__ = "circuit_edges"
    __table_args__ = (
        Index("ix_circuit_edges_src", "circuit_id", "src"),
        Index("ix_circuit_edges_dst", "circuit_id", "dst"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    circuit_id: Mapped[int] = mapped_column(ForeignKey("circuits.id", ondelete="CASCADE"))
    src: Mapped[str] = mapped_column(String(64))
    dst: Mapped[str] = mapped_column(String(64))
    weight: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(16))  # weight | residual | qk | attribution
    # attribution edges (transcoder circuits): weight = activation x weight_product
    activation: Mapped[float | None] = mapped_column(Float)
    weight_product: Mapped[float | None] = mapped_column(Float)


class Transcoder(Base):
    """A transcoder (+ SAE) sweep over a model's MLPs (worker/engine/transcoders.py): the folder under
    data_dir, its configuration and figures. The selected transcoders' features are nodes
    `{l}.mlp.transcoder[j]` of the model (node stats and examples under the model's id)."""

    __tablename__ = "transcoders"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    config: Mapped[dict]  # the folder's config.json (TranscoderRun: sweep settings, dense fingerprint)
    sweep: Mapped[dict]  # sweep.json: reference CEs, points (kind, l1, layer, L0, CE, FVU), matched L0
    width: Mapped[int] = mapped_column(Integer)  # latents per layer
    artifact_path: Mapped[str] = mapped_column(String(512))  # folder, relative to data_dir
    job_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class NodeStat(Base):
    __tablename__ = "node_stats"
    __table_args__ = (
        UniqueConstraint("model_id", "name"),
        Index("ix_node_stats_model_site", "model_id", "site"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))  # site[index]
    site: Mapped[str] = mapped_column(String(48))
    layer: Mapped[int | None] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    mean: Mapped[float] = mapped_column(Float)
    std: Mapped[float | None] = mapped_column(Float)
    frequency: Mapped[float] = mapped_column(Float)  # fraction of tokens with a nonzero activation
    quantiles: Mapped[dict] = mapped_column(default=dict)  # {"0.001": v, ..., "0.999": v}
    thresholds: Mapped[dict] = mapped_column(
        default=dict, server_default="{}"
    )  # lower edge of each example bin: {"top_1": v}


class CorpusDocument(Base):
    """Corpus text stored once; examples point into it by document id and character offset."""

    __tablename__ = "corpus_documents"
    __table_args__ = (UniqueConstraint("sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    corpus: Mapped[str] = mapped_column(String(512))  # corpus spec ("stdlib" or a path)
    path: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)


class ActivationExample(Base):
    """One context window around a token where a node fired: token ids (int32) and the node's
    float16 activations over the window, as raw little-endian bytes."""

    __tablename__ = "activation_examples"
    __table_args__ = (
        Index("ix_activation_examples_lookup", "model_id", "node", "bin"),
        Index("ix_activation_examples_model_site", "model_id", "site"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    node: Mapped[str] = mapped_column(String(64))  # site[index]
    site: Mapped[str] = mapped_column(String(48))
    bin: Mapped[str] = mapped_column(String(16))  # e.g. "top_0.1", "bottom_50"
    rank: Mapped[int] = mapped_column(Integer)  # order within the bin
    activation: Mapped[float] = mapped_column(Float)  # at the centre token
    center: Mapped[int] = mapped_column(Integer)  # position of the centre token in the window
    token_ids: Mapped[bytes] = mapped_column(LargeBinary)  # int32
    values: Mapped[bytes] = mapped_column(LargeBinary)  # float16
    document_id: Mapped[int | None] = mapped_column(
        ForeignKey("corpus_documents.id", ondelete="SET NULL"), index=True
    )
    offset: Mapped[int | None] = mapped_column(Integer)  # character span of the window in the document
    end: Mapped[int | None] = mapped_column(Integer)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),
        Index("ix_jobs_kind_status", "kind", "status"),
        Index("ix_jobs_key_created", "api_key_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    kind: Mapped[str] = mapped_column(String(16))  # train | profile | prune | transcoder
    params: Mapped[dict]
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str] = mapped_column(String(64), default="queued")
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict] = mapped_column(default=dict)  # e.g. {"model_id": 3} or {"circuit_id": 7}
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(128))  # host:pid of the current attempt
    claim: Mapped[str | None] = mapped_column(String(32))  # token of the current attempt
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    published_at: Mapped[datetime | None]  # last handed to the queue (None: not yet)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]


class ApiKey(Base):
    """Keys are shown once at creation; only their SHA-256 is stored (they are 256-bit random)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
