"""GET /overview (the landing page's figures) and the headline arithmetic on hand-made curves."""

import math

import pytest

from backend.db import Database
from backend.jobs.store import task_row, write_circuit
from backend.models import Model, ModelKind, ModelStatus
from backend.routes.overview import TARGETS, edge_ratio, headline
from backend.schemas import TaskCircuit
from worker.engine.circuit import Circuit, Node
from worker.engine.prune import PruneConfig


def test_headline_takes_the_smallest_size_per_target_and_the_geomean_over_tasks():
    # task a: sparse reaches 0.1 with 4 edges, 0.3 with 2; dense 0.1 with 64, 0.3 with 16
    # task b: sparse reaches 0.3 with 8; dense 0.3 with 32, never 0.1
    a = (
        [
            {"k": 1, "loss": 0.5, "edges": 1},
            {"k": 3, "loss": 0.3, "edges": 2},
            {"k": 5, "loss": 0.1, "edges": 4},
        ],
        [{"k": 9, "loss": 0.3, "edges": 16}, {"k": 20, "loss": 0.1, "edges": 64}],
    )
    b = (
        [{"k": 6, "loss": 0.25, "edges": 8}],
        [{"k": 10, "loss": 0.28, "edges": 32}, {"k": 12, "loss": 0.6, "edges": 40}],
    )
    h = headline([a, b], targets=(0.05, 0.1, 0.3, 0.5))
    assert h.size == "edges" and h.targets == [0.05, 0.1, 0.3, 0.5]
    assert h.tasks == [0, 1, 2, 2]
    assert h.sparse[0] is None and h.dense[0] is None
    assert h.sparse[1] == pytest.approx(4) and h.dense[1] == pytest.approx(64)
    assert h.sparse[2] == pytest.approx(math.sqrt(2 * 8)) and h.dense[2] == pytest.approx(math.sqrt(16 * 32))
    assert h.sparse[3] == pytest.approx(math.sqrt(1 * 8)) and h.dense[3] == pytest.approx(math.sqrt(16 * 32))


def test_headline_counts_kept_nodes_when_a_curve_has_no_edge_counts():
    curves = [([{"k": 0, "loss": 0.2}, {"k": 4, "loss": 0.1}], [{"k": 30, "loss": 0.1, "edges": 99}])]
    h = headline(curves, targets=(0.1, 0.2))
    assert h.size == "nodes" and h.tasks == [1, 1]
    assert h.sparse == [pytest.approx(4), pytest.approx(1)]  # an empty circuit counts as size 1
    assert h.dense == [pytest.approx(30), pytest.approx(30)]
    assert headline([]).tasks == [0] * len(TARGETS) and headline([]).size == "nodes"


def tc(edges: int, meets: bool) -> TaskCircuit:
    return TaskCircuit(
        model_id=1, circuit_id=1, full_loss=0.1, circuit_loss=0.1, target_loss=0.15, nodes=edges,
        edges=edges, meets_target=meets,
    )  # fmt: skip


def test_edge_ratio_over_tasks_both_circuits_meet():
    r = edge_ratio([(tc(2, True), tc(32, True)), (tc(4, True), tc(16, True)), (tc(1, False), tc(999, True))])
    assert r.tasks == 2 and r.geomean == pytest.approx(math.sqrt(16 * 4)) and r.target == 16
    assert edge_ratio([(tc(0, True), tc(8, True))]).geomean == pytest.approx(8)
    # a dense circuit smaller than the sparse one is a ratio below 1, not clamped to 1
    assert edge_ratio([(tc(100, True), tc(25, True))]).geomean == pytest.approx(0.25)
    assert edge_ratio([]).geomean is None


def add_model(s, name: str, kind: ModelKind, demo: bool = False, status=ModelStatus.ready) -> int:
    row = Model(
        name=name, kind=kind, status=status, config={"model": {"n_layer": 2, "d_model": 128}}, n_params=1000,
        summary={"val_loss": 2.5}, artifact_path=f"models/{name}", demo=demo,
    )  # fmt: skip
    s.add(row)
    s.flush()
    return row.id


def add_circuit(s, model_id: int, task: str, nodes: int, edges: int, losses: dict, curve: list) -> int:
    from worker.engine.circuit import Edge

    names = [f"0.mlp.post_act[{i}]" for i in range(nodes)]
    circuit = Circuit(
        task=task,
        model=str(model_id),
        target_loss=0.15,
        nodes=[Node(n, "0.mlp.post_act", 0, i, 1.0) for i, n in enumerate(names)],
        edges=[Edge(names[i % nodes], names[(i + 1) % nodes], 0.5, "weight") for i in range(edges)],
        losses=losses,
        calibration={"scale": 1.0, "shift": 0.0},
        curve=curve,
    )
    return write_circuit(s, model_id, task_row(s, task).id, circuit, PruneConfig(), "0" * 32)


