// Compare two circuits (e.g. two k values, sparse vs dense): losses in a table, node and edge overlap, and
// the two graphs side by side in one preset layout computed from both (a node sits at the same place in
// either graph), each node and edge coloured by whether the other circuit has it too. Selecting a node
// selects it in both graphs; panning or zooming one moves the other. URL: #/compare?a=&b=&node=
import cytoscape from "cytoscape";
import { api, type Circuit, type Model } from "../api/client";
import { layoutCircuit, mergeCatalogs, positionsBox, strongestEdges } from "../graph/layout";
import { currentRoute, updateQuery } from "../router";
import { fmt, h } from "../util";

export const SHARED = "#333333";
export const ONLY_A = "#0072b2";
export const ONLY_B = "#e69f00";
const EDGES_EACH = 1000;

export function overlap(a: string[], b: string[]): { shared: string[]; onlyA: string[]; onlyB: string[]; jaccard: number } {
  const sa = new Set(a);
  const sb = new Set(b);
  const shared = [...sa].filter((x) => sb.has(x));
  const union = new Set([...sa, ...sb]).size;
  return { shared, onlyA: [...sa].filter((x) => !sb.has(x)), onlyB: [...sb].filter((x) => !sa.has(x)), jaccard: union ? shared.length / union : 1 };
}

export const edgeKey = (e: { src: string; dst: string }) => `${e.src}->${e.dst}`;

export async function comparePage(root: HTMLElement, idA: number, idB: number): Promise<void> {
  const [a, b] = await Promise.all([api<Circuit>(`/circuits/${idA}`), api<Circuit>(`/circuits/${idB}`)]);
  const models = await Promise.all([...new Set([a.model_id, b.model_id])].map((m) => api<Model>(`/models/${m}`)));
  const nodes = overlap(a.nodes.map((n) => n.name), b.nodes.map((n) => n.name));
  const edges = overlap(a.edges.map(edgeKey), b.edges.map(edgeKey));
  const col = (c: Circuit, label: string) => h("th", {}, h("a", { href: `#/circuits/${c.id}` }, `${label}: circuit ${c.id}`));
  const row = (label: string, f: (c: Circuit) => string) => h("tr", {}, h("th", {}, label), h("td", { class: "num" }, f(a)), h("td", { class: "num" }, f(b)));
  root.append(
    h("h1", {}, `Compare circuits ${a.id} and ${b.id}`),
    h(
      "table",
      { class: "grid", id: "compare-table" },
      h("tr", {}, h("th", {}, ""), col(a, "A"), col(b, "B")),
      row("model", (c) => c.model_name),
      row("task", (c) => c.task),
      row("target loss", (c) => fmt(c.target_loss, 3)),
      row("circuit loss", (c) => fmt(c.losses.circuit)),
      row("full loss", (c) => fmt(c.losses.full)),
      row("nodes", (c) => `${c.n_nodes}`),
      row("edges", (c) => `${c.n_edges}`),
    ),
    h(
      "p",
      { id: "overlap" },
      `Nodes: ${nodes.shared.length} shared, ${nodes.onlyA.length} only in A, ${nodes.onlyB.length} only in B (Jaccard ${fmt(nodes.jaccard, 3)}). `,
      `Edges: ${edges.shared.length} shared, ${edges.onlyA.length} only in A, ${edges.onlyB.length} only in B (Jaccard ${fmt(edges.jaccard, 3)}).`,
    ),
    h("p", { class: "legend" }, h("i", { style: `background:${SHARED}` }), " in both ", h("i", { style: `background:${ONLY_A}` }), " only in A ", h("i", { style: `background:${ONLY_B}` }), " only in B", h("span", { class: "hint" }, ` · up to ${EDGES_EACH} strongest edges per circuit drawn; click a node to find it in both`)),
  );

  // One layout for both circuits, so that a shared node is at the same place on either side.
  const all = [...new Map([...a.nodes, ...b.nodes].map((n) => [n.name, n])).values()];
  const cfgs = models.map((m) => (m.config.model ?? {}) as { d_head?: number });
  const dHead = cfgs.every((c) => c.d_head === cfgs[0].d_head) ? (cfgs[0].d_head ?? null) : null;
  const { positions } = layoutCircuit(all, mergeCatalogs(...models.map((m) => m.sites)), dHead);

  const selected = h("p", { id: "compare-selected", class: "hint" }, "No node selected.");
  const paneA = h("div", { id: "cy-compare-a", class: "cy", "data-side": "A" });
  const paneB = h("div", { id: "cy-compare-b", class: "cy", "data-side": "B" });
  root.append(
    h(
      "div",
      { class: "compare-panes" },
      h("section", { class: "compare-pane" }, h("h3", {}, `A: circuit ${a.id} (${a.model_name}, ${a.n_nodes} nodes)`), paneA),
      h("section", { class: "compare-pane" }, h("h3", {}, `B: circuit ${b.id} (${b.model_name}, ${b.n_nodes} nodes)`), paneB),
    ),
    selected,
  );
  const cyA = sideGraph(paneA, a, new Set(nodes.onlyA), new Set(edges.onlyA), ONLY_A, positions);
  const cyB = sideGraph(paneB, b, new Set(nodes.onlyB), new Set(edges.onlyB), ONLY_B, positions);
  const box = positionsBox(positions, 10); // the same view of both: the box around either circuit's nodes
  if (box) for (const cy of [cyA, cyB]) cy.fit(box as unknown as cytoscape.CollectionArgument, 20);
  (window as unknown as { compareGraphs?: unknown }).compareGraphs = { a: cyA, b: cyB };

  // Pan and zoom together: both graphs share coordinates, so the same view shows the same units.
  let syncing = false;
  const follow = (from: cytoscape.Core, to: cytoscape.Core) =>
    from.on("viewport", () => {
      if (syncing) return;
      syncing = true;
      to.viewport({ zoom: from.zoom(), pan: { ...from.pan() } });
      syncing = false;
    });
  follow(cyA, cyB);
  follow(cyB, cyA);

  const inA = new Set(a.nodes.map((n) => n.name));
  const inB = new Set(b.nodes.map((n) => n.name));
  const select = (name: string) => {
    for (const cy of [cyA, cyB]) {
      cy.$(":selected").unselect();
      cy.getElementById(name).select();
    }
    const where = inA.has(name) && inB.has(name) ? "in A and B" : inA.has(name) ? "only in A" : "only in B";
    selected.replaceChildren(h("b", {}, name), ` — ${where}`);
    updateQuery({ node: name });
  };
  for (const cy of [cyA, cyB]) cy.on("tap", "node", (ev) => select((ev.target as cytoscape.NodeSingular).id()));
  const initial = currentRoute().query.get("node");
  if (initial && (inA.has(initial) || inB.has(initial))) select(initial);
}

