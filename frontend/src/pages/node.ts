// The node panel: statistics, incoming/outgoing edges and percentile-binned examples as token heatmaps.
import { api, nodePath, type Example, type NodeInfo, type Schemas } from "../api/client";
import { newPlot } from "../plot";
import { currentRoute, updateQuery } from "../router";
import { errorBox, fmt, h } from "../util";

export interface NodeActions {
  isOff: () => boolean;
  toggle: () => void;
  select: (name: string) => void;
}

const EDGES_SHOWN = 12;

export async function nodePanel(panel: HTMLElement, modelId: number, circuitId: number, name: string, actions: NodeActions, task?: string, bridged = false): Promise<void> {
  const info = await api<NodeInfo>(`/models/${modelId}/nodes/${nodePath(name)}?circuit_id=${circuitId}`);
  const toggle = h("button", { id: "toggle-node", "data-node": name, onclick: () => actions.toggle() }, actions.isOff() ? "Restore node" : "Ablate node");
  panel.replaceChildren(
    h("h3", { id: "node-title" }, info.name),
    h("p", { class: "meta" }, `site ${info.site} · index ${info.index} · in ${info.circuits.length} circuit(s) `, toggle),
    statsTable(info),
    edgeList("Incoming", info.incoming, actions),
    edgeList("Outgoing", info.outgoing, actions),
    info.de_embedding ? deEmbeddingBox(info.de_embedding) : "",
    task ? taskView(modelId, name, task) : "",
    bridged && task ? steerBox(modelId, name, task) : "",
    examplesBox(info.examples),
  );
}

const TASK_PAIRS = 8;

/** The node's activation at the last prompt token on class A and class B prompts of the task, and the
 * difference, computed on demand through the playground endpoint. */
function taskView(modelId: number, name: string, task: string): HTMLElement {
  const out = h("div", { id: "task-view-out" });
  const box = h("details", { class: "task-view", id: "task-view" }, h("summary", {}, `Task view: class A vs class B prompts (${TASK_PAIRS} pairs)`), out);
  let started = false;
  box.addEventListener("toggle", async () => {
    if (!box.open || started) return;
    started = true;
    out.replaceChildren(h("p", { class: "hint" }, "computing …"));
    try {
      const samples = await api<Schemas["TaskSamples"]>(`/tasks/${encodeURIComponent(task)}/samples?model_id=${modelId}&n=${TASK_PAIRS}`);
      const last = async (prompt: string) => {
        const r = await api<Schemas["PlaygroundResult"]>(`/models/${modelId}/playground`, { body: { prompt, nodes: [name] } });
        const v = r.activations[name] ?? [];
        return v[v.length - 1] ?? 0;
      };
      const rows: [string, number, number][] = [];
      for (const s of samples.items) rows.push([s.source, await last(s.prompt_a), await last(s.prompt_b)]);
      const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(xs.length, 1);
      const a = mean(rows.map((r) => r[1]));
      const b = mean(rows.map((r) => r[2]));
      out.replaceChildren(
        h(
          "table",
          { class: "kv", id: "task-view-table" },
          h("tr", {}, h("th", {}, "mean on A prompts"), h("td", { class: "num", "data-value": String(a) }, fmt(a))),
          h("tr", {}, h("th", {}, "mean on B prompts"), h("td", { class: "num", "data-value": String(b) }, fmt(b))),
          h("tr", {}, h("th", {}, "A − B"), h("td", { class: "num", "data-value": String(a - b) }, fmt(a - b))),
        ),
        h("table", { class: "grid" }, h("tr", {}, h("th", {}, "source"), h("th", {}, "A"), h("th", {}, "B")), ...rows.map(([src, x, y]) => h("tr", {}, h("td", {}, src), h("td", { class: "num" }, fmt(x, 3)), h("td", { class: "num" }, fmt(y, 3))))),
      );
    } catch (e) {
      out.replaceChildren(errorBox(e));
    }
  });
  return box;
}

function statsTable(info: NodeInfo): HTMLElement {
  const s = info.stats;
  if (!s) return h("p", { class: "hint" }, "No statistics: the model has not been profiled (run a profile job).");
  const q = s.quantiles as Record<string, number | null>;
  return h(
    "table",
    { class: "kv", id: "node-stats" },
    h("tr", {}, h("th", {}, "mean"), h("td", { class: "num" }, fmt(s.mean))),
    h("tr", {}, h("th", {}, "firing frequency"), h("td", { class: "num" }, fmt(s.frequency, 3))),
    h("tr", {}, h("th", {}, "min / median / max"), h("td", { class: "num" }, `${fmt(q["0"])} / ${fmt(q["0.5"])} / ${fmt(q["1"])}`)),
    h("tr", {}, h("th", {}, "1% / 99%"), h("td", { class: "num" }, `${fmt(q["0.01"])} / ${fmt(q["0.99"])}`)),
  );
}

