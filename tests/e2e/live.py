"""A real `circuits serve` subprocess on a free port, and the Chromium settings the browser tests use."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "frontend" / "dist"
CHROMIUM = os.environ.get("CIRCUITS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LOGS: dict[str, Path] = {}  # base URL of a running server -> its output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(data_dir: Path, timeout: float = 180):
    """Yield the base URL of the app serving data_dir (and frontend/dist at /); stop it afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "CIRCUITS_DATA_DIR": str(data_dir),
        "CIRCUITS_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log_path = data_dir / f"serve-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"circuits serve did not start; see {log_path}")
                time.sleep(0.3)
            LOGS[url] = log_path
            yield url
        finally:
            LOGS.pop(url, None)
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def login_url(url: str) -> str:
    """The one-time sign-in URL the server at `url` printed (`open http://.../login?token=...`)."""
    for line in LOGS[url].read_text().splitlines():
        if line.startswith("open http"):
            return line.removeprefix("open ").strip()
    raise AssertionError(f"circuits serve printed no sign-in URL; see {LOGS[url]}")
