"""How fast a 2,000-edge circuit renders and becomes interactive in headless Chromium.

    .venv/bin/python bench/render.py [--data DIR] [--edges 2000] [--reference 200] [--nodes 50] [--repeat 7]
                                     [--cold] [--query expand=all]

Serves a seeded data dir (tests/e2e/seed.py; seeded first if needed) with the built frontend. The measured
circuits are sub-circuits of the seeded one (its `edges` strongest edges and their endpoints, written once
as a new circuit row), so the whole circuit is drawn. Each run loads the circuit page afresh (browser and
server caches warm; --cold: an empty browser cache every time) and, the moment Cytoscape reports its first
frame, hovers the busiest node:
  frame   navigation start -> the graph's first frame (ms), including fetching the circuit and model
  ready   navigation start -> the hover answered: its neighbourhood highlighted and drawn (target <= 1000 ms)
  fetch / build / draw: the page's own split of `frame` (data in, Cytoscape built, first frame drawn)
A `reference`-edge circuit is measured in the same runs, interleaved, to tell a slow machine from a slow
page: its ready time and the ratio are printed too; and a circuit of at most `nodes` nodes
(seed.node_circuit), which the page draws in its readable layout (labels, heads, embedding and logit
nodes). Circuits of more than 60 nodes are drawn collapsed by head/site unless `--query expand=all`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))  # the browser tests' helpers
from live import CHROMIUM, CHROMIUM_ARGS, DIST, serve  # noqa: E402
from seed import load_or_seed, node_circuit, sub_circuit  # noqa: E402

# Runs in the page before the app: when the app publishes its Cytoscape instance, wait for the first frame,
# then hover the node with the most edges and record when its highlighted neighbourhood has been drawn.
PROBE = """(() => {
    let cy;
    Object.defineProperty(window, 'circuitGraph', {configurable: true, get: () => cy, set: (v) => {
        cy = v;
        cy.one('render', () => {
            const frame = performance.now();
            const node = cy.nodes('.member, .group').max((n) => n.degree()).ele;
            node.emit('mouseover');
            requestAnimationFrame(() => requestAnimationFrame(() => {
                const ok = node.hasClass('hl') && node.connectedEdges().every((e) => e.hasClass('hl'));
                window.benchProbe = {frame, ready: performance.now(), ok, degree: node.degree()};
            }));
        });
    }});
})()"""


def measure(page, url: str) -> dict:
    page.goto("about:blank")
    page.goto(url)
    page.wait_for_function("window.benchProbe !== undefined", timeout=60_000)
    probe = page.evaluate("() => window.benchProbe")
    assert probe["ok"], "the hover did not highlight the neighbourhood"
    t = page.evaluate("() => window.circuitTimings")
    fetched, built = t.get("fetched", float("nan")), t.get("built", float("nan"))  # older builds lack them
    # Let the page finish what it does next (the live-ablation forward passes on the server, the loss curve)
    # so that it does not slow down the next run.
    page.wait_for_selector("#ablation-table td[data-key=p_a][data-value]", timeout=60_000)
    if page.locator("#curve-plot").count():
        page.wait_for_selector("#curve-plot .main-svg", timeout=60_000)
    n_nodes, n_edges = page.evaluate(
        "() => [window.circuitGraph.nodes('.member, .group').length, window.circuitGraph.edges().length]"
    )
    return {
        "frame": probe["frame"],
        "ready": probe["ready"],
        "fetch": fetched,
        "build": built - fetched,
        "draw": probe["frame"] - built,
        "nodes": n_nodes,
        "edges": n_edges,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/circuits-dev"))
    ap.add_argument("--edges", type=int, default=2000)
    ap.add_argument("--reference", type=int, default=200, help="edges of the reference circuit")
    ap.add_argument("--nodes", type=int, default=50, help="nodes of the readable circuit")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--query", default="", help="extra query parameters for the circuit page")
    ap.add_argument("--cold", action="store_true", help="a new browser context (empty cache) for every load")
    args = ap.parse_args()
    if not (DIST / "index.html").exists():
        raise SystemExit("frontend/dist is missing: run `cd frontend && npm ci && npm run build` first")
    seeded = load_or_seed(args.data)
    readable = f"{args.nodes}n"
    sizes = [args.edges, args.reference, readable]
    ids = {n: sub_circuit(args.data, seeded["circuit_id"], n) for n in sizes[:2]}
    ids[readable] = node_circuit(args.data, seeded["circuit_id"], args.nodes)
    rows: dict[int | str, list[dict]] = {n: [] for n in sizes}
    with serve(args.data) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        def new_page():
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.add_init_script(PROBE)
            return page

        page = new_page()
        extra = f"&{args.query}" if args.query else ""
        targets = {n: f"{url}/#/circuits/{ids[n]}?edges={args.edges}{extra}" for n in sizes}
        for n in sizes:  # warm-up: the server's circuit cache, the browser's bundle cache and JIT
            measure(page, targets[n])
        for i in range(args.repeat):
            for n in sizes:
                if args.cold:
                    page.close()
                    page = new_page()
                m = measure(page, targets[n])
                rows[n].append(m)
                print(
                    f"run {i} {n:>5} ({m['nodes']} nodes/groups, {m['edges']} edges drawn):"
                    f" frame {m['frame']:4.0f} ms ready {m['ready']:4.0f} ms"
                    f" | fetch {m['fetch']:4.0f} build {m['build']:4.0f} draw {m['draw']:4.0f}"
                )
        browser.close()
    med = {n: {k: statistics.median(r[k] for r in rows[n]) for k in rows[n][0]} for n in sizes}
    for n in sizes:
        m = med[n]
        print(
            f"median {n:>5}: frame {m['frame']:.0f} ms, ready {m['ready']:.0f} ms"
            f" (fetch {m['fetch']:.0f}, build {m['build']:.0f}, draw {m['draw']:.0f})"
        )
    ratio = med[args.edges]["ready"] / med[args.reference]["ready"]
    print(
        f"{args.edges} edges ready in {med[args.edges]['ready']:.0f} ms (target <= 1000 ms), "
        f"{ratio:.2f}x the {args.reference}-edge reference on this machine now"
    )


if __name__ == "__main__":
    main()
