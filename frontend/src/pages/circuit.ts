// The circuit view, read like the paper's circuit figures: a header that says whether the circuit does its
// task (validation checks as pass/fail badges), the circuit as one Cytoscape graph (small circuits in a
// readable layout with every node's index and automatic label, q/k/v channels grouped by head, the token
// embedding at the bottom and the logit difference at the top; large ones collapsed by head/site), the
// token strip (a task prompt pair, every node's value at every position), the loss-vs-k slider, the node
// panel, live ablation and export. Side panels of other features mount in `sidePanels` (mountPanel).
import cytoscape from "cytoscape";
import { api, type Ablation, type Circuit, type Model, type Schemas } from "../api/client";
import { collapse, EMBED, groupOf, LOGIT, READABLE_MAX, readableLayout } from "../graph/groups";
import { keptAtK, layoutCircuit, positionsBox, strongestEdges, type Position } from "../graph/layout";
import { currentRoute, updateQuery } from "../router";
import { newPlot } from "../plot";
import { demoBadge, download, errorBox, fmt, h } from "../util";
import { faithfulnessBox, validationChecks } from "./faithfulness";
import { graphExportButton } from "./graphExport";
import { nodePanel } from "./node";
import { probesBox } from "./probes";
import { playgroundBox } from "./playground";
import { heat, tokenStrip, type Trace } from "./tokenstrip";

type Labels = Schemas["CircuitLabels"];
const STRIP_PAIRS = 8; // task prompt pairs offered in the token strip

// Okabe-Ito blue / vermillion: distinguishable with the common colour-vision deficiencies.
export const POSITIVE = "#0072b2";
export const NEGATIVE = "#d55e00";
const DEFAULT_EDGES = 2000;
const ABLATION_KINDS = ["mean", "zero", "resample"];

export async function circuitPage(root: HTMLElement, id: number): Promise<void> {
  const circuit = await api<Circuit>(`/circuits/${id}`);
  const [model, task] = await Promise.all([
    api<Model>(`/models/${circuit.model_id}`),
    api<Schemas["TaskRead"]>(`/tasks/${encodeURIComponent(circuit.task)}`).catch(() => null),
  ]);
  const query = currentRoute().query;
  const view = new CircuitView(root, circuit, model, task, query);
  view.fetchedAt = performance.now();
  view.render();
}

class CircuitView {
  cy!: cytoscape.Core;
  off: Set<string>;
  edgeLimit: number;
  curveIndex: number;
  panel = h("aside", { id: "node-panel", class: "panel" }, h("p", { class: "hint" }, "Click a node to see its statistics, edges and examples. Shift-click (or the panel's button) toggles its ablation."));
  ablationBox = h("section", { id: "ablation", class: "panel" });
  /** Where side panels are mounted (the node panel, live ablation, and those of other features). */
  sidePanels = h("div", { class: "side", id: "side-panels" });
  stripBox = h("section", { class: "panel strip-box", id: "strip-box" });
  baseline: Ablation | null = null;
  ablationSeq = 0;
  ablationTimer = 0;
  ablationKind: string;
  traceSeq = 0;
  trace: Trace | null = null;
  labels = new Map<string, Schemas["NodeLabel"]>();
  graphShown = false;
  fetchedAt = 0;
  /** Small circuits: every node drawn with its label; large ones: one node per head/site group. */
  readable: boolean;
  expanded: Set<string> | "all";
  groupOfNode = new Map<string, string>();
  dHead: number | null;

  constructor(
    private root: HTMLElement,
    private circuit: Circuit,
    private model: Model,
    private task: Schemas["TaskRead"] | null,
    query: URLSearchParams,
  ) {
    const names = new Set(circuit.nodes.map((n) => n.name));
    this.off = new Set((query.get("off") ?? "").split(",").filter((n) => names.has(n)));
    this.edgeLimit = Math.max(1, Number(query.get("edges")) || DEFAULT_EDGES);
    this.ablationKind = ABLATION_KINDS.includes(query.get("ablation") ?? "") ? query.get("ablation")! : "mean";
    const k = query.get("k");
    const last = Math.max(circuit.curve.length - 1, 0);
    this.curveIndex = k === null ? ownPoint(circuit.curve, circuit.n_nodes) : Math.min(Math.max(Number(k) || 0, 0), last);
    const expand = query.get("expand");
    this.expanded = expand === "all" ? "all" : new Set((expand ?? "").split(",").filter(Boolean));
    this.readable = circuit.nodes.length <= READABLE_MAX && expand !== "all";
    this.dHead = ((this.model.config.model ?? {}) as { d_head?: number }).d_head ?? null;
    for (const n of circuit.nodes) this.groupOfNode.set(n.name, groupOf(n, this.dHead).id);
  }

