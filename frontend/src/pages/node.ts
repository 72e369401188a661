// The node panel: statistics, incoming/outgoing edges and percentile-binned examples as token heatmaps.
import { api, nodePath, type Example, type NodeInfo, type Schemas } from "../api/client";
import { errorBox, fmt, h } from "../util";

export interface NodeActions {
  isOff: () => boolean;
  toggle: () => void;
  select: (name: string) => void;
}

const EDGES_SHOWN = 12;

export async function nodePanel(panel: HTMLElement, modelId: number, circuitId: number, name: string, actions: NodeActions, task?: string): Promise<void> {
  const info = await api<NodeInfo>(`/models/${modelId}/nodes/${nodePath(name)}?circuit_id=${circuitId}`);
  const toggle = h("button", { id: "toggle-node", "data-node": name, onclick: () => actions.toggle() }, actions.isOff() ? "Restore node" : "Ablate node");
  panel.replaceChildren(
    h("h3", { id: "node-title" }, info.name),
    h("p", { class: "meta" }, `site ${info.site} · index ${info.index} · in ${info.circuits.length} circuit(s) `, toggle),
    statsTable(info),
    edgeList("Incoming", info.incoming, actions),
    edgeList("Outgoing", info.outgoing, actions),
    task ? taskView(modelId, name, task) : "",
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

function edgeList(title: string, edges: NodeInfo["incoming"], actions: NodeActions): HTMLElement {
  const sorted = [...edges].sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
  return h(
    "details",
    { open: true, class: "edges" },
    h("summary", {}, `${title} edges (${edges.length})`),
    h(
      "table",
      { class: "grid" },
      ...sorted.slice(0, EDGES_SHOWN).map((e) =>
        h(
          "tr",
          {},
          h("td", {}, h("a", { href: "javascript:void 0", onclick: () => actions.select(e.node) }, e.node)),
          h("td", { class: `num ${e.weight >= 0 ? "pos" : "neg"}` }, fmt(e.weight, 3)),
          h("td", {}, e.kind),
        ),
      ),
    ),
    sorted.length > EDGES_SHOWN ? h("p", { class: "hint" }, `… and ${sorted.length - EDGES_SHOWN} weaker`) : "",
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
