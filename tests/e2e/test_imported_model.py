"""The acceptance path of a released model: a checkpoint in the openai/circuit_sparsity format goes
through the import job, profile and prune, its circuit opens in the browser (with the circuit-tracer graph
export), and a released circuit of it is compared with our own prune on the compare page."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from live import serve
from openai_release import write_release, write_viz_data
from playwright.sync_api import Page, expect
from seed import PROFILE, PRUNE, make_key, run_job

from backend.app import create_app
from backend.db import Database
from backend.jobs.kinds.imports import import_circuit
from backend.settings import Settings

TIMEOUT = 30_000


@pytest.fixture(scope="module")
def imported(test_model, tmp_path_factory):
    from fastapi.testclient import TestClient

    root = tmp_path_factory.mktemp("release")
    release = write_release(test_model, root / "csp_test")
    data = tmp_path_factory.mktemp("e2e-import")
    settings = Settings(data_dir=data, import_root=root, torch_threads=1, progress_min_interval=0.2)
    key = make_key(settings)
    with TestClient(create_app(settings)) as client:
        model_id = run_job(client, key, "import", {"source": "openai", "path": "csp_test"})["result"][
            "model_id"
        ]
        run_job(client, key, "profile", {"model_id": model_id, **PROFILE})
        ours = run_job(client, key, "prune", {"model_id": model_id, **PRUNE, "curve_pairs": 32})["result"]
        circuit = client.get(f"/api/v1/circuits/{ours['circuit_id']}").json()
    # a released circuit of the same model and task: our circuit's five most important nodes
    kept: dict[str, list[int]] = {}
    for n in circuit["nodes"][:5]:
        kept.setdefault(n["site"], []).append(n["index"])
    viz = write_viz_data(release.parent / "viz" / "single_double_quote" / "viz_data.pt", kept, [], 0.2, 0.4)
    db = Database(settings)
    with db.session() as s:
        released_id = import_circuit(s, model_id, viz)
    db.dispose()
    with serve(data) as url:
        yield {
            "url": url,
            "key": key,
            "model_id": model_id,
            "circuit_id": ours["circuit_id"],
            "released_id": released_id,
            "n_nodes": len(circuit["nodes"]),
        }


@pytest.fixture
def page(browser, imported):
    context = browser.new_context(viewport={"width": 1400, "height": 950}, accept_downloads=True)
    context.add_init_script(f"localStorage.setItem('circuits.apiKey', {imported['key']!r})")
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.page_errors = errors
    yield pg
    context.close()


def open_circuit(page: Page, url: str, circuit_id: int) -> None:
    page.goto(f"{url}/#/circuits/{circuit_id}?expand=all")  # every node drawn (large circuits collapse)
    expect(page.locator("#circuit-header h1")).to_contain_text(f"Circuit {circuit_id}", timeout=TIMEOUT)
    page.wait_for_function("window.circuitRenderMs !== undefined", timeout=TIMEOUT)


def test_imported_model_profiled_pruned_and_browsed(page: Page, imported):
    url = imported["url"]
    model = httpx.get(f"{url}/api/v1/models/{imported['model_id']}").json()
    assert model["status"] == "ready" and model["profiled"]
    assert model["config"]["imported_from"].startswith("openai/circuit_sparsity")
    open_circuit(page, url, imported["circuit_id"])
    n_drawn = page.evaluate("() => window.circuitGraph.nodes().not('.rowlabel').length")
    assert n_drawn == imported["n_nodes"] > 0
    with page.expect_download() as dl:
        page.locator("#export-graph").click()
    graph = json.loads(open(dl.value.path()).read())
    assert dl.value.suggested_filename == f"circuit-{imported['circuit_id']}.graph.json"
    assert set(graph) >= {"metadata", "qParams", "nodes", "links"} and len(graph["nodes"]) == n_drawn
    assert {n["clerp"] for n in graph["nodes"]} == set(
        page.evaluate("() => window.circuitGraph.nodes().not('.rowlabel').map((n) => n.id())")
    )
    assert not page.page_errors


def test_released_circuit_opens_and_compares_with_our_prune(page: Page, imported):
    url = imported["url"]
    open_circuit(page, url, imported["released_id"])
    expect(page.locator("#circuit-header")).to_contain_text("nodes 5")
    page.locator("#compare-with").fill(str(imported["circuit_id"]))
    page.locator("#compare-with").press("Enter")
    overlap = page.locator("#overlap")
    expect(overlap).to_contain_text("Nodes:", timeout=TIMEOUT)
    numbers = re.search(r"Nodes: (\d+) shared, (\d+) only in A, (\d+) only in B", overlap.inner_text())
    shared, only_a, only_b = (int(x) for x in numbers.groups())
    assert (shared, only_a, only_b) == (5, 0, imported["n_nodes"] - 5)
    assert not page.page_errors