/** One side: its nodes at the shared positions, its strongest edges; what the other side lacks in colour. */
function sideGraph(
  container: HTMLElement,
  c: Circuit,
  ownNodes: Set<string>,
  ownEdges: Set<string>,
  colour: string,
  positions: Record<string, { x: number; y: number }>,
): cytoscape.Core {
  const drawn = strongestEdges(c.edges, EDGES_EACH);
  return cytoscape({
    container,
    layout: { name: "preset", fit: false },
    minZoom: 0.02,
    maxZoom: 8,
    pixelRatio: 1,
    hideLabelsOnViewport: true,
    elements: [
      ...c.nodes.map((n) => ({ group: "nodes" as const, data: { id: n.name, label: n.name }, position: positions[n.name], classes: ownNodes.has(n.name) ? "own" : "shared" })),
      ...drawn.map((e, i) => ({ group: "edges" as const, data: { id: `e${i}`, source: e.src, target: e.dst }, classes: ownEdges.has(edgeKey(e)) ? "own" : "shared" })),
    ],
    style: [
      { selector: "node", style: { width: 10, height: 10, "background-color": SHARED } },
      { selector: "node.own", style: { "background-color": colour } },
      { selector: "node:selected", style: { label: "data(label)", "font-size": 8, width: 16, height: 16, "border-width": 2, "border-color": "#000" } },
      { selector: "edge", style: { "curve-style": "haystack", "haystack-radius": 0, "line-color": "#777", width: 0.8, opacity: 0.6 } },
      { selector: "edge.own", style: { "line-color": colour, width: 1, opacity: 0.8 } },
    ],
  });
}
