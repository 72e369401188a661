"""Fill a data dir with a `test`-preset model, its profile and one circuit, through the real job API
(and, for comparisons and the render benchmark, sub-circuits of it: sub_circuit); then (seed_extras) a
dense `test` model, a sparse model bridged to it with a circuit, and a tiny transcoder sweep of the first
model with its feature circuit.

    .venv/bin/python tests/e2e/seed.py /tmp/circuits-dev     # prints the API key (also in api-key.txt)

Used by the browser tests and for trying the frontend locally (then `CIRCUITS_DATA_DIR=... circuits serve`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fastapi.testclient import TestClient

from backend.app import create_app
from backend.auth import create_api_key
from backend.db import Database, upgrade
from backend.jobs.store import write_circuit
from backend.models import Circuit as CircuitRow
from backend.models import Model as ModelRow
from backend.models import Transcoder as TranscoderRow
from backend.settings import Settings
from worker.engine.checkpoints import load_model
from worker.engine.circuit import Circuit, Edge, Node, make_nodes
from worker.engine.prune import PruneConfig
from worker.engine.sites import feature_site, node_name
from worker.engine.tasks import build_task, get_task
from worker.engine.transcoders import CircuitConfig, attribute, attribution_edges, read_transcoders

TASK = "single_double_quote"
TRAIN = {"preset": "test", "name": "test-sparse", "steps": 40}
PROFILE = {"tokens": 2048, "examples_per_bin": 2, "context": 4}
# Small enough to finish in about a minute on 2 shared cores.
PRUNE = {"task": TASK, "runs": 1, "steps": 5, "batch_pairs": 16, "eval_pairs": 32, "curve_points": 4}
PRUNE_CURVE_PAIRS = 32
DENSE = {"preset": "test", "dense": True, "name": "test-dense", "steps": 40}
BRIDGE = {"preset": "test", "steps": 30, "name": "test-bridged"}
TRANSCODER = {
    "l1": [0.03, 0.3, 3.0],
    "steps": 30,
    "batch_size": 4,
    "eval_batches": 1,
    "profile_tokens": 2048,
    "tasks": [TASK],
    "tolerance": 0.0,
}
EXTRAS = ("bridged_model_id", "bridged_circuit_id", "transcoder_id", "transcoder_circuit_id")


def make_key(settings: Settings) -> str:
    upgrade(settings)
    db = Database(settings)
    with db.session() as s:
        _, key = create_api_key(s, "e2e")
    db.dispose()
    return key


def run_job(client: TestClient, key: str, kind: str, params: dict, timeout: float = 900) -> dict:
    r = client.post("/api/v1/jobs", json={"kind": kind, "params": params}, headers={"x-api-key": key})
    if r.status_code != 202:
        raise SystemExit(f"{kind} job rejected: {r.status_code} {r.text}")
    job_id, deadline = r.json()["id"], time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise SystemExit(f"{kind} job {job['status']}: {job['error'] or job['message']}")
            print(f"{kind}: {job['result']}", file=sys.stderr)
            return job
        time.sleep(0.5)
    raise SystemExit(f"{kind} job did not finish in {timeout} s")


def seed(data_dir: Path) -> dict:
    settings = Settings(data_dir=data_dir, torch_threads=1, progress_min_interval=0.2)
    key = make_key(settings)
    with TestClient(create_app(settings)) as client:
        model_id = run_job(client, key, "train", TRAIN)["result"]["model_id"]
        run_job(client, key, "profile", {"model_id": model_id, **PROFILE})
        prune = {"model_id": model_id, **PRUNE, "curve_pairs": PRUNE_CURVE_PAIRS, "validate_circuit": True}
        circuit_id = run_job(client, key, "prune", prune)["result"]["circuit_id"]
    (data_dir / "api-key.txt").write_text(key + "\n")
    seeded = {"key": key, "model_id": model_id, "circuit_id": circuit_id}
    (data_dir / "seed.json").write_text(json.dumps(seeded))
    return seeded


def seed_extras(data_dir: Path, seeded: dict) -> dict:
    """Bridges and transcoders for their pages: a dense model, a sparse model bridged to it and a circuit
    of that, and a transcoder sweep of the seeded model (which builds one feature circuit)."""
    settings = Settings(data_dir=data_dir, torch_threads=1, progress_min_interval=0.2)
    key = seeded["key"]
    with TestClient(create_app(settings)) as client:
        dense_id = run_job(client, key, "train", DENSE)["result"]["model_id"]
        bridge = {"dense_model_id": dense_id, **BRIDGE}
        bridged_id = run_job(client, key, "bridge", bridge)["result"]["model_id"]
        prune = {"model_id": bridged_id, **PRUNE, "curve_pairs": PRUNE_CURVE_PAIRS}
        bridged_circuit = run_job(client, key, "prune", prune)["result"]["circuit_id"]
        params = {"model_id": seeded["model_id"], **TRANSCODER}
        result = run_job(client, key, "transcoder", params)["result"]
    graph_id = feature_graph(settings, result["transcoder_id"], result["circuit_ids"][0])
    seeded = seeded | {
        "bridged_model_id": bridged_id,
        "bridged_circuit_id": bridged_circuit,
        "transcoder_id": result["transcoder_id"],
        "transcoder_circuit_id": graph_id,
    }
    (data_dir / "seed.json").write_text(json.dumps(seeded))
    return seeded


def feature_graph(settings: Settings, transcoder_id: int, job_circuit_id: int, per_layer: int = 6) -> int:
    """Id of a new transcoder circuit: the attribution graph between the top features of each layer on the
    task. The tiny model's own transcoder circuit can be empty (no feature is needed for the task at its
    loss), so the browser tests get this graph instead; its losses are those of the job's circuit."""
    db = Database(settings)
    with db.session() as s:
        tr_row = s.get(TranscoderRow, transcoder_id)
        job_circuit = s.get(CircuitRow, job_circuit_id)
        tr = read_transcoders(settings.artifact(tr_row.artifact_path))
        model_row = s.get(ModelRow, tr_row.model_id)
        model, tok, _ = load_model(settings.artifact(model_row.artifact_path))
        data = build_task(get_task(TASK), tok)
        att = attribute(model, tr.selected, data, data.train[:8])
        top = {
            layer: [int(j) for j in att.effects[layer].abs().topk(per_layer).indices]
            for layer in range(len(tr.selected))
        }
        names = [node_name(feature_site(layer), j) for layer, js in top.items() for j in js]
        graph = Circuit(
            task=TASK,
            model=str(tr_row.model_id),
            target_loss=job_circuit.target_loss,
            nodes=make_nodes(names, dict.fromkeys(names, 0.5)),
            edges=attribution_edges(att, top),
            losses=job_circuit.losses,
            calibration=job_circuit.calibration,
            curve=[],
        )
        graph_id = write_circuit(
            s, tr_row.model_id, job_circuit.task_id, graph, CircuitConfig(), "e2e", transcoder_id=tr_row.id
        )
    db.dispose()
    return graph_id


