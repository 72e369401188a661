"""Browser tests of the frontend against a live `circuits serve` with a seeded `test`-preset model.

Needs a built frontend (`cd frontend && npm ci && npm run build`) and Debian's Chromium
(`apt-get install chromium`); Playwright drives /usr/bin/chromium (never `playwright install`).
CIRCUITS_E2E_DATA=dir reuses a data dir seeded before (tests/e2e/seed.py); default: a fresh one.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from live import CHROMIUM, CHROMIUM_ARGS, DIST, serve
from seed import load_or_seed, node_circuit, sub_circuit

SMALL_EDGES = 200
VIEW_NODES = 50


@pytest.fixture(scope="session")
def live(tmp_path_factory):
    """SimpleNamespace(url, key, model_id, circuit_id, small_circuit_id, bridged_model_id, bridged_circuit_id,
    transcoder_id, transcoder_circuit_id, view_circuit_id): the app serving frontend/dist over HTTP;
    small_circuit_id is the seeded circuit's 200 strongest edges and their nodes (for comparisons),
    view_circuit_id a circuit of at most 50 of its nodes (drawn in the readable layout)."""
    if not (DIST / "index.html").exists():
        pytest.fail("frontend/dist is missing: run `cd frontend && npm ci && npm run build` first")
    data = Path(os.environ.get("CIRCUITS_E2E_DATA") or tmp_path_factory.mktemp("e2e-data"))
    seeded = load_or_seed(data, extras=True)
    small = sub_circuit(data, seeded["circuit_id"], SMALL_EDGES)
    view = node_circuit(data, seeded["circuit_id"], VIEW_NODES)
    with serve(data) as url:
        warm_up(url, seeded["key"], seeded["circuit_id"])
        yield SimpleNamespace(url=url, small_circuit_id=small, view_circuit_id=view, **seeded)


def warm_up(url: str, key: str, circuit_id: int) -> None:
    """One live ablation before the browser tests: the server's first forward passes load the model, scan
    the corpus for the task's prompts and compute the means, which on a busy machine can take longer than
    a test waits for an answer in the page."""
    body = {"off": [], "mode": "keep", "pairs": 64, "show": 4}
    ablate = f"{url}/api/v1/circuits/{circuit_id}/ablate"
    r = httpx.post(ablate, json=body, headers={"x-api-key": key}, timeout=900)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, live):
    """A fresh page with the API key stored (as a user would paste it into the header field)."""
    context = browser.new_context(viewport={"width": 1400, "height": 950}, accept_downloads=True)
    context.add_init_script(f"localStorage.setItem('circuits.apiKey', {live.key!r})")
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.page_errors = errors
    yield pg
    context.close()
