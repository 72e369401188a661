"""The first run on the shipped demo bundle (not a seeded test model): `circuits serve` on an empty data
dir loads the bundle, and the default model's quote circuit, with its nodes' examples, is browsable
within two minutes of the server starting."""

from __future__ import annotations

import time

import httpx
from live import serve
from playwright.sync_api import Page, expect

from backend.demo import NAMES, read_manifest

FIRST_RUN_SECONDS = 120
TIMEOUT = 60_000


def test_first_run_shows_the_shipped_quote_circuit_with_examples(browser, tmp_path):
    manifest = read_manifest()  # fails without a shipped bundle
    shipped = next(
        c for c in manifest["circuits"] if (c["kind"], c["task"]) == ("sparse", "single_double_quote")
    )
    data = tmp_path / "data"
    data.mkdir()
    started = time.monotonic()
    with serve(data, timeout=FIRST_RUN_SECONDS) as url:
        models = httpx.get(f"{url}/api/v1/models").json()["items"]
        demo = {m["name"]: m for m in models}
        assert set(demo) == set(NAMES.values()) and all(m["demo"] for m in models)
        sparse = demo[NAMES["sparse"]]
        listed = httpx.get(
            f"{url}/api/v1/circuits", params={"model_id": sparse["id"], "task": "single_double_quote"}
        ).json()["items"]
        assert len(listed) == 1 and listed[0]["n_nodes"] == shipped["nodes"]
        circuit_id = listed[0]["id"]

        context = browser.new_context(viewport={"width": 1400, "height": 950})
        page: Page = context.new_page()
        try:
            page.goto(f"{url}/#/circuits/{circuit_id}")
            expect(page.locator("#circuit-header h1")).to_contain_text(
                f"Circuit {circuit_id}", timeout=TIMEOUT
            )
            page.wait_for_function("window.circuitRenderMs !== undefined", timeout=TIMEOUT)
            node = httpx.get(f"{url}/api/v1/circuits/{circuit_id}").json()["nodes"][0]["name"]
            page.goto(f"{url}/#/circuits/{circuit_id}?expand=all&node={node}")
            expect(page.locator("#node-title")).to_have_text(node, timeout=TIMEOUT)
            expect(page.locator("#node-examples .heatmap").first).to_be_visible(timeout=TIMEOUT)
            elapsed = time.monotonic() - started
        finally:
            context.close()
    assert elapsed <= FIRST_RUN_SECONDS, f"the quote circuit's examples took {elapsed:.0f} s after start"
