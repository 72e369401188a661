// The circuit view: the whole circuit as one Cytoscape graph with a preset layout, a header with the
// losses, a slider over the loss-vs-k curve, the node panel, live ablation and export.
import cytoscape from "cytoscape";
import { api, type Ablation, type Circuit, type Model, type Schemas } from "../api/client";
import { keptAtK, layoutCircuit, positionsBox, strongestEdges, type Position } from "../graph/layout";
import { currentRoute, updateQuery } from "../router";
import { newPlot } from "../plot";
import { download, errorBox, fmt, h } from "../util";
import { graphExportButton } from "./graphExport";
import { nodePanel } from "./node";
import { playgroundBox } from "./playground";

// Okabe-Ito blue / vermillion: distinguishable with the common colour-vision deficiencies.
export const POSITIVE = "#0072b2";
export const NEGATIVE = "#d55e00";
const DEFAULT_EDGES = 2000;

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
  baseline: Ablation | null = null;
  ablationSeq = 0;
  ablationTimer = 0;
  graphShown = false;
  fetchedAt = 0;

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
    const k = query.get("k");
    const last = Math.max(circuit.curve.length - 1, 0);
    this.curveIndex = k === null ? last : Math.min(Math.max(Number(k) || 0, 0), last);
  }

  render(): void {
    const c = this.circuit;
    const L = c.losses;
    this.root.append(
      h(
        "header",
        { class: "circuit-header", id: "circuit-header" },
        h("h1", {}, `Circuit ${c.id}: ${c.task}`),
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
        ),
        targetVerdict(c),
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
    this.root.append(toolbar, h("div", { class: "circuit-body" }, graph, h("div", { class: "side" }, this.ablationBox, this.panel)), curve, playground);
    this.drawGraph(graph);
    this.applyCurve();
    this.renderAblation();
    // The forward passes share the machine with the browser: ask for them once the graph is on screen.
    this.afterFirstFrame(() => void this.runAblation());
    const node = currentRoute().query.get("node");
    if (node && this.cy.getElementById(node).nonempty()) this.select(node);
  }

  toolbar(): HTMLElement {
    const c = this.circuit;
    const edgesInput = h("input", { type: "number", id: "edge-limit", min: 1, step: 100, value: this.edgeLimit, title: "strongest edges drawn" }) as HTMLInputElement;
    edgesInput.addEventListener("change", () => {
      this.edgeLimit = Math.max(1, Number(edgesInput.value) || DEFAULT_EDGES);
      updateQuery({ edges: String(this.edgeLimit) });
      const div = this.cy.container() as HTMLElement;
      this.cy.destroy();
      this.drawGraph(div);
      this.applyCurve();
    });
    return h(
      "div",
      { class: "toolbar" },
      h("label", {}, "edges drawn ", edgesInput, ` of ${c.edges.length} (strongest |w| relative to their kind)`),
      h("span", { class: "legend" }, h("i", { style: `background:${POSITIVE}` }), " positive ", h("i", { style: `background:${NEGATIVE}` }), " negative weight"),
      h("button", { id: "fit", onclick: () => this.cy.fit(undefined, 20) }, "Fit"),
      compareForm(c.id),
      h("button", { id: "export-json", onclick: () => download(`circuit-${c.id}.json`, new Blob([JSON.stringify(c, null, 1)], { type: "application/json" })) }, "Export JSON"),
      h("button", { id: "export-png", onclick: () => this.exportPng() }, "Export PNG"),
      h("button", { id: "export-svg", onclick: () => void this.exportSvg().catch((e) => this.root.prepend(errorBox(e))) }, "Export SVG"),
      graphExportButton(c.id, this.root),
    );
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

  drawGraph(container: HTMLElement): void {
    const started = performance.now();
    const c = this.circuit;
    const cfg = (this.model.config.model ?? {}) as { d_head?: number };
    const { positions, rows } = layoutCircuit(c.nodes, this.model.sites, cfg.d_head ?? null);
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
    for (const n of c.nodes) {
      const classes = [this.off.has(n.name) ? "off" : "", kept.has(n.name) ? "" : "dropped"].join(" ").trim();
      elements.push({ group: "nodes", data: { id: n.name, label: n.name, site: n.site, tau: n.tau }, position: positions[n.name], classes });
    }
    for (const r of rows) {
      elements.push({ group: "nodes", data: { id: `row:${r.label}`, label: r.label }, position: { x: ROW_LABEL_X, y: r.y }, classes: "rowlabel", selectable: false, grabbable: false });
    }
    edges.forEach((e, i) => {
      elements.push({
        group: "edges",
        data: { id: `e${i}`, source: e.src, target: e.dst, weight: e.weight, w: e.rel, kind: e.kind, activation: e.activation, weight_product: e.weight_product },
        classes: e.weight >= 0 ? "pos" : "neg",
      });
    });
    const big = edges.length > 3000;
    const t0 = performance.now();
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
      style: [
        // No labels at overview zoom: measuring 1,000+ labels dominates the first frame. They appear when
        // zoomed in (class "labelled", see below) and always on the selected/highlighted nodes.
        { selector: "node", style: { width: 10, height: 10, "background-color": "#555" } },
        { selector: "node.labelled, node.hl, node:selected, node.rowlabel", style: { label: "data(label)", "font-size": 6, "text-valign": "top", "text-margin-y": -2, color: "#222" } },
        { selector: "node.rowlabel", style: { shape: "rectangle", width: 1, height: 1, "background-opacity": 0, "font-size": 14, "text-valign": "center", "text-halign": "left", color: "#666", events: "no" } },
        // Haystack edges are the cheapest to draw; direction is top to bottom by the layout.
        { selector: "edge", style: { width: "mapData(w, 0, 1, 0.4, 5)", "curve-style": "haystack", "haystack-radius": 0, opacity: 0.55 } },
        { selector: "edge.pos", style: { "line-color": POSITIVE } },
        { selector: "edge.neg", style: { "line-color": NEGATIVE } },
        { selector: "node.off", style: { "background-color": "#fff", "border-width": 2, "border-color": "#999", "border-style": "dashed" } },
        { selector: "node.dropped", style: { opacity: 0.15 } },
        // No z-index here: changing it re-sorts every element on each hover.
        { selector: "node.hl", style: { "background-color": "#000" } },
        { selector: "edge.hl", style: { opacity: 1, width: "mapData(w, 0, 1, 1.5, 7)" } },
        { selector: "node:selected", style: { "background-color": "#e69f00", width: 16, height: 16 } },
      ],
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
    // Hover highlights the neighbourhood only (touching every element's style would cost a full restyle).
    let hood: cytoscape.CollectionReturnValue | null = null;
    this.cy.on("mouseover", "node", (ev) => {
      const n = ev.target as cytoscape.NodeSingular;
      if (n.hasClass("rowlabel")) return;
      hood = n.closedNeighborhood();
      hood.addClass("hl");
    });
    this.cy.on("mouseout", "node", () => {
      hood?.removeClass("hl");
      hood = null;
    });
    // Edge hover: the edge's weight in the container's tooltip (attribution edges: both factors).
    this.cy.on("mouseover", "edge", (ev) => (container.title = edgeTip((ev.target as cytoscape.EdgeSingular).data())));
    this.cy.on("mouseout", "edge", () => container.removeAttribute("title"));
    let labelled = false;
    this.cy.on("zoom", () => {
      const want = this.cy.zoom() >= 2.5;
      if (want !== labelled) {
        labelled = want;
        this.cy.batch(() => this.cy.nodes().not(".rowlabel").toggleClass("labelled", want));
      }
    });
    this.cy.on("tap", "node", (ev) => {
      const n = ev.target as cytoscape.NodeSingular;
      if (n.hasClass("rowlabel")) return;
      const orig = ev.originalEvent as MouseEvent | undefined;
      if (orig?.shiftKey) this.toggle(n.id());
      else this.select(n.id());
    });
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
    this.ablationTimer = window.setTimeout(() => void this.runAblation(), 250);
    this.renderAblation();
  }

  async runAblation(): Promise<void> {
    const seq = ++this.ablationSeq;
    const status = this.ablationBox.querySelector(".status");
    if (status) status.textContent = "computing …";
    try {
      const body = { off: [...this.off], mode: "keep", pairs: 64, show: 4 };
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
      h("p", { class: "hint" }, this.circuit.transcoder_id == null ? `${this.off.size} node(s) ablated to their means (circuit kept, the rest mean-ablated). ` : `${this.off.size} feature(s) switched off (the circuit's features kept, every other feature off, in the replacement model). `, this.off.size ? h("button", { id: "restore-all", onclick: () => { for (const n of [...this.off]) this.toggle(n); } }, "restore all") : ""),
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
    if (curve.length === 0) return new Set(this.circuit.nodes.map((n) => n.name));
    return keptAtK(this.circuit.nodes, Number(curve[this.curveIndex].k ?? this.circuit.n_nodes));
  }

  applyCurve(): void {
    const curve = this.circuit.curve;
    if (curve.length === 0) return;
    const point = curve[this.curveIndex];
    const kept = this.keptNodes();
    this.cy.batch(() => {
      this.cy.nodes().not(".rowlabel").forEach((n) => {
        const drop = !kept.has(n.id());
        if (n.hasClass("dropped") !== drop) n.toggleClass("dropped", drop);
      });
    });
    const label = this.root.querySelector("#k-label");
    const k = Number(point.k ?? this.circuit.n_nodes);
    if (label) label.textContent = `k = ${k}: keeps ${kept.size} of ${this.circuit.n_nodes} nodes, loss ${fmt(point.loss)}`;
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
  box.x1 = Math.min(box.x1, ROW_LABEL_X - longest * 8); // 14 px labels: ~8 px a character
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
