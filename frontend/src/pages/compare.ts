// Compare two circuits (e.g. two k values, sparse vs dense): node and edge overlap, losses side by side,
// and the union drawn in one preset layout coloured by membership.
import cytoscape from "cytoscape";
import { api, type Circuit, type Model } from "../api/client";
import { layoutCircuit, strongestEdges } from "../graph/layout";
import { fmt, h } from "../util";

const ONLY_A = "#0072b2";
const ONLY_B = "#e69f00";
const EDGES_EACH = 1000;

export function overlap(a: string[], b: string[]): { shared: string[]; onlyA: string[]; onlyB: string[]; jaccard: number } {
  const sa = new Set(a);
  const sb = new Set(b);
  const shared = [...sa].filter((x) => sb.has(x));
  const union = new Set([...sa, ...sb]).size;
  return { shared, onlyA: [...sa].filter((x) => !sb.has(x)), onlyB: [...sb].filter((x) => !sa.has(x)), jaccard: union ? shared.length / union : 1 };
}

export async function comparePage(root: HTMLElement, idA: number, idB: number): Promise<void> {
  const [a, b] = await Promise.all([api<Circuit>(`/circuits/${idA}`), api<Circuit>(`/circuits/${idB}`)]);
  const models = await Promise.all([...new Set([a.model_id, b.model_id])].map((m) => api<Model>(`/models/${m}`)));
  const nodes = overlap(a.nodes.map((n) => n.name), b.nodes.map((n) => n.name));
  const key = (e: { src: string; dst: string }) => `${e.src}->${e.dst}`;
  const edges = overlap(a.edges.map(key), b.edges.map(key));
  const col = (c: Circuit, label: string) => [
    h("th", {}, h("a", { href: `#/circuits/${c.id}` }, `${label}: circuit ${c.id}`)),
  ];
  const row = (label: string, f: (c: Circuit) => string) => h("tr", {}, h("th", {}, label), h("td", { class: "num" }, f(a)), h("td", { class: "num" }, f(b)));
  root.append(
    h("h1", {}, `Compare circuits ${a.id} and ${b.id}`),
    h(
      "table",
      { class: "grid", id: "compare-table" },
      h("tr", {}, h("th", {}, ""), ...col(a, "A"), ...col(b, "B")),
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
    h("p", { class: "legend" }, h("i", { style: "background:#333" }), " both ", h("i", { style: `background:${ONLY_A}` }), " only A ", h("i", { style: `background:${ONLY_B}` }), " only B"),
  );
  const div = h("div", { id: "cy-compare", class: "cy", style: "height:60vh" });
  root.append(div);
  const byName = new Map([...a.nodes, ...b.nodes].map((n) => [n.name, n]));
  const dims = Object.fromEntries(models.flatMap((m) => m.sites.map((s) => [s.name, s.dim])));
  const nLayers = Math.max(...models.map((m) => Number((m.config.model as { n_layer?: number } | undefined)?.n_layer ?? 1)));
  const all = [...byName.values()];
  const { positions } = layoutCircuit(all, dims, nLayers);
  const inA = new Set(nodes.onlyA);
  const inB = new Set(nodes.onlyB);
  const drawn = new Map<string, { src: string; dst: string; weight: number }>();
  for (const e of [...strongestEdges(a.edges, EDGES_EACH), ...strongestEdges(b.edges, EDGES_EACH)]) drawn.set(key(e), e);
  const cy = cytoscape({
    container: div,
    layout: { name: "preset", fit: true, padding: 20 },
    elements: [
      ...all.map((n) => ({ group: "nodes" as const, data: { id: n.name, label: n.name }, position: positions[n.name], classes: inA.has(n.name) ? "a" : inB.has(n.name) ? "b" : "both" })),
      ...[...drawn.values()].map((e, i) => ({ group: "edges" as const, data: { id: `e${i}`, source: e.src, target: e.dst } })),
    ],
    style: [
      { selector: "node", style: { width: 10, height: 10, "background-color": "#333" } },
      { selector: "node.a", style: { "background-color": ONLY_A } },
      { selector: "node.b", style: { "background-color": ONLY_B } },
      { selector: "node:selected", style: { label: "data(label)", "font-size": 8 } },
      { selector: "edge", style: { "curve-style": "haystack", "line-color": "#bbb", width: 0.6, opacity: 0.5 } },
    ],
  });
  (window as unknown as { compareGraph?: unknown }).compareGraph = cy;
}
