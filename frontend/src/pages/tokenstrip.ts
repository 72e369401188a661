// The token strip under the circuit graph: a task prompt pair (A and B side by side), the tokens along the
// top of each pane and under them every circuit node's value at every position as a heatmap row (the
// circuit running alone, as POST /circuits/{id}/trace computes it), then each of the circuit's heads'
// attention from the last position, and the logit difference the circuit writes.
import type { Schemas } from "../api/client";
import { fmt, h } from "../util";

export type Trace = Schemas["TraceResult"];
export type PromptTrace = Schemas["PromptTrace"];

export interface StripRow {
  node: string;
  label: string; // the node's index and automatic label
}

export interface StripEvents {
  /** The pointer is over a token (side 0 = A, 1 = B), or left the strip (null). */
  position: (side: number | null, pos: number) => void;
  /** The pointer is over a node's row (null: left it). */
  node: (name: string | null) => void;
}

/** Colour of a value relative to its row's largest |value|: blue positive, vermillion negative. */
export function heat(v: number, max: number): string {
  const a = max > 0 ? Math.min(Math.abs(v) / max, 1) : 0;
  return v >= 0 ? `rgba(0,114,178,${a.toFixed(3)})` : `rgba(213,94,0,${a.toFixed(3)})`;
}

export function tokenStrip(trace: Trace, rows: StripRow[], events: StripEvents): HTMLElement {
  // One scale per node over both prompts, so A and B are comparable.
  const max = new Map(rows.map((r) => [r.node, Math.max(0, ...trace.traces.flatMap((t) => (t.activations[r.node] ?? []).map(Math.abs)))]));
  const panes = trace.traces.map((t, side) => pane(t, side, rows, max, trace, events));
  return h("div", { class: "token-strip", id: "token-strip" }, ...panes);
}

function pane(t: PromptTrace, side: number, rows: StripRow[], max: Map<string, number>, trace: Trace, events: StripEvents): HTMLElement {
  const letter = "AB"[side];
  const expects = side === 0 ? trace.completion_a : trace.completion_b;
  const tokens = t.tokens.map((tk) => tk.text);
  const head = h("tr", {}, h("th", { class: "node-name" }, ""), ...tokens.map((tk, i) => h("th", { class: "tok", "data-pos": i }, JSON.stringify(tk).slice(1, -1))));
  const body = rows.map((r) =>
    h(
      "tr",
      { "data-node": r.node },
      h("td", { class: "node-name", title: r.node }, r.label),
      ...(t.activations[r.node] ?? []).map((v, i) => h("td", { class: "cell", "data-pos": i, "data-value": String(v), title: `${r.node} at ${JSON.stringify(tokens[i])}: ${fmt(v, 3)}`, style: `background:${heat(v, max.get(r.node) ?? 0)}` })),
    ),
  );
  const attn = t.heads.map((hd) =>
    h(
      "tr",
      { class: "head-row", "data-head": `${hd.layer}.${hd.head}` },
      h("td", { class: "node-name", title: hd.nodes.join(", ") }, `L${hd.layer} head ${hd.head} attn${hd.sink != null ? ` (sink ${fmt(hd.sink, 2)})` : ""}`),
      ...hd.pattern.map((p, i) => h("td", { class: "cell", "data-pos": i, "data-value": String(p), title: `attention to ${JSON.stringify(tokens[i])}: ${fmt(p, 3)}`, style: `background:rgba(0,0,0,${(0.8 * p).toFixed(3)})` })),
    ),
  );
  const table = h("table", { class: "strip", "data-side": letter }, head, ...attn, ...body);
  table.addEventListener("mouseover", (ev) => {
    const cell = (ev.target as HTMLElement).closest<HTMLElement>("[data-pos]");
    const row = (ev.target as HTMLElement).closest<HTMLElement>("tr[data-node]");
    if (cell) events.position(side, Number(cell.dataset.pos));
    events.node(row?.dataset.node ?? null);
  });
  table.addEventListener("mouseleave", () => {
    events.position(null, 0);
    events.node(null);
  });
  return h(
    "div",
    { class: "strip-pane", "data-side": letter },
    h(
      "p",
      { class: "strip-title" },
      h("b", {}, `${letter}: expects ${JSON.stringify(expects)}`),
      ` · circuit logit(A) − logit(B) `,
      h("span", { class: "logit-diff", "data-value": String(t.logit_diff_calibrated) }, fmt(t.logit_diff_calibrated, 3)),
      ` (calibrated; full model ${fmt(t.full_logit_diff, 3)})`,
      t.truncated ? " · truncated to the context" : "",
    ),
    h("div", { class: "strip-scroll" }, table),
  );
}
