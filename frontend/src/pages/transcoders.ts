// Transcoder sweeps: a list (on the models page and on a model's page) and one sweep's sparsity-fidelity
// plots, per MLP layer: L0 (log) against the model's CE with that MLP replaced, transcoder vs SAE, with the
// clean CE and the CE with the MLP zero- / mean-ablated as reference lines.
import { api, type Schemas } from "../api/client";
import { newPlot } from "../plot";
import { fmt, h } from "../util";

type Transcoder = Schemas["TranscoderRead"];
type TranscoderSummary = Schemas["TranscoderSummary"];

const LINES: Record<string, { name: string; color: string; dash?: string }> = {
  transcoder: { name: "transcoder", color: "#0072b2" },
  sae: { name: "SAE", color: "#d55e00", dash: "dash" },
};

export async function transcodersBox(modelId?: number): Promise<HTMLElement> {
  const box = h("section", { id: "transcoders" }, h("h2", {}, "Transcoders"));
  const list = await api<Schemas["TranscoderList"]>(`/transcoders?limit=200${modelId ? `&model_id=${modelId}` : ""}`);
  box.append(list.items.length === 0 ? h("p", {}, "No transcoder sweeps yet (run a transcoder job).") : transcoderTable(list.items));
  return box;
}

function transcoderTable(items: TranscoderSummary[]): HTMLElement {
  return h(
    "table",
    { class: "grid", id: "transcoders-table" },
    h("thead", {}, h("tr", {}, ...["id", "model", "width", "L1 sweep", "clean CE", "transcoder ≤ SAE at matched L0", "created"].map((c) => h("th", {}, c)))),
    h(
      "tbody",
      {},
      ...items.map((t) =>
        h(
          "tr",
          {},
          h("td", {}, h("a", { href: `#/transcoders/${t.id}` }, `${t.id}`)),
          h("td", {}, h("a", { href: `#/models/${t.model_id}` }, t.model_name)),
          h("td", { class: "num" }, `${t.width}`),
          h("td", {}, t.l1.join(", ")),
          h("td", { class: "num" }, fmt(t.clean_ce)),
          h("td", { class: "num" }, `${t.transcoder_better_settings} of ${t.settings}`),
          h("td", {}, new Date(t.created_at).toLocaleString()),
        ),
      ),
    ),
  );
}

interface LayerReference {
  layer: number;
  zero_ablated_ce: number;
  mean_ablated_ce: number;
}

export async function transcoderPage(root: HTMLElement, id: number): Promise<void> {
  const t = await api<Transcoder>(`/transcoders/${id}`);
  root.append(
    h("h1", {}, `Transcoders ${t.id} of `, h("a", { href: `#/models/${t.model_id}` }, t.model_name)),
    h(
      "p",
      { class: "meta", id: "transcoder-meta" },
      `${t.width} latents per layer · L1 ${t.l1.join(", ")} (features and circuits at ${t.selected_l1}) · clean CE ${fmt(t.clean_ce)} · transcoder CE ≤ SAE CE at matched L0 in ${t.transcoder_better_settings} of ${t.settings} settings`,
    ),
  );
  const circuits = t.circuits.length
    ? h("p", {}, "Circuits of the features: ", ...t.circuits.flatMap((c, i) => [i ? ", " : "", h("a", { href: `#/circuits/${c}` }, `circuit ${c}`)]))
    : h("p", { class: "hint" }, "No circuits built from these features.");
  const plots = h("div", { class: "plots", id: "transcoder-plots" });
  root.append(h("h2", {}, "Sparsity–fidelity per layer"), plots, h("h2", {}, "Circuits"), circuits);
  const layers = (t.reference.layers ?? []) as LayerReference[];
  for (const layer of Object.keys(t.curves).sort((a, b) => Number(a) - Number(b))) {
    const div = h("div", { class: "plot", "data-layer": layer });
    plots.append(div);
    const ref = layers.find((r) => String(r.layer) === layer);
    void plotLayer(div, Number(layer), t.curves[layer], t.clean_ce, ref);
  }
}

function plotLayer(div: HTMLElement, layer: number, curves: Transcoder["curves"][string], clean: number, ref: LayerReference | undefined): Promise<void> {
  const points = Object.values(curves).flat();
  const l0s = points.map((p) => p.l0).filter((x) => x > 0);
  const x0 = Math.min(...l0s, 1) / 1.5;
  const x1 = Math.max(...l0s, 1) * 1.5;
  const refLine = (y: number, name: string, dash: string) => ({ x: [x0, x1], y: [y, y], mode: "lines", name, line: { color: "#777", dash, width: 1 }, hovertemplate: `${name}: %{y:.4f}<extra></extra>` });
  const data: unknown[] = Object.entries(curves).map(([kind, line]) => ({
    x: line.map((p) => Math.max(p.l0, x0)),
    y: line.map((p) => p.ce),
    text: line.map((p) => `L1 ${p.l1}`),
    mode: "lines+markers",
    name: LINES[kind]?.name ?? kind,
    meta: kind,
    line: { color: LINES[kind]?.color ?? "#000", dash: LINES[kind]?.dash },
    hovertemplate: `${LINES[kind]?.name ?? kind}: L0 %{x:.2f}, CE %{y:.4f} (%{text})<extra></extra>`,
  }));
  data.push(refLine(clean, "clean CE", "dot"));
  if (ref) {
    data.push(refLine(ref.mean_ablated_ce, "MLP mean-ablated", "dashdot"));
    data.push(refLine(ref.zero_ablated_ce, "MLP zero-ablated", "longdash"));
  }
  return newPlot(
    div,
    data,
    {
      title: { text: `layer ${layer} MLP` },
      height: 360,
      margin: { t: 30, l: 55, r: 10, b: 40 },
      xaxis: { type: "log", title: { text: "L0 (active latents per token)" } },
      yaxis: { title: { text: "CE with the MLP replaced" } },
      legend: { orientation: "h", y: -0.3, yanchor: "top" },
    },
    { displaylogo: false, responsive: true },
  );
}