/** 3 significant digits (attribution weights span orders of magnitude). */
const sig = (x: number | null | undefined) => (x === null || x === undefined ? "–" : Number(x).toPrecision(3));

function edgeList(title: string, edges: NodeInfo["incoming"], actions: NodeActions): HTMLElement {
  const sorted = [...edges].sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
  // Attribution edges (transcoder circuits): weight = activation x weight product, both shown.
  const hasFactors = edges.some((e) => e.activation != null || e.weight_product != null);
  return h(
    "details",
    { open: true, class: "edges" },
    h("summary", {}, `${title} edges (${edges.length})`),
    h(
      "table",
      { class: "grid", "data-edges": title.toLowerCase() },
      hasFactors ? h("tr", {}, h("th", {}, "node"), h("th", {}, "weight"), h("th", {}, "kind"), h("th", { title: "activation" }, "act."), h("th", { title: "weight product" }, "× w. product")) : "",
      ...sorted.slice(0, EDGES_SHOWN).map((e) =>
        h(
          "tr",
          {},
          h("td", {}, h("a", { href: "javascript:void 0", onclick: () => actions.select(e.node) }, e.node)),
          h("td", { class: `num ${e.weight >= 0 ? "pos" : "neg"}` }, hasFactors ? sig(e.weight) : fmt(e.weight, 3)),
          h("td", {}, e.kind),
          hasFactors ? h("td", { class: "num factor", "data-factor": "activation", "data-value": String(e.activation), "data-weight": String(e.weight) }, sig(e.activation)) : "",
          hasFactors ? h("td", { class: "num factor", "data-factor": "weight_product", "data-value": String(e.weight_product) }, sig(e.weight_product)) : "",
        ),
      ),
    ),
    sorted.length > EDGES_SHOWN ? h("p", { class: "hint" }, `… and ${sorted.length - EDGES_SHOWN} weaker`) : "",
  );
}

/** Transcoder features: the tokens whose embeddings drive (top) or suppress (bottom) the feature most. */
function deEmbeddingBox(d: Schemas["DeEmbedding"]): HTMLElement {
  const column = (title: string, items: Schemas["TokenScore"][], side: string) =>
    h(
      "table",
      { class: "grid", "data-side": side },
      h("tr", {}, h("th", {}, title), h("th", {}, "score")),
      ...items.map((t) => h("tr", {}, h("td", { class: "code" }, visible(t.text)), h("td", { class: "num" }, fmt(t.score, 3)))),
    );
  return h(
    "details",
    { open: true, class: "de-embedding", id: "de-embedding" },
    h("summary", {}, "De-embedding (direct path from the token embeddings)"),
    h("div", { class: "pair" }, column("top tokens", d.top, "top"), column("bottom tokens", d.bottom, "bottom")),
  );
}

type SteerResult = Schemas["SteerResult"];
const STEER_POINTS = 9;
const STEER_PAIRS = 32;

/** The strengths swept: 0..max (add) or -max..max (set), or null for the server's default (the node's mean
 * on its class towards and past its mean on the other class). */
export function steerStrengths(mode: "add" | "set", max: number): number[] | null {
  if (!(max > 0)) return null;
  const lo = mode === "add" ? 0 : -max;
  return Array.from({ length: STEER_POINTS }, (_, i) => Number((lo + ((max - lo) * i) / (STEER_POINTS - 1)).toFixed(4)));
}

/** Bridged models: steer the dense model through this sparse node (POST /models/{id}/steer) and plot the
 * dense and sparse P(A) against the strength, beside the same sweep through a random control node. */