  render(): void {
    const c = this.circuit;
    const L = c.losses;
    this.root.append(
      h(
        "header",
        { class: "circuit-header", id: "circuit-header" },
        h("h1", {}, `Circuit ${c.id}: ${c.task}`, this.model.demo ? demoBadge() : null),
        h(
          "div",
          { class: "facts" },
          fact("model", h("a", { href: `#/models/${c.model_id}` }, c.model_name)),
          fact("task", c.task),
          fact("target loss", fmt(c.target_loss, 3)),
          fact("full", fmt(L.full)),
          fact("circuit (test)", fmt(L.circuit)),
          fact("circuit (held-out train)", fmt(L.circuit_train_heldout)),
          fact("ablated", fmt(L.ablated)),
          fact("nodes", `${c.n_nodes}`),
          fact("edges", `${c.n_edges}`),
          fact("masks on", c.unit ?? "nodes"),
        ),
        targetVerdict(c),
        badgeRow(checkBadges(c)),
      ),
    );
    const graph = h("div", { id: "cy", class: "cy" });
    const toolbar = this.toolbar();
    const curve = this.curveBox();
    const byTau = [...this.circuit.nodes].sort((a, b) => b.tau - a.tau).map((n) => n.name);
    const playground = playgroundBox(
      this.circuit.model_id,
      () => {
        const sel = currentRoute().query.get("node");
        return sel ? [sel, ...byTau.filter((n) => n !== sel)] : byTau;
      },
      currentRoute().query.get("prompt") ?? "x = 'hello'\nprint(x)",
      (p) => updateQuery({ prompt: p }),
    );
    this.mountPanel(this.ablationBox);
    this.mountPanel(this.panel);
    const faithfulness = faithfulnessBox(c);
    const probes = probesBox(c);
    this.root.append(toolbar, h("div", { class: "circuit-body" }, graph, this.sidePanels), this.stripBox, curve, faithfulness.box, probes.box, playground);
    this.drawGraph(graph);
    this.afterFirstFrame(() => void faithfulness.plot().then(() => probes.load()));
    this.applyCurve();
    this.renderAblation();
    // The forward passes share the machine with the browser: ask for them once the graph is on screen.
    this.afterFirstFrame(() => {
      void this.runAblation();
      void this.loadLabels();
      void this.startStrip();
    });
    const node = currentRoute().query.get("node");
    if (node && this.cy.getElementById(node).nonempty()) this.select(node);
  }

  /** Add a side panel beside the graph (below the live ablation and the node panel). */
  mountPanel(el: HTMLElement): void {
    this.sidePanels.append(el);
  }

  toolbar(): HTMLElement {
    const c = this.circuit;
    const edgesInput = h("input", { type: "number", id: "edge-limit", min: 1, step: 100, value: this.edgeLimit, title: "strongest edges drawn" }) as HTMLInputElement;
    edgesInput.addEventListener("change", () => {
      this.edgeLimit = Math.max(1, Number(edgesInput.value) || DEFAULT_EDGES);
      updateQuery({ edges: String(this.edgeLimit) });
      this.redraw();
    });
    const large = this.circuit.nodes.length > READABLE_MAX;
    return h(
      "div",
      { class: "toolbar" },
      h("label", {}, "edges drawn ", edgesInput, ` of ${c.edges.length} (strongest |w| relative to their kind)`),
      h("span", { class: "legend" }, h("i", { style: `background:${POSITIVE}` }), " positive ", h("i", { style: `background:${NEGATIVE}` }), " negative weight"),
      h("button", { id: "fit", onclick: () => this.cy.fit(undefined, 20) }, "Fit"),
      large ? h("span", { class: "hint" }, `${c.n_nodes} nodes: grouped by head/site, click a group to expand it `) : "",
      large ? h("button", { id: "expand-all", onclick: () => this.setExpanded("all") }, "expand all") : "",
      large ? h("button", { id: "collapse-all", onclick: () => this.setExpanded(new Set()) }, "collapse all") : "",
      compareForm(c.id),
      h("button", { id: "export-json", onclick: () => download(`circuit-${c.id}.json`, new Blob([JSON.stringify(c, null, 1)], { type: "application/json" })) }, "Export JSON"),
      h("button", { id: "export-png", onclick: () => this.exportPng() }, "Export PNG"),
      h("button", { id: "export-svg", onclick: () => void this.exportSvg().catch((e) => this.root.prepend(errorBox(e))) }, "Export SVG"),
      graphExportButton(c.id, this.root),
    );
  }

  setExpanded(expanded: Set<string> | "all"): void {
    this.expanded = expanded;
    this.readable = this.circuit.nodes.length <= READABLE_MAX && expanded !== "all";
    updateQuery({ expand: expanded === "all" ? "all" : [...expanded].join(",") || null });
    this.redraw();
  }

  redraw(): void {
    const div = this.cy.container() as HTMLElement;
    this.cy.destroy();
    this.drawGraph(div);
    this.applyCurve();
    this.applyLabels();
  }

  exportPng(): void {
    const blob = this.cy.png({ output: "blob", full: true, bg: "#ffffff", maxWidth: 4000, maxHeight: 4000 }) as unknown as Blob;
    download(`circuit-${this.circuit.id}.png`, blob);
  }

  async exportSvg(): Promise<void> {
    await loadSvgExport();
    const svg = (this.cy as unknown as { svg(o: object): string }).svg({ full: true, bg: "#ffffff" });
    download(`circuit-${this.circuit.id}.svg`, new Blob([svg], { type: "image/svg+xml" }));
  }

  isExpanded = (group: string): boolean => this.expanded === "all" || this.circuit.nodes.length <= READABLE_MAX || this.expanded.has(group);