def load_or_seed(data_dir: Path, extras: bool = False) -> dict:
    """The ids and key of a data dir seeded earlier (seed.json), else seed it now; with `extras` also the
    bridged model and the transcoders (seed_extras), added to an older seed when missing."""
    done = data_dir / "seed.json"
    if done.exists():
        seeded = json.loads(done.read_text())
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        seeded = seed(data_dir)
    if not extras or all(k in seeded for k in EXTRAS):
        return seeded
    return seed_extras(data_dir, seeded)


def sub_circuit(data_dir: Path, circuit_id: int, n_edges: int) -> int:
    """Id of a circuit made of the n_edges strongest edges of circuit_id and their endpoints (made once)."""
    marker = data_dir / f"bench-circuit-{circuit_id}-{n_edges}.txt"
    if marker.exists():
        return int(marker.read_text())
    db = Database(Settings(data_dir=data_dir))
    with db.session() as s:
        row = s.get(CircuitRow, circuit_id)
        if len(row.edges) < n_edges:
            raise SystemExit(f"circuit {circuit_id} has only {len(row.edges)} edges")
        edges = sorted(row.edges, key=lambda e: -abs(e.weight))[:n_edges]
        names = {e.src for e in edges} | {e.dst for e in edges}
        circuit = Circuit(
            task=row.task.name,
            model=str(row.model_id),
            target_loss=row.target_loss,
            nodes=[Node(n.name, n.site, n.layer, n.index, n.tau) for n in row.nodes if n.name in names],
            edges=[Edge(e.src, e.dst, e.weight, e.kind) for e in edges],
            losses=row.losses,
            calibration=row.calibration,
            curve=row.curve,
        )
        new_id = write_circuit(s, row.model_id, row.task_id, circuit, PruneConfig(), "bench")
    db.dispose()
    marker.write_text(str(new_id))
    return new_id


def node_circuit(data_dir: Path, circuit_id: int, n_nodes: int) -> int:
    """Id of a circuit of at most n_nodes nodes of circuit_id (made once): the endpoints of its strongest
    edges, taken while they fit, with every edge of circuit_id between them (a circuit the readable
    layout draws; no curve, its own k is its size)."""
    marker = data_dir / f"nodes-circuit-{circuit_id}-{n_nodes}.txt"
    if marker.exists():
        return int(marker.read_text())
    db = Database(Settings(data_dir=data_dir))
    with db.session() as s:
        row = s.get(CircuitRow, circuit_id)
        names: set[str] = set()
        for e in sorted(row.edges, key=lambda e: -abs(e.weight)):
            if len(names | {e.src, e.dst}) <= n_nodes:
                names |= {e.src, e.dst}
        circuit = Circuit(
            task=row.task.name,
            model=str(row.model_id),
            target_loss=row.target_loss,
            nodes=[Node(n.name, n.site, n.layer, n.index, n.tau) for n in row.nodes if n.name in names],
            edges=[Edge(e.src, e.dst, e.weight, e.kind) for e in row.edges if {e.src, e.dst} <= names],
            losses=row.losses,
            calibration=row.calibration,
            curve=[],
        )
        new_id = write_circuit(s, row.model_id, row.task_id, circuit, PruneConfig(), "bench")
    db.dispose()
    marker.write_text(str(new_id))
    return new_id


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/circuits-dev")
    out.mkdir(parents=True, exist_ok=True)
    print(load_or_seed(out, extras=True)["key"])
