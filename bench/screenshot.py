"""A Chromium screenshot of the circuit view, for the README.

    .venv/bin/python bench/screenshot.py [--data DIR] [--circuit ID | --nodes 50] [--out FILE.png]

Serves a data dir (default: the e2e seed, tests/e2e/seed.py, seeded first if needed) with the built
frontend and opens a circuit page: --circuit ID, else a circuit of at most --nodes nodes made from the
seeded circuit's strongest edges (seed.node_circuit). Waits until the node labels and the token strip
are in, then saves the viewport as a PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))  # the browser tests' helpers
from live import CHROMIUM, CHROMIUM_ARGS, DIST, serve  # noqa: E402
from seed import load_or_seed, node_circuit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/circuits-dev"))
    ap.add_argument("--circuit", type=int, default=None)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path("docs/circuit-view.png"))
    ap.add_argument("--width", type=int, default=1500)
    ap.add_argument("--height", type=int, default=1150)
    args = ap.parse_args()
    if not (DIST / "index.html").exists():
        raise SystemExit("frontend/dist is missing: run `cd frontend && npm ci && npm run build` first")
    seeded = load_or_seed(args.data)
    circuit_id = args.circuit or node_circuit(args.data, seeded["circuit_id"], args.nodes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with serve(args.data) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(f"{url}/#/circuits/{circuit_id}")
        page.wait_for_selector("#token-strip table.strip", timeout=180_000)
        page.wait_for_function(
            "() => window.circuitGraph.nodes('.member').some((n) => n.data('auto') !== undefined)",
            timeout=180_000,
        )
        page.wait_for_timeout(500)
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"circuit {circuit_id}: {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
