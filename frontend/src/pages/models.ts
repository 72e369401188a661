// Models list and one model's page: training curves (plotly), its circuits and its jobs.
import { api, type Job, type Model, type Schemas } from "../api/client";
import { demoBadge, errorBox, fmt, h } from "../util";
import { newPlot } from "../plot";
import { transcodersBox } from "./transcoders";

export async function modelsPage(root: HTMLElement): Promise<void> {
  root.append(h("h1", {}, "Models"));
  const list = await api<Schemas["ModelList"]>("/models?limit=200");
  if (list.items.length === 0) {
    root.append(h("p", {}, "No models yet. Train one on the ", h("a", { href: "#/jobs" }, "Jobs"), " page."));
    return;
  }
  const rows = list.items.map((m) =>
    h(
      "tr",
      {},
      h("td", {}, h("a", { href: `#/models/${m.id}` }, `${m.id}`)),
      h("td", {}, h("a", { href: `#/models/${m.id}` }, m.name), m.demo ? demoBadge() : null),
      h("td", {}, m.kind),
      h("td", {}, m.status),
      h("td", { class: "num" }, m.n_params.toLocaleString()),
      h("td", {}, m.profiled ? "yes" : "no"),
      h("td", {}, new Date(m.created_at).toLocaleString()),
    ),
  );
  root.append(
    h(
      "table",
      { class: "grid", id: "models-table" },
      h("thead", {}, h("tr", {}, ...["id", "name", "kind", "status", "params", "profiled", "created"].map((c) => h("th", {}, c)))),
      h("tbody", {}, ...rows),
    ),
  );
  root.append(await transcodersBox().catch((e) => errorBox(e)));
}

export async function modelPage(root: HTMLElement, id: number): Promise<void> {
  const model = await api<Model>(`/models/${id}`);
  root.append(
    h("h1", {}, `Model ${model.id}: ${model.name}`, model.demo ? demoBadge() : null),
    h(
      "p",
      { class: "meta" },
      `${model.kind}${model.bridged ? " (bridged: can steer its dense model from a circuit's node panel)" : ""} · ${model.status} · ${model.n_params.toLocaleString()} parameters · profiled: ${model.profiled ? "yes" : "no"} · `,
      h("a", { href: `#/jobs?model_id=${model.id}` }, "profile or prune it"),
    ),
  );
  const plots = h("div", { class: "plots" });
  const circuitsBox = h("section", {}, h("h2", {}, "Circuits"));
  const jobsBox = h("section", {}, h("h2", {}, "Jobs"));
  const transcoders = h("div", {});
  root.append(h("h2", {}, "Training"), plots, circuitsBox, transcoders, jobsBox);
  void transcodersBox(id).then((box) => transcoders.replaceWith(box), (e) => transcoders.replaceWith(errorBox(e)));

  const [metrics, circuits, jobs] = await Promise.allSettled([
    api<Schemas["ModelMetrics"]>(`/models/${id}/metrics`),
    api<Schemas["CircuitList"]>(`/circuits?model_id=${id}&limit=200`),
    api<Schemas["JobList"]>(`/jobs?limit=200`),
  ]);
  if (metrics.status === "fulfilled") trainingPlots(plots, metrics.value.points);
  else plots.append(errorBox(metrics.reason));

  if (circuits.status === "fulfilled") {
    const items = circuits.value.items;
    circuitsBox.append(
      items.length === 0
        ? h("p", {}, "No circuits yet.")
        : h(
            "table",
            { class: "grid", id: "circuits-table" },
            h("thead", {}, h("tr", {}, ...["id", "task", "target", "nodes", "edges", "full", "circuit", "ablated"].map((c) => h("th", {}, c)))),
            h(
              "tbody",
              {},
              ...items.map((c) =>
                h(
                  "tr",
                  {},
                  h("td", {}, h("a", { href: `#/circuits/${c.id}` }, `${c.id}`)),
                  h("td", {}, h("a", { href: `#/circuits/${c.id}` }, c.task)),
                  h("td", { class: "num" }, fmt(c.target_loss, 3)),
                  h("td", { class: "num" }, `${c.n_nodes}`),
                  h("td", { class: "num" }, `${c.n_edges}`),
                  h("td", { class: "num" }, fmt(c.losses.full)),
                  h("td", { class: "num" }, fmt(c.losses.circuit)),
                  h("td", { class: "num" }, fmt(c.losses.ablated)),
                ),
              ),
            ),
          ),
    );
  } else circuitsBox.append(errorBox(circuits.reason));

  if (jobs.status === "fulfilled") {
    const mine = jobs.value.items.filter((j) => j.params.model_id === id || j.result.model_id === id);
    jobsBox.append(mine.length === 0 ? h("p", {}, "No jobs.") : jobTable(mine));
  } else jobsBox.append(errorBox(jobs.reason));
}

function trainingPlots(box: HTMLElement, points: Schemas["ModelMetrics"]["points"]): void {
  if (points.length === 0) {
    box.append(h("p", {}, "No training records."));
    return;
  }
  const keys = Object.keys(points[0]).filter((k) => k !== "step" && typeof points[0][k] === "number");
  const xs = points.map((p) => p.step);
  for (const key of keys) {
    const div = h("div", { class: "plot", "data-metric": key });
    box.append(div);
    const ys = points.map((p) => p[key]);
    void newPlot(
      div,
      [{ x: xs, y: ys, mode: "lines", name: key, line: { color: "#0072b2" } }],
      { title: { text: key }, margin: { t: 30, l: 50, r: 10, b: 35 }, height: 220, xaxis: { title: { text: "step" } } },
      { displaylogo: false, responsive: true },
    );
  }
}

export function jobTable(jobs: Job[]): HTMLElement {
  return h(
    "table",
    { class: "grid jobs" },
    h("thead", {}, h("tr", {}, ...["id", "kind", "status", "progress", "message", "result"].map((c) => h("th", {}, c)))),
    h("tbody", {}, ...jobs.map(jobRow)),
  );
}

export function jobRow(j: Job): HTMLElement {
  const result = j.result as { model_id?: number; circuit_id?: number };
  const link = result.circuit_id
    ? h("a", { href: `#/circuits/${result.circuit_id}` }, `circuit ${result.circuit_id}`)
    : result.model_id
      ? h("a", { href: `#/models/${result.model_id}` }, `model ${result.model_id}`)
      : "";
  const cancel =
    j.status === "queued" || j.status === "running"
      ? h("button", {
          class: "cancel",
          onclick: (ev: Event) => {
            const btn = ev.target as HTMLButtonElement;
            btn.disabled = true;
            api<Job>(`/jobs/${j.id}/cancel`, { method: "POST" })
              .then(() => (btn.textContent = "cancelling …"))
              .catch((e) => btn.replaceWith(errorBox(e)));
          },
        }, "cancel")
      : "";
  return h(
    "tr",
    { "data-job": j.id, "data-status": j.status, "data-progress": j.progress },
    h("td", {}, j.id.slice(0, 8)),
    h("td", {}, j.kind),
    h("td", { class: `status ${j.status}` }, j.status),
    h("td", {}, h("progress", { max: 1, value: j.progress }), ` ${Math.round(j.progress * 100)}%`),
    h("td", { class: "msg" }, j.error ?? j.message ?? ""),
    h("td", {}, link, cancel),
  );
}
