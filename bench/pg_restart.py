"""PostgreSQL restarted under load: a throw-away cluster (initdb on a free port, in a temporary folder)
behind a real `circuits serve` with in-process jobs; clients read (GET /models, GET /jobs) back to back
while tiny training jobs are submitted, and `pg_ctl restart -m fast` runs in the middle. Prints the
requests and errors before, during (from the restart command until the first success after it, plus
5 s) and after the restart, and what became of every accepted job (goal: <= 1 % errors during, 0 after,
no job lost).

    python bench/pg_restart.py [--clients 16] [--seconds 30] [--jobs 3] [--start-timeout 60]

Runs initdb/pg_ctl as the `postgres` user when started as root (initdb refuses root)."""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_load import fetch, free_port, http_request, start_server  # noqa: E402

from backend.auth import create_api_key  # noqa: E402
from backend.db import Database, upgrade  # noqa: E402
from backend.settings import Settings  # noqa: E402

TERMINAL = ("succeeded", "failed", "cancelled")
TIMEOUT = 30.0  # seconds a read may wait for its answer
AFTER = 5.0  # seconds after the first success following the restart still counted as "during"


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or name]
    return found[-1]


def as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Cluster:
    def __init__(self, folder: Path, port: int):
        self.folder, self.port, self.data = folder, port, folder / "pgdata"
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres")
        subprocess.run(
            as_postgres([pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"]),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.ctl("start")
        subprocess.run(
            as_postgres([pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "bench"]),
            check=True,
        )
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/bench"

    def ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        cmd = [pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "pg.log")]
        subprocess.run(as_postgres([*cmd, "-w", *extra, action]), check=True, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        subprocess.run(as_postgres([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]))


async def readers(urls: list[str], clients: int, seconds: float, log: list):
    """Back-to-back reads; every request's (end time, ok) is appended to `log`."""
    host, port = httpx.URL(urls[0]).host, httpx.URL(urls[0]).port
    requests = [http_request(u) for u in urls]
    end = time.monotonic() + seconds

    async def one(i: int):
        reader = writer = None
        while time.monotonic() < end:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                status = await asyncio.wait_for(fetch(reader, writer, requests[i % len(requests)]), TIMEOUT)
                log.append((time.monotonic(), status == 200))
            except (OSError, asyncio.IncompleteReadError, TimeoutError):  # an unanswered read is an error
                log.append((time.monotonic(), False))
                writer = None
            i += 1

    await asyncio.gather(*(one(i) for i in range(clients)))


async def submitter(base: str, key: str, jobs: int, seconds: float, accepted: list, refused: list):
    """Submit `jobs` tiny trainings spread over the run (one before, during and after the restart)."""
    params = {"preset": "test", "steps": 4, "train": {"eval_every": 2, "max_corpus_bytes": 100_000}}
    async with httpx.AsyncClient(timeout=300) as client:  # a submission waits out the restart
        for _ in range(jobs):
            await asyncio.sleep(seconds / (jobs + 1))
            r = await client.post(
                f"{base}/jobs", json={"kind": "train", "params": params}, headers={"x-api-key": key}
            )
            (accepted if r.status_code == 202 else refused).append(r.json().get("id", r.status_code))


async def restart_at(cluster: Cluster, delay: float, marks: dict) -> None:
    await asyncio.sleep(delay)
    marks["start"] = time.monotonic()
    await asyncio.to_thread(cluster.ctl, "restart", "-m", "fast")
    marks["up"] = time.monotonic()


async def run(base: str, key: str, cluster: Cluster, args) -> tuple[list, dict, list, list]:
    log, marks, accepted, refused = [], {}, [], []
    await asyncio.gather(
        readers([f"{base}/models", f"{base}/jobs?limit=5"], args.clients, args.seconds, log),
        submitter(base, key, args.jobs, args.seconds, accepted, refused),
        restart_at(cluster, args.seconds / 2, marks),
    )
    return log, marks, accepted, refused


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--start-timeout", type=float, default=60.0, help="seconds the server may take to start")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        cluster = Cluster(tmp / "pg", free_port())
        try:
            settings = Settings(data_dir=tmp / "data", database_url=cluster.url)
            upgrade(settings)
            db = Database(settings)
            with db.session() as s:
                _, key = create_api_key(s, "bench")
            db.dispose()
            os.environ["CIRCUITS_DATABASE_URL"] = cluster.url
            port = free_port()
            server = start_server(tmp / "data", port, tmp / "server.log", args.start_timeout)
            base = f"http://127.0.0.1:{port}/api/v1"
            try:
                log, marks, accepted, refused = asyncio.run(run(base, key, cluster, args))
                deadline = time.monotonic() + 600
                states = {}
                while time.monotonic() < deadline:
                    states = {j: httpx.get(f"{base}/jobs/{j}", timeout=60).json()["status"] for j in accepted}
                    if all(s in TERMINAL for s in states.values()):
                        break
                    time.sleep(1)
            finally:
                server.terminate()
                server.wait(30)
        finally:
            cluster.stop()
    report(log, marks, accepted, refused, states)


def report(log, marks, accepted, refused, states) -> None:
    start = marks["start"]
    recovered = min((t for t, ok in log if ok and t > marks["up"]), default=marks["up"])
    phases = {
        "before": [ok for t, ok in log if t < start],
        "during": [ok for t, ok in log if start <= t <= recovered + AFTER],
        "after": [ok for t, ok in log if t > recovered + AFTER],
    }
    print(
        f"pg_ctl restart -m fast took {marks['up'] - start:.1f} s; "
        f"first read served after it {recovered - start:.1f} s after the restart began"
    )
    for name, oks in phases.items():
        errors = oks.count(False)
        share = 100 * errors / max(1, len(oks))
        print(f"{name:7s} {len(oks):7d} reads  {errors:5d} errors ({share:.2f} %)")
    lost = [j for j, s in states.items() if s not in ("succeeded",)]
    print(f"jobs: {len(accepted)} accepted, {len(refused)} refused {refused or ''}; final states {states}")
    print(f"jobs lost or not succeeded: {len(lost)}")
    during = phases["during"]
    ok_during = 100 * during.count(False) / max(1, len(during)) <= 1
    ok_after = phases["after"].count(False) == 0
    print(
        "goal (<= 1 % during, 0 after, no lost job):",
        "met" if ok_during and ok_after and not lost else "NOT met",
    )


if __name__ == "__main__":
    main()
