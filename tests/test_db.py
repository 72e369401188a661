"""Migrations on SQLite and PostgreSQL: they build exactly the ORM's schema, and the tables work."""

from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, Table, inspect, select
from sqlalchemy.exc import IntegrityError

from backend.db import Database, alembic_config, upgrade
from backend.models import Base, Circuit, CircuitEdge, CircuitNode, Job, Model, NodeStat, Task
from backend.settings import Settings

TABLES = {
    "models", "tasks", "circuits", "circuit_nodes", "circuit_edges", "node_stats", "activation_examples",
    "corpus_documents", "jobs", "api_keys",
}  # fmt: skip


@pytest.fixture
def settings(database_url, tmp_path):
    """SQLite, or a fresh PostgreSQL database of this test alone (conftest.database_url)."""
    return Settings(data_dir=tmp_path / "data", database_url=database_url)


def test_migrations_build_the_orm_schema(settings):
    upgrade(settings)
    db = Database(settings)
    assert TABLES <= set(inspect(db.engine).get_table_names())
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models.py and migrations/ disagree: {diff}"
    indexes = {i["name"] for i in inspect(db.engine).get_indexes("activation_examples")}
    assert "ix_activation_examples_lookup" in indexes
    db.dispose()
    command.downgrade(alembic_config(settings.db_url), "base")
    db = Database(settings)
    assert not TABLES & set(inspect(db.engine).get_table_names())
    db.dispose()
    upgrade(settings)  # and back up again


def test_rows_constraints_and_cascades(settings):
    upgrade(settings)
    db = Database(settings)
    with db.session() as s:
        model = Model(name="m", kind="sparse", status="ready", config={"a": 1}, artifact_path="models/1")
        task = Task(name="t", builtin=True, completion_a="'", completion_b='"')
        s.add_all([model, task])
        s.flush()
        circuit = Circuit(
            model_id=model.id,
            task_id=task.id,
            target_loss=0.15,
            n_nodes=1,
            n_edges=1,
            losses={"full": 0.1},
            calibration={"scale": 1.0, "shift": 0.0},
            curve=[{"k": 1, "loss": 0.2}],
            runs=[],
        )
        circuit.nodes.append(CircuitNode(name="0.attn.v[3]", site="0.attn.v", layer=0, index=3, tau=0.5))
        circuit.edges.append(
            CircuitEdge(src="0.attn.v[3]", dst="0.attn.resid_delta[3]", weight=-0.25, kind="weight")
        )
        s.add(circuit)
        s.add(NodeStat(model_id=model.id, name="0.attn.v[3]", site="0.attn.v", layer=0, index=3, mean=0.1,
                       frequency=0.5, quantiles={"0.5": 0.0}))  # fmt: skip
        s.add(Job(id="a" * 32, kind="train", params={"preset": "test"}))
    with db.session() as s:
        job = s.get(Job, "a" * 32)
        assert job.status == "queued" and job.progress == 0.0 and job.attempts == 0
        assert (
            job.created_at.tzinfo is not None and abs(datetime.now(UTC) - job.created_at).total_seconds() < 60
        )
        c = s.scalar(select(Circuit))
        assert [n.name for n in c.nodes] == ["0.attn.v[3]"] and c.edges[0].weight == -0.25
        assert c.curve == [{"k": 1, "loss": 0.2}] and c.model.config == {"a": 1}
    with pytest.raises(IntegrityError), db.session() as s:  # one stats row per (model, node)
        s.add(
            NodeStat(model_id=1, name="0.attn.v[3]", site="0.attn.v", layer=0, index=3, mean=0, frequency=0)
        )
    with db.session() as s:
        s.delete(s.get(Model, 1))
    with db.session() as s:  # circuits, nodes, edges and stats go with their model
        assert s.scalars(select(CircuitNode)).all() == [] and s.scalars(select(NodeStat)).all() == []
    db.dispose()


def test_migrations_keep_the_rows_of_rebuilt_tables(settings):
    """SQLite batch migrations rebuild `circuits` (copy, drop, rename): its nodes and edges must survive
    a downgrade past 0003 and the upgrade back, not be cascaded away with the dropped table."""
    upgrade(settings)
    db = Database(settings)
    with db.session() as s:
        model = Model(name="m", kind="sparse", status="ready", config={}, artifact_path="models/1")
        task = Task(name="t", builtin=True, completion_a="'", completion_b='"')
        s.add_all([model, task])
        s.flush()
        circuit = Circuit(model_id=model.id, task_id=task.id, target_loss=0.15, n_nodes=2, n_edges=1,
                          losses={}, calibration={}, curve=[], runs=[])  # fmt: skip
        circuit.nodes += [
            CircuitNode(name="0.attn.v[3]", site="0.attn.v", layer=0, index=3, tau=0.5),
            CircuitNode(name="0.attn.resid_delta[3]", site="0.attn.resid_delta", layer=0, index=3, tau=0.4),
        ]
        circuit.edges.append(
            CircuitEdge(src="0.attn.v[3]", dst="0.attn.resid_delta[3]", weight=-0.25, kind="weight")
        )
        s.add(circuit)
    db.dispose()

    def counts() -> tuple[int, ...]:
        with Database(settings).engine.connect() as conn:
            return tuple(
                conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one()
                for t in ("circuits", "circuit_nodes", "circuit_edges")
            )

    command.downgrade(alembic_config(settings.db_url), "0002")
    assert counts() == (1, 2, 1)
    upgrade(settings)
    assert counts() == (1, 2, 1)


def test_migration_0004_names_the_site_of_every_activation_example(settings):
    """Examples stored before 0004 get their site from their node name, so queries by site find them."""
    upgrade(settings, "0003")
    db = Database(settings)
    with db.engine.begin() as conn:  # the models table as it was then (the ORM class has later columns)
        models = Table("models", MetaData(), autoload_with=conn)
        conn.execute(
            models.insert().values(
                id=1, name="m", kind="sparse", status="ready", config={}, n_params=0, metrics=[], summary={},
                artifact_path="models/1", profiled=False, created_at=datetime.now(UTC),
            )
        )  # fmt: skip
        for i, node in enumerate(["0.attn.v[3]", "1.mlp.transcoder[12]", "embed[0]"]):
            conn.exec_driver_sql(
                "INSERT INTO activation_examples (id, model_id, node, bin, rank, activation, center, "
                f"token_ids, \"values\") VALUES ({i + 1}, 1, '{node}', 'top_1', 0, 1.0, 0, '', '')"
            )
    db.dispose()
    upgrade(settings)
    db = Database(settings)
    with db.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT node, site FROM activation_examples ORDER BY id").all()
    assert [tuple(r) for r in rows] == [
        ("0.attn.v[3]", "0.attn.v"),
        ("1.mlp.transcoder[12]", "1.mlp.transcoder"),
        ("embed[0]", "embed"),
    ]
    db.dispose()