  /** The elements drawn: nodes (or their groups), row and layer labels, the embedding and logit nodes of
   * the readable layout, and the strongest edges between what is shown. */
  elements(): { elements: cytoscape.ElementDefinition[]; positions: Record<string, Position>; rows: { label: string; y: number }[] } {
    const c = this.circuit;
    const names = new Set(c.nodes.map((n) => n.name));
    // Residual edges (weight ~1) and weight edges (~0.05) live on different scales: rank and draw each
    // relative to the strongest edge of its own kind.
    const inCircuit = c.edges.filter((e) => names.has(e.src) && names.has(e.dst));
    const kindMax: Record<string, number> = {};
    for (const e of inCircuit) kindMax[e.kind] = Math.max(kindMax[e.kind] ?? 1e-9, Math.abs(e.weight));
    const rel = (e: { weight: number; kind: string }) => Math.abs(e.weight) / kindMax[e.kind];
    const edges = strongestEdges(inCircuit.map((e) => ({ ...e, rel: rel(e) })), this.edgeLimit, (e) => e.rel);
    const kept = this.keptNodes();
    const elements: cytoscape.ElementDefinition[] = [];
    let positions: Record<string, Position>;
    let rows: { label: string; y: number }[];
    if (this.readable) {
      const lay = readableLayout(c.nodes, this.model.sites, this.dHead);
      positions = lay.positions;
      rows = lay.rows;
      const heads = new Map<string, string>();
      for (const n of c.nodes) {
        const g = groupOf(n, this.dHead);
        if (g.head !== null) heads.set(g.id, g.label);
      }
      for (const [id, label] of heads) elements.push({ group: "nodes", data: { id, label }, classes: "head" });
      for (const n of c.nodes) {
        const g = groupOf(n, this.dHead);
        const classes = ["member", this.off.has(n.name) ? "off" : "", kept.has(n.name) ? "" : "dropped"].join(" ").trim();
        elements.push({ group: "nodes", data: { id: n.name, label: `${n.index}`, site: n.site, tau: n.tau, parent: g.head !== null ? g.id : undefined }, position: positions[n.name], classes });
      }
      const readers = c.nodes.filter((n) => n.site.endsWith(".act_in"));
      if (c.transcoder_id == null) {
        elements.push({ group: "nodes", data: { id: EMBED, label: "token embedding (+ positional)" }, position: positions[EMBED], classes: "io" });
        elements.push({ group: "nodes", data: { id: LOGIT, label: `logit(${JSON.stringify(this.completion("a"))}) − logit(${JSON.stringify(this.completion("b"))})` }, position: positions[LOGIT], classes: "io" });
        readers.forEach((n) => elements.push({ group: "edges", data: { id: `embed:${n.name}`, source: EMBED, target: n.name, kind: "embed", weight: 1, w: 0.2 }, classes: "io-edge" }));
      }
      for (const l of lay.layers) elements.push({ group: "nodes", data: { id: `layer:${l.label}`, label: l.label }, position: { x: rowLabelX(positions), y: l.y - 28 }, classes: "rowlabel layerlabel", selectable: false, grabbable: false });
      edges.forEach((e, i) => elements.push(edgeElement(`e${i}`, e.src, e.dst, e.weight, e.rel, e.kind, e, 1)));
    } else {
      const lay = layoutCircuit(c.nodes, this.model.sites, this.dHead);
      // Upward, as in the readable layout: inputs at the bottom.
      positions = Object.fromEntries(Object.entries(lay.positions).map(([k, p]) => [k, { x: p.x, y: -p.y }]));
      rows = lay.rows.map((r) => ({ label: r.label, y: -r.y }));
      const drawn = collapse(edges, this.groupOfNode, this.isExpanded);
      const groups = new Map<string, { label: string; members: string[]; x: number; y: number }>();
      for (const n of c.nodes) {
        const shown = drawn.shown(n.name);
        if (shown === n.name) {
          const classes = ["member", this.off.has(n.name) ? "off" : "", kept.has(n.name) ? "" : "dropped"].join(" ").trim();
          elements.push({ group: "nodes", data: { id: n.name, label: n.name, site: n.site, tau: n.tau }, position: positions[n.name], classes });
          continue;
        }
        const g = groups.get(shown) ?? { label: groupOf(n, this.dHead).label, members: [], x: 0, y: 0 };
        g.members.push(n.name);
        g.x += positions[n.name].x;
        g.y += positions[n.name].y;
        groups.set(shown, g);
      }
      for (const [id, g] of groups) {
        const position = { x: g.x / g.members.length, y: g.y / g.members.length };
        positions[id] = position;
        elements.push({ group: "nodes", data: { id, label: `${g.label} (${g.members.length})`, members: g.members.length }, position, classes: "group" });
      }
      drawn.edges.forEach((e, i) => elements.push(edgeElement(`e${i}`, e.src, e.dst, e.weight, e.rel, e.kind, {}, e.count)));
    }
    for (const r of rows) {
      elements.push({ group: "nodes", data: { id: `row:${r.label}`, label: r.label }, position: { x: rowLabelX(positions), y: r.y }, classes: "rowlabel", selectable: false, grabbable: false });
    }
    return { elements, positions, rows };
  }

