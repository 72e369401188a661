// Playground: type code, see the per-token activations of circuit nodes (the selected node first, then the
// circuit's highest-scoring nodes), each node one heatmap row; and the model's next-token guesses.
import { api, type Schemas } from "../api/client";
import { errorBox, fmt, h } from "../util";
import { heatmap } from "./node";

const MAX_NODES = 64;

export function playgroundBox(modelId: number, nodes: () => string[], prompt: string, onPrompt: (p: string) => void): HTMLElement {
  const text = h("textarea", { id: "playground-prompt", rows: 3, spellcheck: false }) as HTMLTextAreaElement;
  text.value = prompt;
  const out = h("div", { id: "playground-out" });
  const run = async () => {
    onPrompt(text.value);
    out.replaceChildren(h("p", { class: "hint" }, "running …"));
    try {
      const body = { prompt: text.value, nodes: nodes().slice(0, MAX_NODES) };
      const res = await api<Schemas["PlaygroundResult"]>(`/models/${modelId}/playground`, { body });
      const tokens = res.tokens.map((t) => t.text);
      const all = Object.values(res.activations).flat();
      const scale = Math.max(1e-9, ...all.map(Math.abs));
      const rows = Object.entries(res.activations).map(([node, values]) =>
        h(
          "tr",
          { "data-node": node },
          h("td", { class: "node-name" }, node),
          h("td", {}, heatmap({ bin: "", rank: 0, activation: Math.max(...values.map(Math.abs)), center: -1, tokens, token_ids: [], values, document: null, offset: null, text: null }, scale)),
        ),
      );
      const next = res.top_next.map((t, i) => `${JSON.stringify(t.text)} ${fmt(res.top_next_probs[i], 3)}`).join(", ");
      out.replaceChildren(
        res.truncated ? h("p", { class: "hint" }, "prompt truncated to the model's context") : "",
        h("p", {}, h("b", {}, "next token: "), next),
        h("table", { class: "grid playground" }, ...rows),
      );
    } catch (e) {
      out.replaceChildren(errorBox(e));
    }
  };
  return h(
    "section",
    { class: "panel playground-box" },
    h("h3", {}, "Playground"),
    h("p", { class: "hint" }, `Per-token activations of up to ${MAX_NODES} circuit nodes (selected node first, then by mask score).`),
    text,
    h("button", { id: "playground-run", onclick: () => void run() }, "Run"),
    out,
  );
}
