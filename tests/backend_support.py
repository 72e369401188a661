"""Helpers for the backend tests: an API client with a key, throwaway PostgreSQL databases and Redis
servers, a Celery worker subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.auth import create_api_key
from backend.db import Database, upgrade
from backend.models import Model, ModelKind, ModelStatus
from backend.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = ("succeeded", "failed", "cancelled")
# The admin connection used to create and drop a fresh database per test session.
POSTGRES_ADMIN = os.environ.get("CIRCUITS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
# Fast heartbeats so dead workers are noticed within seconds in tests.
# One torch thread: on a shared, loaded machine two threads can be 10x slower.
FAST = {
    "heartbeat_seconds": 0.5,
    "stale_after_seconds": 4.0,
    "sweep_seconds": 1.0,
    "progress_min_interval": 0.2,
    "torch_threads": 1,
    "anonymous_burst": 100_000,  # the tests' anonymous interactive calls all come from one client
}


class Api:
    """A running app (lifespan entered) plus an API key; `close()` shuts it down."""

    def __init__(self, settings: Settings):
        self.settings = settings
        upgrade(settings)
        db = Database(settings)
        with db.session() as s:
            _, self.key = create_api_key(s, "tests")
        db.dispose()
        self.client = TestClient(create_app(settings))
        self.client.__enter__()

    def close(self) -> None:
        if self.client is not None:
            self.client.__exit__(None, None, None)
            self.client = None

    def post_job(self, kind: str, params: dict | None = None, key: str | None = ""):
        headers = {} if key is None else {"x-api-key": key or self.key}
        body = {"kind": kind} if params is None else {"kind": kind, "params": params}
        return self.client.post("/api/v1/jobs", json=body, headers=headers)

    def submit(self, kind: str, params: dict | None = None) -> str:
        r = self.post_job(kind, params)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def job(self, job_id: str) -> dict:
        r = self.client.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(
        self, job_id: str, until=lambda j: j["status"] in TERMINAL, timeout: float = 180, seen=None
    ) -> dict:
        """Poll until `until(job)`; every observed state is appended to `seen` if given."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if seen is not None:
                seen.append(job)
            if until(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} still {job['status']} ({job['message']}) after {timeout} s"
                )
            time.sleep(0.2)


def train_step(job: dict) -> int:
    """Training step from a train job's progress message ("step 12/40 loss ...")."""
    msg = job["message"]
    return int(msg.split()[1].split("/")[0]) if msg.startswith("step ") else 0


def register_model(settings: Settings, folder: Path, name: str) -> int:
    """Copy a trained model folder into data_dir and add its ready Model row (no training needed)."""
    from worker.engine.checkpoints import read_run_config

    run = read_run_config(folder)
    db = Database(settings)
    with db.session() as s:
        row = Model(
            name=name,
            kind=ModelKind.dense if run.train.dense else ModelKind.sparse,
            status=ModelStatus.ready,
            config=run.model_dump(mode="json"),
            artifact_path="",
        )
        s.add(row)
        s.flush()
        row.artifact_path = f"models/{row.id}"
        model_id = row.id
    db.dispose()
    shutil.copytree(folder, settings.artifact(f"models/{model_id}"))
    return model_id


def delete_circuit(settings: Settings, circuit_id: int) -> None:
    """Remove a circuit a test added to a shared app, so that the app's other tests still see one."""
    from backend.models import Circuit

    db = Database(settings)
    with db.session() as s:
        s.delete(s.get(Circuit, circuit_id))
    db.dispose()


def create_postgres_database() -> tuple[str, str]:
    """A fresh randomly named database: (SQLAlchemy URL, name)."""
    name = f"circuits_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}", name


def drop_postgres_database(name: str) -> None:
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server on a free port (no persistence), killable by the test."""

    def __init__(self):
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def command(self, *words: str) -> bytes:
        """One Redis command (inline protocol); its raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(" ".join(words).encode() + b"\r\n")
            return s.recv(4096)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class CeleryWorker:
    """`circuits worker` as a subprocess with the given settings (environment variables)."""

    def __init__(self, settings: Settings, log: Path):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for field, value in settings.model_dump().items():
            if value is not None:
                env[f"CIRCUITS_{field.upper()}"] = str(value)
        self.log = log
        code = "from backend.service_cli import worker; import typer; typer.run(worker)"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "--loglevel", "info"],
            env=env,
            cwd=ROOT,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        """Until Celery logs `ready.` (its consumers and, with them, the job sweeper started)."""
        deadline = time.monotonic() + timeout
        while b" ready." not in (self.log.read_bytes() if self.log.exists() else b""):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()