  drawGraph(container: HTMLElement): void {
    const started = performance.now();
    const { elements, positions, rows } = this.elements();
    const big = elements.length > 3000;
    const t0 = performance.now();
    const style = [
        // Large circuits: no labels at overview zoom (measuring 1,000+ labels dominates the first frame).
        // They appear when zoomed in (class "labelled") and always on selected/highlighted nodes and groups.
        { selector: "node", style: { width: 10, height: 10, "background-color": "#555" } },
        { selector: "node.labelled, node.hl, node:selected, node.rowlabel, node.group", style: { label: "data(label)", "font-size": 6, "text-valign": "top", "text-margin-y": -2, color: "#222" } },
        { selector: "node.group", style: { width: "mapData(members, 1, 200, 14, 40)", height: "mapData(members, 1, 200, 14, 40)", shape: "round-rectangle", "background-color": "#7a8b99", "font-size": 12 } },
        { selector: "node.rowlabel", style: { shape: "rectangle", width: 1, height: 1, "background-opacity": 0, "font-size": 14, "text-valign": "center", "text-halign": "left", color: "#666", events: "no" } },
        { selector: "node.layerlabel", style: { "font-size": 18, "font-weight": "bold", color: "#333" } },
        ...(this.readable
          ? [
              { selector: "node.member", style: { label: "data(label)", width: 14, height: 14, "font-size": 11, "text-wrap": "wrap", "text-max-width": "92px", "text-valign": "bottom", "text-margin-y": 3, color: "#222" } },
              { selector: "node.head", style: { label: "data(label)", "font-size": 10, "text-valign": "top", "background-color": "#f4f0e6", "border-color": "#c9b98f", "border-width": 1, shape: "round-rectangle", padding: "6px", color: "#7a6520" } },
              { selector: "node.io", style: { label: "data(label)", shape: "round-rectangle", width: 220, height: 22, "background-color": "#eee", "border-width": 1, "border-color": "#888", "font-size": 12, "text-valign": "center", color: "#222" } },
            ]
          : []),
        // Haystack edges are the cheapest to draw; direction is bottom to top by the layout.
        { selector: "edge", style: { width: "mapData(w, 0, 1, 0.4, 5)", "curve-style": "haystack", "haystack-radius": 0, opacity: 0.55 } },
        { selector: "edge.pos", style: { "line-color": POSITIVE } },
        { selector: "edge.neg", style: { "line-color": NEGATIVE } },
        // Readable layout only: straight edges, residual links and embedding reads dashed (dashes cost too
        // much drawing time for thousands of edges).
        ...(this.readable
          ? [
              { selector: "edge", style: { "curve-style": "straight" } },
              { selector: "edge.residual", style: { "line-style": "dashed" } },
              { selector: "edge.io-edge", style: { "line-color": "#bbb", "line-style": "dashed", width: 0.8 } },
            ]
          : []),
        { selector: "node.off", style: { "background-color": "#fff", "border-width": 2, "border-color": "#999", "border-style": "dashed" } },
        { selector: "node.dropped", style: { opacity: 0.15 } },
        // No z-index here: changing it re-sorts every element on each hover.
        { selector: "node.hl", style: { "background-color": "#000" } },
        { selector: "edge.hl", style: { opacity: 1, width: "mapData(w, 0, 1, 1.5, 7)" } },
        { selector: "node:selected", style: { "background-color": "#e69f00", width: 16, height: 16 } },
    ] as unknown as cytoscape.StylesheetJson;
    this.cy = cytoscape({
      container,
      elements,
      // Fitting to the elements' bounding box would measure every edge and label before the first frame;
      // the preset positions give the box directly (fitGraph).
      layout: { name: "preset", fit: false },
      minZoom: 0.02,
      maxZoom: 8,
      textureOnViewport: big,
      hideEdgesOnViewport: big,
      hideLabelsOnViewport: true,
      pixelRatio: 1,
      style,
    });
    fitGraph(this.cy, positions, rows);
    drawFirstFrameDirectly(this.cy);
    const built = performance.now();
    // Exposed for the browser tests and the render benchmark (tests/e2e, bench/render.py).
    const w = window as unknown as { circuitGraph?: unknown; circuitRenderMs?: number; circuitRenderedAt?: number; circuitTimings?: unknown };
    w.circuitTimings = { fetched: this.fetchedAt, prepare: t0 - started, construct: built - t0, built };
    w.circuitGraph = this.cy;
    w.circuitRenderMs = undefined;
    this.cy.one("render", () => {
      this.graphShown = true;
      w.circuitRenderedAt = performance.now();
      w.circuitRenderMs = w.circuitRenderedAt - started;
    });
    // Hover highlights the neighbourhood only (touching every element's style would cost a full restyle),
    // and the node's row in the token strip.
    let hood: cytoscape.CollectionReturnValue | null = null;
    this.cy.on("mouseover", "node", (ev) => {
      const n = ev.target as cytoscape.NodeSingular;
      if (n.hasClass("rowlabel") || n.hasClass("head")) return;
      hood = n.closedNeighborhood();
      hood.addClass("hl");
      this.markStripRow(n.id());
    });
    this.cy.on("mouseout", "node", () => {
      hood?.removeClass("hl");
      hood = null;
      this.markStripRow(null);
    });
    // Edge hover: the edge's weight in the container's tooltip (attribution edges: both factors).
    this.cy.on("mouseover", "edge", (ev) => (container.title = edgeTip((ev.target as cytoscape.EdgeSingular).data())));
    this.cy.on("mouseout", "edge", () => container.removeAttribute("title"));
    if (!this.readable) {
      let labelled = false;
      this.cy.on("zoom", () => {
        const want = this.cy.zoom() >= 2.5;
        if (want !== labelled) {
          labelled = want;
          this.cy.batch(() => this.cy.nodes(".member").toggleClass("labelled", want));
        }
      });
    }
    this.cy.on("tap", "node", (ev) => {
      const n = ev.target as cytoscape.NodeSingular;
      if (n.hasClass("rowlabel") || n.hasClass("head") || n.hasClass("io")) return;
      if (n.hasClass("group")) {
        const next = this.expanded === "all" ? new Set<string>() : new Set(this.expanded);
        next.add(n.id());
        this.setExpanded(next);
        return;
      }
      const orig = ev.originalEvent as MouseEvent | undefined;
      if (orig?.shiftKey) this.toggle(n.id());
      else this.select(n.id());
    });
  }

  /** Node labels from the profile (GET /circuits/{id}/labels): index and automatic label on every node. */
  async loadLabels(): Promise<void> {
    if (this.circuit.transcoder_id != null) return;
    try {
      const res = await api<Labels>(`/circuits/${this.circuit.id}/labels`);
      this.labels = new Map(res.items.map((l) => [l.node, l]));
      this.applyLabels();
      this.addLogitEdges();
      if (this.trace) this.renderStrip();
    } catch (e) {
      this.stripBox.prepend(errorBox(e));
    }
  }

