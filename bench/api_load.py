"""API latency under load: p50/p99 latency and requests/s of a cached circuit GET at 32 concurrent
clients on loopback, against the trivial /api/v1/health of the same server, in one run (goal: circuit
GET p99 <= 50 ms); and the latency of a warm live ablation on 64 test pairs (goal < 1 s). The server is
a real `circuits serve` subprocess on a throwaway data dir holding one model and one circuit (its
nodes: the first --nodes of the model's layer sites, its edges: the model's nonzero weights between
them).

    python bench/api_load.py [--model data/models/small] [--clients 32] [--seconds 10] [--nodes 100]

--mix: reads while interactive work runs. 50 clients read (GET /models and the circuit, alternately) for
30 s alone, then again while 8 clients run live ablations (64 pairs) back to back; p50/p99 of the reads
in both phases (goal: p99 with the ablations <= 2x without) and the errors of both kinds of request.

    python bench/api_load.py --mix [--clients 50] [--ablators 8] [--seconds 30]"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from backend.db import Database, upgrade
from backend.jobs.store import task_row, write_circuit
from backend.models import Model, ModelKind, ModelStatus
from backend.settings import Settings
from worker.engine.ablation import prunable_sites
from worker.engine.checkpoints import CONFIG, TOKENIZER, load_model, save_model
from worker.engine.circuit import Circuit, edges_from_weights, make_nodes
from worker.engine.config import preset
from worker.engine.data import load_corpus, train_tokenizer
from worker.engine.model import SparseGPT
from worker.engine.prune import PruneConfig


def untrained_model(folder: Path, name: str) -> None:
    """A preset's shape with untrained weights: the circuit JSON's size is what matters here."""
    run = preset(name)
    folder.mkdir(parents=True)
    save_model(folder, SparseGPT(run.model))
    (folder / CONFIG).write_text(run.model_dump_json())
    train_tokenizer(load_corpus(None, 2_000_000), run.model.vocab_size).save(str(folder / TOKENIZER))


def seed_database(settings: Settings, folder: Path, n_nodes: int) -> int:
    """Register the model and write one circuit; returns the circuit id."""
    model, _, run = load_model(folder)
    dims = model.site_dims()
    sites = prunable_sites(model)
    names = [f"{sites[i % len(sites)]}[{i // len(sites)}]" for i in range(n_nodes)]
    names = [n for n in names if int(n.split("[")[1][:-1]) < dims[n.split("[")[0]]]
    circuit = Circuit(
        task="single_double_quote",
        model=str(folder),
        target_loss=PruneConfig().target_loss,
        nodes=make_nodes(names, {n: 1.0 - i / len(names) for i, n in enumerate(names)}),
        edges=edges_from_weights(model, names),
        losses={"full": 0.1, "circuit": 0.15, "circuit_uncalibrated": 0.2, "ablated": 0.7},
        calibration={"scale": 1.0, "shift": 0.0},
        curve=[{"k": k, "loss": 0.7 / (1 + k)} for k in range(0, len(names), 10)],
    )
    upgrade(settings)
    db = Database(settings)
    with db.session() as s:
        row = Model(
            name="bench",
            kind=ModelKind.dense if run.train.dense else ModelKind.sparse,
            status=ModelStatus.ready,
            config=run.model_dump(mode="json"),
            artifact_path="models/bench",
        )
        s.add(row)
        s.flush()
        circuit_id = write_circuit(s, row.id, task_row(s, circuit.task).id, circuit, PruneConfig(), "0" * 32)
    db.dispose()
    shutil.copytree(folder, settings.artifact("models/bench"))
    print(f"circuit {circuit_id}: {len(circuit.nodes)} nodes, {len(circuit.edges)} edges")
    return circuit_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int, log: Path, timeout: float = 60.0) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("circuits")
    env = {**os.environ, "CIRCUITS_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(
        [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start; see {log}")


def http_request(url: str, body: bytes | None = None) -> bytes:
    """A GET (or, with a body, a JSON POST) for a kept-alive HTTP/1.1 connection."""
    parts = httpx.URL(url)
    method = "GET" if body is None else "POST"
    head = f"{method} {parts.raw_path.decode()} HTTP/1.1\r\nHost: {parts.host}\r\n"
    if body is None:
        return (head + "\r\n").encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def fetch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One request on a kept-alive HTTP/1.1 connection: its status code (the body is read whole)."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def clients_loop(urls: list[str], clients: int, seconds: float, body: bytes | None = None):
    """`clients` connections each sending requests back to back for `seconds` (client i starts at
    urls[i], then takes them in turn): latencies (s) and the non-200 status codes. A minimal asyncio
    HTTP/1.1 client, so that the load generator costs little next to the server."""
    parts = httpx.URL(urls[0])
    requests = [http_request(u, body) for u in urls]
    latencies: list[float] = []
    errors: list[int] = []
    end = time.perf_counter() + seconds

    async def one_client(i: int):
        reader, writer = await asyncio.open_connection(parts.host, parts.port)
        try:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                status = await fetch(reader, writer, requests[i % len(requests)])
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors.append(status)
                i += 1
        finally:
            writer.close()

    await asyncio.gather(*(one_client(i) for i in range(clients)))
    return latencies, errors


async def load(url: str, clients: int, seconds: float) -> tuple[list[float], int]:
    latencies, errors = await clients_loop([url], clients, seconds)
    return latencies, len(errors)


async def mixed(reads: list[str], ablate: str, clients: int, ablators: int, seconds: float):
    """Reads alone, then reads beside `ablators` clients running live ablations."""
    alone = await clients_loop(reads, clients, seconds)
    body = b'{"pairs": 64}'
    with_load, ablations = await asyncio.gather(
        clients_loop(reads, clients, seconds), clients_loop([ablate], ablators, seconds, body)
    )
    return alone, with_load, ablations


def live_ablation_seconds(url: str, repeats: int = 5) -> tuple[float, float]:
    """Median wall time and server-reported time of a warm live ablation on 64 pairs, one client."""
    httpx.post(url, json={"pairs": 64}, timeout=600).raise_for_status()  # warm
    wall, server = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = httpx.post(url, json={"pairs": 64}, timeout=600)
        wall.append(time.perf_counter() - t0)
        server.append(r.raise_for_status().json()["seconds"])
    return statistics.median(wall), statistics.median(server)


def report(label: str, latencies: list[float], errors: int, seconds: float) -> tuple[float, float, float]:
    q = statistics.quantiles(latencies, n=100)
    p50, p99, rps = q[49] * 1000, q[98] * 1000, len(latencies) / seconds
    print(f"{label:14s} {rps:8.0f} req/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   errors {errors}")
    return p50, p99, rps


def report_mix(args, alone, alone_err, loaded, loaded_err, abl, abl_err) -> None:
    print(f"reads: GET /models and GET /circuits/{{id}} alternately, {args.clients} clients")
    a50, a99, _ = report("reads alone", alone, len(alone_err), args.seconds)
    l50, l99, _ = report("reads + ablate", loaded, len(loaded_err), args.seconds)
    statuses = {code: abl_err.count(code) for code in sorted(set(abl_err))}
    print(
        f"ablations: {args.ablators} clients, {len(abl) - len(abl_err)} done "
        f"({len(abl) / args.seconds:.1f}/s, median {statistics.median(abl) * 1000:.0f} ms), "
        f"refused {statuses or 'none'}"
    )
    ratio = l99 / a99
    print(
        f"read p99 with ablations / without: {ratio:.2f}x (goal <= 2x): {'met' if ratio <= 2 else 'NOT met'}"
    )
    print(f"errors: reads {len(alone_err) + len(loaded_err)}, ablations {len(abl_err)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a trained model folder (default: untrained weights of the small preset)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--nodes", type=int, default=100, help="nodes of the benchmark circuit")
    ap.add_argument("--mix", action="store_true", help="reads with and without live ablations beside")
    ap.add_argument("--ablators", type=int, default=8, help="--mix: clients running live ablations")
    args = ap.parse_args()
    if args.mix and "--clients" not in sys.argv:
        args.clients = 50
    if args.mix and "--seconds" not in sys.argv:
        args.seconds = 30.0
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = Path(args.model) if args.model else tmp / "model"
        if not args.model:
            untrained_model(folder, "small")
        data_dir = tmp / "data"
        circuit_id = seed_database(Settings(data_dir=data_dir), folder, args.nodes)
        port = free_port()
        server = start_server(data_dir, port, tmp / "server.log")
        try:
            base = f"http://127.0.0.1:{port}/api/v1"
            circuit = f"{base}/circuits/{circuit_id}"
            body = httpx.get(circuit).content  # the first read fills the cache
            # ... and starts preparing the model for live ablation; let that finish before measuring.
            httpx.post(f"{circuit}/ablate", json={"pairs": 1}, timeout=600).raise_for_status()
            print(f"circuit JSON {len(body) / 1024:.0f} KiB; {args.clients} clients, {args.seconds:g} s each")
            asyncio.run(load(circuit, args.clients, 2.0))  # warm-up
            if args.mix:
                reads = [f"{base}/models", circuit]
                run = mixed(reads, f"{circuit}/ablate", args.clients, args.ablators, args.seconds)
                (alone, alone_err), (loaded, loaded_err), (abl, abl_err) = asyncio.run(run)
                return report_mix(args, alone, alone_err, loaded, loaded_err, abl, abl_err)
            results = {}
            for label, url in (("health", f"{base}/health"), ("circuit GET", circuit)):
                lat, err = asyncio.run(load(url, args.clients, args.seconds))
                results[label] = report(label, lat, err, args.seconds)
            ablation = live_ablation_seconds(f"{circuit}/ablate")
        finally:
            server.terminate()
            server.wait(30)
    (h50, h99, hrps), (c50, c99, crps) = results["health"], results["circuit GET"]
    print(f"ratio circuit/health: p50 {c50 / h50:.2f}x  p99 {c99 / h99:.2f}x  req/s {crps / hrps:.2f}x")
    print(f"circuit GET p99 {c99:.1f} ms (goal <= 50 ms): {'met' if c99 <= 50 else 'NOT met'}")
    wall, server_side = ablation
    print(
        f"live ablation (64 pairs, warm): median {wall * 1000:.0f} ms wall, "
        f"{server_side * 1000:.0f} ms in the server (goal < 1 s): {'met' if wall < 1 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
