// "Export graph": the circuit as a circuit-tracer / Neuronpedia graph JSON (GET /circuits/{id}/graph).
import { api } from "../api/client";
import { download, errorBox, h } from "../util";

export function graphExportButton(circuitId: number, root: HTMLElement): HTMLElement {
  const save = async () => {
    const graph = await api<unknown>(`/circuits/${circuitId}/graph`);
    download(`circuit-${circuitId}.graph.json`, new Blob([JSON.stringify(graph)], { type: "application/json" }));
  };
  return h("button", { id: "export-graph", title: "circuit-tracer / Neuronpedia graph JSON", onclick: () => void save().catch((e) => root.prepend(errorBox(e))) }, "Export graph");
}