  applyLabels(): void {
    if (this.labels.size === 0) return;
    const byName = new Map(this.circuit.nodes.map((n) => [n.name, n]));
    this.cy.batch(() => {
      this.cy.nodes(".member").forEach((el) => {
        const l = this.labels.get(el.id());
        const n = byName.get(el.id());
        if (l && n) el.data("label", this.readable ? `${n.index}\n${l.label}` : `${n.name} ${l.label}`);
        if (l) el.data("auto", l.label);
      });
    });
    if (this.readable) this.addLogitEdges();
  }

  /** Residual writes -> the logit difference, weighted by their direct effect on it (readable layout). */
  addLogitEdges(): void {
    if (!this.readable || this.cy.getElementById(LOGIT).empty() || this.cy.edges(".logit-edge").nonempty()) return;
    const writes = [...this.labels.values()].filter((l) => l.logit_weight != null && this.cy.getElementById(l.node).nonempty());
    const max = Math.max(1e-9, ...writes.map((l) => Math.abs(l.logit_weight!)));
    this.cy.add(writes.map((l) => edgeElement(`logit:${l.node}`, l.node, LOGIT, l.logit_weight!, Math.abs(l.logit_weight!) / max, "logit", {}, 1, "logit-edge")));
  }

  /** The token strip: pick a task prompt pair, trace the circuit on it. */
  async startStrip(): Promise<void> {
    if (this.circuit.transcoder_id != null) {
      this.stripBox.replaceChildren(h("h3", {}, "Token strip"), h("p", { class: "hint" }, "Transcoder circuits are not traced (their nodes are features)."));
      return;
    }
    this.stripBox.replaceChildren(h("h3", {}, "Token strip"), h("p", { class: "hint" }, "loading the task's prompts …"));
    try {
      const samples = await api<Schemas["TaskSamples"]>(`/tasks/${encodeURIComponent(this.circuit.task)}/samples?model_id=${this.circuit.model_id}&n=${STRIP_PAIRS}`);
      this.samples = samples.items;
      this.pair = Math.min(Math.max(Number(currentRoute().query.get("pair")) || 0, 0), Math.max(samples.items.length - 1, 0));
      await this.runTrace();
    } catch (e) {
      this.stripBox.replaceChildren(h("h3", {}, "Token strip"), errorBox(e));
    }
  }

  samples: Schemas["TaskSample"][] = [];
  pair = 0;
  stripOut = h("div", { id: "strip-out" });

  async runTrace(): Promise<void> {
    const sample = this.samples[this.pair];
    if (!sample) {
      this.stripBox.replaceChildren(h("h3", {}, "Token strip"), h("p", { class: "hint" }, "The task has no test prompts for this model."));
      return;
    }
    const seq = ++this.traceSeq;
    this.renderStripFrame("computing …");
    try {
      const res = await api<Trace>(`/circuits/${this.circuit.id}/trace`, { body: { prompts: [sample.prompt_a, sample.prompt_b], off: [...this.off], ablation: this.ablationKind } });
      if (seq !== this.traceSeq) return;
      this.trace = res;
      this.renderStrip();
    } catch (e) {
      if (seq === this.traceSeq) this.stripOut.replaceChildren(errorBox(e));
    }
  }

  renderStripFrame(status: string): void {
    const pick = h("select", { id: "strip-pair" }, ...this.samples.map((s, i) => h("option", { value: i, selected: i === this.pair }, `pair ${i + 1}: ${s.source || "?"}`))) as HTMLSelectElement;
    pick.addEventListener("change", () => {
      this.pair = Number(pick.value);
      updateQuery({ pair: String(this.pair) });
      void this.runTrace();
    });
    this.stripBox.replaceChildren(
      h("h3", {}, "Token strip"),
      h("p", { class: "hint" }, "A task prompt pair (A and B); under each token every circuit node's value there, the circuit running alone (the rest mean-ablated, toggled nodes too). Hover a token to colour the graph by it. ", pick, " ", h("span", { class: "status", id: "strip-status" }, status)),
      this.stripOut,
    );
  }

  renderStrip(): void {
    if (!this.trace) return;
    if (!this.stripBox.contains(this.stripOut) || !this.stripBox.querySelector("#strip-pair")) this.renderStripFrame("");
    const status = this.stripBox.querySelector("#strip-status");
    if (status) status.textContent = `${this.off.size} node(s) off · ${fmt(this.trace.seconds, 2)} s`;
    const byName = new Map(this.circuit.nodes.map((n) => [n.name, n]));
    const y = (name: string) => this.cy.getElementById(name).position?.("y") ?? 0;
    const order = [...this.circuit.nodes].sort((a, b) => y(a.name) - y(b.name) || a.index - b.index);
    const rows = order.map((n) => {
      const l = this.labels.get(n.name);
      return { node: n.name, label: `${byName.get(n.name)!.site} [${n.index}]${l ? " " + l.label : ""}` };
    });
    this.stripOut.replaceChildren(
      tokenStrip(this.trace, rows, {
        position: (side, pos) => this.colourByPosition(side, pos),
        node: (name) => {
          this.cy.$(".strip-hl").removeClass("strip-hl hl");
          if (name) this.cy.getElementById(name).addClass("strip-hl hl");
        },
      }),
    );
  }

  /** Colour the drawn nodes by their value at one token of the strip (null: back to normal). */
  colourByPosition(side: number | null, pos: number): void {
    const t = side === null ? null : this.trace?.traces[side];
    this.cy.batch(() => {
      this.cy.nodes(".member").forEach((n) => {
        const v = t?.activations[n.id()];
        if (!v) {
          n.removeStyle("background-color");
          return;
        }
        const max = Math.max(1e-9, ...v.map(Math.abs));
        n.style("background-color", heat(v[pos] ?? 0, max));
      });
    });
  }