function steerBox(modelId: number, name: string, task: string): HTMLElement {
  const q = currentRoute().query;
  const mode = h("select", { id: "steer-mode" }, h("option", { value: "add" }, "add"), h("option", { value: "set" }, "set")) as HTMLSelectElement;
  mode.value = q.get("steer_mode") === "set" ? "set" : "add";
  const max = h("input", { type: "range", id: "steer-max", min: 0, max: 8, step: 0.5, value: q.get("steer_max") ?? "0" }) as HTMLInputElement;
  const maxLabel = h("span", { id: "steer-max-label" });
  const correct = h("input", { type: "checkbox", id: "steer-correct" }) as HTMLInputElement;
  correct.checked = q.get("steer_correct") === "1";
  const out = h("div", { id: "steer-out" });
  const plot = h("div", { class: "plot", id: "steer-plot" });
  const showMax = () => (maxLabel.textContent = Number(max.value) > 0 ? (mode.value === "add" ? `0 … ${max.value}` : `−${max.value} … ${max.value}`) : "auto (class means)");
  const remember = () => {
    showMax();
    updateQuery({ steer_mode: mode.value, steer_max: max.value === "0" ? null : max.value, steer_correct: correct.checked ? "1" : null });
  };
  mode.addEventListener("change", remember);
  max.addEventListener("input", remember);
  correct.addEventListener("change", remember);
  showMax();
  let seq = 0;
  const run = async () => {
    const mine = ++seq;
    out.replaceChildren(h("p", { class: "hint" }, "steering …"));
    const body = {
      task,
      node: name,
      mode: mode.value,
      strengths: steerStrengths(mode.value as "add" | "set", Number(max.value)),
      pairs: STEER_PAIRS,
      correct_only: correct.checked,
    };
    try {
      const r = await api<SteerResult>(`/models/${modelId}/steer`, { body });
      if (mine !== seq) return;
      out.replaceChildren(
        h("p", { class: "meta", id: "steer-meta" }, `${r.prompts} prompts expecting A = ${JSON.stringify(r.completion_a)} · decoded at ${r.location} · control ${r.control_node} · ${fmt(r.seconds, 2)} s`),
      );
      plotSteer(plot, r);
    } catch (e) {
      if (mine === seq) out.replaceChildren(errorBox(e));
    }
  };
  return h(
    "details",
    { class: "steer", id: "steer" , open: q.has("steer_mode") || undefined },
    h("summary", {}, "Steer the dense model"),
    h("div", { class: "toolbar" }, h("label", {}, "mode ", mode), h("label", {}, "strength ", max, " ", maxLabel), h("label", {}, correct, " only prompts the dense model gets right"), h("button", { id: "steer-run", onclick: () => void run() }, "Sweep")),
    out,
    plot,
  );
}

function plotSteer(plot: HTMLElement, r: SteerResult): void {
  const x = r.strengths;
  const a = JSON.stringify(r.completion_a);
  void newPlot(
    plot,
    [
      { x, y: r.curves.node.dense_p_a, mode: "lines+markers", name: `dense P(${a}) via ${r.node}`, line: { color: "#0072b2" } },
      { x, y: r.curves.node.sparse_p_a, mode: "lines+markers", name: `sparse P(${a}) via ${r.node}`, line: { color: "#009e73", dash: "dash" } },
      { x, y: r.curves.control.dense_p_a, mode: "lines+markers", name: `control: dense P(${a}) via ${r.control_node}`, line: { color: "#999", dash: "dot" } },
    ],
    {
      height: 300,
      margin: { t: 10, l: 50, r: 10, b: 40 },
      xaxis: { title: { text: `strength (${r.mode})` } },
      yaxis: { title: { text: `P(${a})` }, range: [0, 1] },
      legend: { orientation: "h", y: -0.3, yanchor: "top" },
      hovermode: "x unified",
    },
    { displaylogo: false, responsive: true },
  );
}

function examplesBox(examples: Example[]): HTMLElement {
  const box = h("section", { class: "examples", id: "node-examples" }, h("h4", {}, "Examples by activation percentile"));
  if (examples.length === 0) {
    box.append(h("p", { class: "hint" }, "No examples stored for this node."));
    return box;
  }
  const scale = Math.max(1e-9, ...examples.flatMap((e) => e.values.map(Math.abs)));
  const bins = new Map<string, Example[]>();
  for (const e of examples) bins.set(e.bin, [...(bins.get(e.bin) ?? []), e]);
  for (const [bin, list] of bins) {
    box.append(h("div", { class: "bin" }, h("div", { class: "bin-name" }, binLabel(bin)), ...list.map((e) => heatmap(e, scale))));
  }
  return box;
}

export function binLabel(bin: string): string {
  const [side, pct] = bin.split("_");
  return `${side} ${pct}%`;
}

/** One example's tokens, each shaded by its activation (blue positive, red negative); the firing token boxed. */
export function heatmap(e: Example, scale: number): HTMLElement {
  return h(
    "div",
    { class: "heatmap", title: `activation ${fmt(e.activation)}` },
    ...e.tokens.map((t, i) => {
      const v = e.values[i] ?? 0;
      const a = Math.min(1, Math.abs(v) / scale);
      const bg = v >= 0 ? `rgba(0,114,178,${a.toFixed(3)})` : `rgba(213,94,0,${a.toFixed(3)})`;
      return h("span", { class: i === e.center ? "tok fire" : "tok", style: `background:${bg}`, title: fmt(v) }, visible(t));
    }),
    h("span", { class: "act" }, fmt(e.activation, 3)),
  );
}

function visible(token: string): string {
  return token.replace(/\n/g, "⏎").replace(/\t/g, "⇥").replace(/ /g, "\u00b7");
}
