"""Fill a data dir with a `test`-preset model, its profile and one circuit, through the real job API
(and, for comparisons and the render benchmark, sub-circuits of it: sub_circuit).

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
from backend.models import Circuit as CircuitRow
from backend.settings import Settings
from worker.engine.circuit import Circuit, Edge, Node
from worker.engine.prune import PruneConfig
from worker.jobs import write_circuit

TASK = "single_double_quote"
TRAIN = {"preset": "test", "name": "test-sparse", "steps": 40}
PROFILE = {"tokens": 2048, "examples_per_bin": 2, "context": 4}
# Small enough to finish in about a minute on 2 shared cores.
PRUNE = {"task": TASK, "runs": 1, "steps": 5, "batch_pairs": 16, "eval_pairs": 32, "curve_points": 4}
PRUNE_CURVE_PAIRS = 32


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
        prune = {"model_id": model_id, **PRUNE, "curve_pairs": PRUNE_CURVE_PAIRS}
        circuit_id = run_job(client, key, "prune", prune)["result"]["circuit_id"]
    (data_dir / "api-key.txt").write_text(key + "\n")
    seeded = {"key": key, "model_id": model_id, "circuit_id": circuit_id}
    (data_dir / "seed.json").write_text(json.dumps(seeded))
    return seeded


def load_or_seed(data_dir: Path) -> dict:
    """The ids and key of a data dir seeded earlier (seed.json), else seed it now."""
    done = data_dir / "seed.json"
    if done.exists():
        return json.loads(done.read_text())
    data_dir.mkdir(parents=True, exist_ok=True)
    return seed(data_dir)


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


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/circuits-dev")
    out.mkdir(parents=True, exist_ok=True)
    print(seed(out)["key"])