  markStripRow(name: string | null): void {
    this.stripOut.querySelectorAll("tr.hl").forEach((r) => r.classList.remove("hl"));
    if (name) this.stripOut.querySelectorAll(`tr[data-node="${CSS.escape(name)}"]`).forEach((r) => r.classList.add("hl"));
  }

  select(name: string): void {
    this.cy.$(":selected").unselect();
    this.cy.getElementById(name).select();
    updateQuery({ node: name });
    this.panel.replaceChildren(h("p", {}, `Loading ${name} …`));
    nodePanel(this.panel, this.circuit.model_id, this.circuit.id, name, {
      isOff: () => this.off.has(name),
      toggle: () => this.toggle(name),
      select: (n) => {
        if (this.cy.getElementById(n).nonempty()) this.select(n);
      },
    }, this.circuit.task, this.model.bridged).catch((e) => this.panel.replaceChildren(errorBox(e)));
  }

  toggle(name: string): void {
    if (this.off.has(name)) this.off.delete(name);
    else this.off.add(name);
    this.cy.getElementById(name).toggleClass("off", this.off.has(name));
    updateQuery({ off: [...this.off].join(",") || null });
    const btn = this.panel.querySelector<HTMLButtonElement>("#toggle-node");
    if (btn && btn.dataset.node === name) btn.textContent = this.off.has(name) ? "Restore node" : "Ablate node";
    clearTimeout(this.ablationTimer);
    this.ablationTimer = window.setTimeout(() => {
      void this.runAblation();
      if (this.samples.length) void this.runTrace();
    }, 250);
    this.renderAblation();
  }

  async runAblation(): Promise<void> {
    const seq = ++this.ablationSeq;
    const status = this.ablationBox.querySelector(".status");
    if (status) status.textContent = "computing …";
    try {
      const body = { off: [...this.off], mode: "keep", ablation: this.ablationKind, pairs: 64, show: 4 };
      const res = await api<Ablation>(`/circuits/${this.circuit.id}/ablate`, { body });
      if (seq !== this.ablationSeq) return;
      if (this.off.size === 0) this.baseline = res;
      this.renderAblation(res);
    } catch (e) {
      if (seq !== this.ablationSeq) return;
      this.renderAblation(undefined, e);
    }
  }

  renderAblation(res?: Ablation, error?: unknown): void {
    const b = this.baseline;
    const row = (label: string, key: keyof Ablation, digits = 4) =>
      h("tr", {}, h("th", {}, label), h("td", { class: "num", "data-key": String(key), "data-value": res ? String(res[key]) : undefined }, res ? fmt(res[key] as number, digits) : "…"), h("td", { class: "num base" }, b ? fmt(b[key] as number, digits) : "…"));
    this.ablationBox.replaceChildren(
      h("h3", {}, "Live ablation"),
      this.circuit.transcoder_id == null ? this.ablationKindSelect() : "",
      h("p", { class: "hint" }, this.circuit.transcoder_id == null ? `${this.off.size} node(s) ablated (circuit kept, the rest ${this.ablationKind}-ablated). ` : `${this.off.size} feature(s) switched off (the circuit's features kept, every other feature off, in the replacement model). `, this.off.size ? h("button", { id: "restore-all", onclick: () => { for (const n of [...this.off]) this.toggle(n); } }, "restore all") : ""),
      h("span", { class: "status" }, res ? `${res.pairs} pairs, ${fmt(res.seconds, 2)} s` : error ? "" : "computing …"),
      error ? errorBox(error) : "",
      h(
        "table",
        { class: "kv", id: "ablation-table" },
        h("tr", {}, h("th", {}, ""), h("th", {}, "now"), h("th", {}, "no toggles")),
        row("task loss", "loss"),
        row("calibrated loss", "loss_calibrated"),
        row("accuracy", "accuracy", 3),
        row(`p(A = ${JSON.stringify(this.completion("a"))})`, "p_a", 3),
        row(`p(B = ${JSON.stringify(this.completion("b"))})`, "p_b", 3),
        row("p(correct)", "p_correct", 3),
        row("full model loss", "full_loss"),
      ),
      res && res.prompts.length
        ? h(
            "details",
            {},
            h("summary", {}, "prompts"),
            h("table", { class: "grid" }, h("tr", {}, h("th", {}, "prompt"), h("th", {}, "expected"), h("th", {}, "p_a"), h("th", {}, "p_b")), ...res.prompts.map((p) => h("tr", {}, h("td", { class: "code" }, p.prompt.slice(-60)), h("td", {}, p.expected), h("td", { class: "num" }, fmt(p.p_a, 3)), h("td", { class: "num" }, fmt(p.p_b, 3))))),
          )
        : "",
    );
  }

  ablationKindSelect(): HTMLElement {
    const select = h("select", { id: "ablation-kind", title: "what an ablated node is replaced by" }, ...ABLATION_KINDS.map((k) => h("option", { value: k, selected: k === this.ablationKind }, k))) as HTMLSelectElement;
    select.addEventListener("change", () => {
      this.ablationKind = select.value;
      updateQuery({ ablation: this.ablationKind === "mean" ? null : this.ablationKind });
      this.baseline = null;
      void this.runAblation();
      if (this.samples.length) void this.runTrace();
    });
    return h("label", {}, "ablate to ", select, this.ablationKind === "resample" ? " (values from random pretraining text, redrawn per request)" : "");
  }

  completion(which: "a" | "b"): string {
    if (!this.task) return which.toUpperCase();
    return which === "a" ? this.task.completion_a : this.task.completion_b;
  }

