"""How fast a 2,000-edge circuit renders and becomes interactive in headless Chromium.

    .venv/bin/python bench/render.py [--data DIR] [--edges 2000] [--repeat 5]

Serves a seeded data dir (seed.py; seeded first if needed) with the built frontend. The measured circuit
is a `edges`-edge sub-circuit of the seeded one (its strongest edges and their endpoints, written once
as a new circuit row), so the whole circuit is drawn. Prints per run and as medians:
  graph     Cytoscape build + first frame (ms), from the preset layout's start
  page      navigation start -> first graph frame (ms): includes fetching the circuit, model and task
  hover     a hover over a node -> its neighbourhood highlighted and drawn (ms)
  ready     page + hover: the circuit is on screen and answering input (target <= 1000 ms)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))  # the browser tests' helpers
from live import CHROMIUM, CHROMIUM_ARGS, DIST, serve  # noqa: E402
from seed import load_or_seed  # noqa: E402


def sub_circuit(data_dir: Path, circuit_id: int, n_edges: int) -> int:
    """Id of a circuit made of the n_edges strongest edges of circuit_id and their endpoints (made once)."""
    from backend.db import Database
    from backend.models import Circuit as CircuitRow
    from backend.settings import Settings
    from worker.engine.circuit import Circuit, Edge, Node
    from worker.engine.prune import PruneConfig
    from worker.jobs import write_circuit

    marker = data_dir / f"bench-circuit-{circuit_id}-{n_edges}.txt"
    if marker.exists():
        return int(marker.read_text())
    db = Database(Settings(data_dir=data_dir))
    with db.session() as s:
        row = s.get(CircuitRow, circuit_id)
        edges = sorted(row.edges, key=lambda e: -abs(e.weight))[:n_edges]
        names = {e.src for e in edges} | {e.dst for e in edges}
        circuit = Circuit(
            task=row.task.name,
            model=str(row.model_id),
            target_loss=row.target_loss,
            nodes=[Node(n.name, n.site, n.layer, n.index, n.tau) for n in row.nodes if n.name in names],
            edges=[Edge(e.src, e.dst, e.weight, e.kind) for e in edges],
            losses=row.losses,
            calibration=row.calibration,
            curve=row.curve,
        )
        new_id = write_circuit(s, row.model_id, row.task_id, circuit, PruneConfig(), "bench")
    db.dispose()
    marker.write_text(str(new_id))
    return new_id


HOVER = """async () => {
    const cy = window.circuitGraph;
    const node = cy.nodes().not('.rowlabel').max((n) => n.degree()).ele;
    const t0 = performance.now();
    node.emit('mouseover');
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    const ok = node.hasClass('hl') && node.connectedEdges().every((e) => e.hasClass('hl'));
    return {ms: performance.now() - t0, ok, degree: node.degree()};
}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/circuits-dev"))
    ap.add_argument("--edges", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if not (DIST / "index.html").exists():
        raise SystemExit("frontend/dist is missing: run `cd frontend && npm ci && npm run build` first")
    seeded = load_or_seed(args.data)
    circuit_id = sub_circuit(args.data, seeded["circuit_id"], args.edges)
    rows = []
    with serve(args.data) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 950})
        target = f"{url}/#/circuits/{circuit_id}?edges={args.edges}"
        page.goto(target)  # warm-up: caches the circuit JSON on the server and the bundle in the browser
        page.wait_for_function("window.circuitRenderMs !== undefined", timeout=60_000)
        for i in range(args.repeat):
            page.goto("about:blank")
            page.goto(target)
            page.wait_for_function("window.circuitRenderMs !== undefined", timeout=60_000)
            graph, page_ms, n_edges, n_nodes = page.evaluate(
                "() => [window.circuitRenderMs, window.circuitRenderedAt,"
                " window.circuitGraph.edges().length, window.circuitGraph.nodes().not('.rowlabel').length]"
            )
            hover = page.evaluate(HOVER)
            assert hover["ok"], "hover did not highlight the neighbourhood"
            rows.append((graph, page_ms, hover["ms"], page_ms + hover["ms"]))
            hover_ms = hover["ms"]
            print(
                f"run {i}: {n_nodes} nodes, {n_edges} edges drawn | graph {graph:.0f} ms"
                f" | page {page_ms:.0f} ms | hover {hover_ms:.0f} ms | ready {page_ms + hover_ms:.0f} ms"
            )
        browser.close()
    med = [statistics.median(c) for c in zip(*rows, strict=True)]
    print(
        f"median over {len(rows)}: graph {med[0]:.0f} ms, page {med[1]:.0f} ms, hover {med[2]:.0f} ms, "
        f"ready {med[3]:.0f} ms (target <= 1000 ms for {args.edges} edges)"
    )


if __name__ == "__main__":
    main()
