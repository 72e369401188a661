"""A Chromium screenshot of the circuit view of the real app, for the README.

    .venv/bin/python bench/screenshot.py [--data DIR] [--circuit ID] [--task T] [--out FILE.png]

Serves a data dir with the built frontend (default: a fresh one, into which `circuits serve` loads the
shipped demo bundle) and opens a circuit page: --circuit ID, else the demo default model's circuit of
--task. Waits until the node labels and the token strip are in, then saves the viewport as a PNG.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))  # the browser tests' helpers
from live import CHROMIUM, CHROMIUM_ARGS, DIST, serve  # noqa: E402

from backend.demo import NAMES  # noqa: E402


def demo_circuit(url: str, task: str) -> int:
    models = {m["name"]: m["id"] for m in httpx.get(f"{url}/api/v1/models").json()["items"]}
    if NAMES["sparse"] not in models:
        raise SystemExit(f"no demo model in this data dir; pass --circuit ID (models: {sorted(models)})")
    params = {"model_id": models[NAMES["sparse"]], "task": task}
    items = httpx.get(f"{url}/api/v1/circuits", params=params).json()["items"]
    if not items:
        raise SystemExit(f"the demo model has no {task} circuit")
    return items[0]["id"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--circuit", type=int, default=None)
    ap.add_argument("--task", default="single_double_quote")
    ap.add_argument("--out", type=Path, default=Path("docs/circuit-view.png"))
    ap.add_argument("--width", type=int, default=1500)
    ap.add_argument("--height", type=int, default=1150)
    args = ap.parse_args()
    if not (DIST / "index.html").exists():
        raise SystemExit("frontend/dist is missing: run `cd frontend && npm ci && npm run build` first")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp)
        with serve(data) as url, sync_playwright() as p:
            circuit_id = args.circuit or demo_circuit(url, args.task)
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(f"{url}/#/circuits/{circuit_id}")
            page.wait_for_selector("#token-strip table.strip", timeout=180_000)
            page.wait_for_function(  # drawn, and labelled where the readable layout draws every node
                """() => window.circuitRenderMs !== undefined
                    && (window.circuitGraph.nodes('.member').length === 0
                    || window.circuitGraph.nodes('.member').some((n) => n.data('auto') !== undefined))""",
                timeout=180_000,
            )
            page.wait_for_timeout(500)
            page.screenshot(path=str(args.out))
            browser.close()
    print(f"circuit {circuit_id}: {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