  curveBox(): HTMLElement {
    const curve = this.circuit.curve;
    const box = h("section", { class: "curve" }, h("h3", {}, "Loss vs circuit size k"));
    if (curve.length === 0) {
      box.append(h("p", {}, "This circuit has no loss-vs-k curve."));
      return box;
    }
    const slider = h("input", { type: "range", id: "k-slider", min: 0, max: curve.length - 1, step: 1, value: this.curveIndex }) as HTMLInputElement;
    const label = h("span", { id: "k-label" });
    const plot = h("div", { class: "plot", id: "curve-plot" });
    slider.addEventListener("input", () => {
      this.curveIndex = Number(slider.value);
      updateQuery({ k: String(this.curveIndex) });
      this.applyCurve();
    });
    box.append(h("label", {}, "point ", slider, " ", label), plot);
    return box;
  }

  /** Run fn once the graph's first frame is on screen and the browser is idle (or 2 s later at most). */
  afterFirstFrame(fn: () => void): void {
    const idle = () => (window.requestIdleCallback ? window.requestIdleCallback(() => fn(), { timeout: 2000 }) : window.setTimeout(fn, 0));
    if (this.graphShown) idle();
    else this.cy.one("render", idle);
  }

  /** The nodes kept at the selected point of the loss-vs-k curve (all of them without a curve). */
  keptNodes(): Set<string> {
    const curve = this.circuit.curve;
    // An edge circuit's curve counts edges: which nodes its top-k edges touch is not stored.
    if (curve.length === 0 || this.circuit.unit === "edges") return new Set(this.circuit.nodes.map((n) => n.name));
    return keptAtK(this.circuit.nodes, Number(curve[this.curveIndex].k ?? this.circuit.n_nodes));
  }

  applyCurve(): void {
    const curve = this.circuit.curve;
    if (curve.length === 0) return;
    const point = curve[this.curveIndex];
    const kept = this.keptNodes();
    this.cy.batch(() => {
      this.cy.nodes(".member").forEach((n) => {
        const drop = !kept.has(n.id());
        if (n.hasClass("dropped") !== drop) n.toggleClass("dropped", drop);
      });
    });
    const label = this.root.querySelector("#k-label");
    const k = Number(point.k ?? this.circuit.n_nodes);
    if (label)
      label.textContent =
        this.circuit.unit === "edges" ? `k = ${k} edges (${point.edges ?? "?"} with the qk pairs), loss ${fmt(point.loss)}` : `k = ${k}: keeps ${kept.size} of ${this.circuit.n_nodes} nodes, loss ${fmt(point.loss)}`;
    const plot = this.root.querySelector<HTMLElement>("#curve-plot");
    // Plot after the graph's first frame: parsing plotly (~4.5 MB) must not delay the circuit.
    if (plot && !this.graphShown) this.afterFirstFrame(() => this.plotCurve(plot));
    else if (plot) this.plotCurve(plot);
  }

  plotCurve(plot: HTMLElement): void {
    const curve = this.circuit.curve;
    const point = curve[this.curveIndex];
    const xs = curve.map((p) => Math.max(Number(p.k), 0.5));
    void newPlot(
      plot,
      [
        { x: xs, y: curve.map((p) => p.loss), mode: "lines+markers", name: "loss", line: { color: POSITIVE } },
        { x: [xs[this.curveIndex]], y: [point.loss], mode: "markers", name: "selected", marker: { size: 12, color: "#e69f00" } },
        { x: [xs[0], xs[xs.length - 1]], y: [this.circuit.target_loss, this.circuit.target_loss], mode: "lines", name: "target", line: { dash: "dot", color: "#999" } },
      ],
      { height: 220, margin: { t: 10, l: 50, r: 10, b: 35 }, xaxis: { type: "log", title: { text: "k (nodes kept)" } }, yaxis: { title: { text: "task loss" } }, showlegend: false },
      { displaylogo: false, responsive: true },
    );
  }
}

const ROW_LABEL_X = -120;

/** x of the row labels: left of the leftmost node. */
function rowLabelX(positions: Record<string, Position>): number {
  return Math.min(0, ...Object.values(positions).map((p) => p.x)) + ROW_LABEL_X;
}

/** The curve point of the circuit's own size (the k closest to its node count). */
export function ownPoint(curve: { k?: number | null }[], nNodes: number): number {
  let best = Math.max(curve.length - 1, 0);
  curve.forEach((p, i) => {
    if (Math.abs(Number(p.k) - nNodes) < Math.abs(Number(curve[best].k) - nNodes)) best = i;
  });
  return best;
}

function edgeElement(id: string, src: string, dst: string, weight: number, rel: number, kind: string, extra: { activation?: number | null; weight_product?: number | null }, count: number, cls = ""): cytoscape.ElementDefinition {
  return {
    group: "edges",
    data: { id, source: src, target: dst, weight, w: rel, kind, count, activation: extra.activation, weight_product: extra.weight_product },
    classes: `${weight >= 0 ? "pos" : "neg"} ${kind} ${cls}`.trim(),
  };
}

export interface Badge {
  id: string;
  label: string;
  pass: boolean | null; // null: not run
  detail: string;
}

/** The header's pass/fail badges: the validation checks the engine judged (sufficiency, necessity, random
 * circuit, shuffled labels, nonsense task, generalisation; validation.checks), else sufficiency from the
 * test loss alone with the controls marked as not run; then the faithfulness scores (CPR per ablation
 * mode, no pass/fail of their own). */