def test_overview_of_an_empty_database(make_api):
    api = make_api()
    body = api.client.get("/api/v1/overview").json()
    assert body["demo"] is False and body["models"] == [] and body["tasks"] == []
    assert body["headline"]["tasks"] == [0] * len(TARGETS)
    assert body["edge_ratio"] == {"geomean": None, "tasks": 0, "target": 16.0}


def test_overview_shows_the_demo_pair_and_their_newest_circuit_per_task(make_api):
    api = make_api()
    db = Database(api.settings)
    good = {"full": 0.05, "circuit": 0.12, "ablated": 2.0}
    with db.session() as s:
        mine = add_model(s, "mine", ModelKind.sparse)  # trained here: not shown once a demo is present
        add_circuit(s, mine, "single_double_quote", 3, 2, good, [])
        sparse = add_model(s, "demo-sparse", ModelKind.sparse, demo=True)
        dense = add_model(s, "demo-dense", ModelKind.dense, demo=True)
        add_model(s, "demo-training", ModelKind.sparse, demo=True, status=ModelStatus.training)
        add_circuit(s, sparse, "single_double_quote", 9, 9, good, [])  # older, replaced by the next
        quote = add_circuit(
            s, sparse, "single_double_quote", 12, 9, good,
            [{"k": 12, "loss": 0.12, "edges": 9}, {"k": 4, "loss": 0.4, "edges": 2}],
        )  # fmt: skip
        dense_losses, dense_curve = {"full": 0.04, "circuit": 0.14}, [{"k": 80, "loss": 0.14, "edges": 144}]
        dense_quote = add_circuit(s, dense, "single_double_quote", 80, 144, dense_losses, dense_curve)
        failing = add_circuit(
            s,
            sparse,
            "bracket_counting",
            5,
            4,
            {"full": 0.1, "circuit": 0.3},
            [{"k": 5, "loss": 0.3, "edges": 4}],
        )
    db.dispose()

    body = api.client.get("/api/v1/overview").json()
    assert body["demo"] is True
    assert [(m["id"], m["kind"], m["demo"], m["val_loss"]) for m in body["models"]] == [
        (sparse, "sparse", True, 2.5),
        (dense, "dense", True, 2.5),
    ]
    tasks = {t["task"]: t for t in body["tasks"]}
    assert list(tasks) == ["bracket_counting", "single_double_quote"]
    q = tasks["single_double_quote"]
    assert q["sparse"] == {
        "model_id": sparse, "circuit_id": quote, "full_loss": 0.05, "circuit_loss": 0.12, "target_loss": 0.15,
        "nodes": 12, "edges": 9, "meets_target": True,
    }  # fmt: skip
    assert q["dense"]["circuit_id"] == dense_quote and q["dense"]["edges"] == 144
    assert tasks["bracket_counting"]["dense"] is None
    assert tasks["bracket_counting"]["sparse"]["circuit_id"] == failing
    assert tasks["bracket_counting"]["sparse"]["meets_target"] is False
    assert body["edge_ratio"]["tasks"] == 1 and body["edge_ratio"]["geomean"] == pytest.approx(144 / 9)
    h = body["headline"]
    assert h["size"] == "edges" and h["targets"] == list(TARGETS)
    i = TARGETS.index(0.15)
    assert h["tasks"][i] == 1 and h["sparse"][i] == pytest.approx(9) and h["dense"][i] == pytest.approx(144)
    assert h["sparse"][TARGETS.index(0.5)] == pytest.approx(2)
    assert h["tasks"][TARGETS.index(0.1)] == 0 and h["sparse"][TARGETS.index(0.1)] is None

    listed = {m["id"]: m["demo"] for m in api.client.get("/api/v1/models").json()["items"]}
    assert listed[sparse] is True and listed[mine] is False
    assert api.client.get(f"/api/v1/models/{dense}").json()["demo"] is True


def test_overview_without_demo_models_shows_the_newest_ready_ones_with_circuits(make_api):
    api = make_api()
    db = Database(api.settings)
    with db.session() as s:
        older = add_model(s, "older", ModelKind.sparse)
        add_circuit(s, older, "single_double_quote", 3, 2, {"full": 0.1, "circuit": 0.1}, [])
        add_model(s, "newer-no-circuits", ModelKind.sparse)
        dense = add_model(s, "dense", ModelKind.dense)
    db.dispose()
    body = api.client.get("/api/v1/overview").json()
    assert body["demo"] is False
    assert [(m["name"], m["demo"]) for m in body["models"]] == [("older", False), ("dense", False)]
    assert body["models"][1]["id"] == dense
    assert [(t["task"], t["dense"]) for t in body["tasks"]] == [("single_double_quote", None)]
    assert body["edge_ratio"]["tasks"] == 0