export function checkBadges(c: Circuit): Badge[] {
  const checks = validationChecks(c);
  const out: Badge[] = checks.map((k) => ({ id: k.name, label: k.name.replace(/_/g, " "), pass: k.passed, detail: `${fmt(k.value, 3)}: ${k.criterion}` }));
  if (checks.length === 0) {
    const test = c.losses.circuit;
    out.push({ id: "sufficiency", label: "sufficiency", pass: test == null ? null : test <= c.target_loss, detail: test == null ? "no test-split loss" : `circuit test loss ${fmt(test, 3)} vs target ${fmt(c.target_loss, 3)}` });
    out.push({ id: "controls", label: "controls not run", pass: null, detail: "prune with validate to run necessity, random, shuffled-label and nonsense controls" });
  }
  const modes = ((c.faithfulness ?? {}) as { modes?: Record<string, { cpr: number; cmd: number }> }).modes ?? {};
  for (const [mode, cv] of Object.entries(modes)) out.push({ id: `faithfulness-${mode}`, label: `faithfulness ${mode}: CPR ${fmt(cv.cpr, 2)}, CMD ${fmt(cv.cmd, 2)}`, pass: null, detail: "area under f(C) (higher is better) / under |1 − f| (0 is best)" });
  return out;
}

function badgeRow(badges: Badge[]): HTMLElement {
  return h(
    "div",
    { class: "badges", id: "check-badges" },
    ...badges.map((b) => h("span", { class: `badge ${b.pass === null ? "none" : b.pass ? "pass" : "fail"}`, "data-check": b.id, "data-pass": b.pass === null ? "none" : String(b.pass), title: b.detail }, `${b.pass === null ? "–" : b.pass ? "✓" : "✗"} ${b.label}`)),
  );
}

let svgExport: Promise<void> | null = null;

/** Register cytoscape-svg on first use (only the SVG export needs it). */
function loadSvgExport(): Promise<void> {
  svgExport ??= import("cytoscape-svg").then((m) => {
    cytoscape.use(m.default as unknown as cytoscape.Ext);
  });
  return svgExport;
}

interface CanvasRenderer {
  data?: { lyrTxrCache?: { getLayers: (...a: unknown[]) => unknown; firstGet: boolean } };
  drawCachedElement?: (...a: unknown[]) => void;
  drawElement?: (ctx: unknown, ele: unknown) => void;
}

/** Draw the first frame straight onto the canvas. By default Cytoscape's first frame first renders every
 * element into its texture caches (a texture per node, then one layer for the whole graph) and only then
 * onto the screen, which for a 2,000-edge circuit costs more than the drawing itself. After the first
 * frame the caches are switched back on and filled lazily, as Cytoscape does for later frames, so panning
 * and zooming stay cached. These are renderer internals of the pinned cytoscape 3.34; without them the
 * default path runs. */
function drawFirstFrameDirectly(cy: cytoscape.Core): void {
  const r = (cy as unknown as { renderer(): CanvasRenderer }).renderer();
  const layers = r?.data?.lyrTxrCache;
  const cached = r?.drawCachedElement;
  const direct = r?.drawElement;
  if (!layers || typeof layers.getLayers !== "function" || typeof cached !== "function" || typeof direct !== "function") return;
  const getLayers = layers.getLayers;
  layers.getLayers = () => null;
  r.drawCachedElement = (ctx: unknown, ele: unknown) => {
    if ((ele as cytoscape.SingularElementReturnValue).visible()) direct.call(r, ctx, ele);
  };
  cy.one("render", () => {
    layers.getLayers = getLayers;
    r.drawCachedElement = cached;
    layers.firstGet = false; // later frames fill the layer cache lazily instead of all at once
  });
}

/** Fit the view to the preset positions (node radius and the row labels' text to their left included). */
function fitGraph(cy: cytoscape.Core, positions: Record<string, Position>, rows: { label: string }[]): void {
  const box = positionsBox(positions, 10);
  if (!box) return;
  const longest = Math.max(0, ...rows.map((r) => r.label.length));
  box.x1 = Math.min(box.x1, rowLabelX(positions) - longest * 8); // 14 px labels: ~8 px a character
  cy.fit(box as unknown as cytoscape.CollectionArgument, 20);
}

function compareForm(id: number): HTMLElement {
  const other = h("input", { type: "number", id: "compare-with", min: 1, placeholder: "circuit id", style: "width:6rem" }) as HTMLInputElement;
  const form = h("form", { class: "inline" }, "compare with ", other, h("button", { type: "submit" }, "Compare"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (other.value) location.hash = `#/compare?a=${id}&b=${encodeURIComponent(other.value)}`;
  });
  return form;
}

/** Tooltip text of an edge; attribution edges (transcoder circuits) show weight = activation × weight product. */
/** Whether the circuit does its task on held-out code: its calibrated test loss against its target. */
export function targetVerdict(c: { meets_target?: boolean | null; target_loss: number; losses: Record<string, number | null | undefined> }): HTMLElement {
  if (c.meets_target == null) return h("p", { class: "verdict", id: "target-verdict" }, "no test-split loss recorded");
  const test = fmt(c.losses.circuit ?? NaN, 3);
  return c.meets_target
    ? h("p", { class: "verdict ok", id: "target-verdict" }, `meets its target on the test split (${test} ≤ ${fmt(c.target_loss, 3)})`)
    : h("p", { class: "verdict miss", id: "target-verdict" }, `misses its target on the test split: ${test} > ${fmt(c.target_loss, 3)} — the circuit does not do the task on held-out code`);
}

export function edgeTip(d: { source: string; target: string; weight: number; kind: string; activation?: number | null; weight_product?: number | null }): string {
  const sig = (x: number) => Number(x).toPrecision(3);
  const factors = d.activation != null && d.weight_product != null ? ` = activation ${sig(d.activation)} × weight product ${sig(d.weight_product)}` : "";
  return `${d.source} → ${d.target} (${d.kind}): weight ${factors ? sig(d.weight) : fmt(d.weight, 4)}${factors}`;
}

function fact(label: string, value: Node | string): HTMLElement {
  return h("span", { class: "fact" }, h("b", {}, label), " ", value);
}
