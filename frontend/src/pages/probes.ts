// Adversarial probes of a circuit: run one (a `probe` job) and plot, against its knob, the accuracy of
// the full model and of the circuit, and a circuit node's activation on the A and B prompts.
import { api, type Circuit, type Job, type Schemas } from "../api/client";
import { newPlot } from "../plot";
import { errorBox, fmt, h } from "../util";

type Probes = Schemas["CircuitProbes"];
type ProbeResult = Schemas["ProbeResultRead"];
const TERMINAL = ["succeeded", "failed", "cancelled"];

export function probesBox(c: Circuit): { box: HTMLElement; load: () => Promise<void> } {
  const box = h("section", { class: "probes", id: "probes" }, h("h3", {}, "Adversarial probes"));
  const load = async () => {
    try {
      render(box, c, await api<Probes>(`/circuits/${c.id}/probes`), load);
    } catch (e) {
      box.append(errorBox(e));
    }
  };
  return { box, load };
}

function render(box: HTMLElement, c: Circuit, probes: Probes, reload: () => Promise<void>): void {
  box.replaceChildren(h("h3", {}, "Adversarial probes"));
  if (probes.available.length === 0) {
    box.append(h("p", { class: "hint" }, `No probe runs on ${c.task} yet (probes: quote_distance on single_double_quote, bracket_dilution on bracket_counting).`));
    return;
  }
  const byTau = [...c.nodes].sort((a, b) => b.tau - a.tau).map((n) => n.name);
  for (const spec of probes.available) {
    const node = h("select", { class: "probe-node", "data-probe": spec.name }, ...byTau.map((n) => h("option", { value: n }, n))) as HTMLSelectElement;
    const status = h("span", { class: "status" });
    const run = h("button", { class: "run-probe", "data-probe": spec.name }, `Run ${spec.name}`) as HTMLButtonElement;
    run.addEventListener("click", () => void submit(c, spec.name, node.value, status, run, reload));
    box.append(h("div", { class: "probe-spec" }, h("p", {}, h("b", {}, spec.name), `: ${spec.description} Knob: ${spec.knob} (“${spec.filler}” per step).`), h("label", {}, "node ", node), " ", run, " ", status));
  }
  for (const r of probes.results) box.append(resultView(r));
}

async function submit(c: Circuit, probe: string, node: string, status: HTMLElement, run: HTMLButtonElement, reload: () => Promise<void>): Promise<void> {
  run.disabled = true;
  try {
    let job = await api<Job>("/jobs", { body: { kind: "probe", params: { circuit_id: c.id, probe, node, pairs: 64 } } });
    while (!TERMINAL.includes(job.status)) {
      status.textContent = `${job.status} ${Math.round(100 * job.progress)} % ${job.message ?? ""}`;
      await new Promise((r) => setTimeout(r, 1000));
      job = await api<Job>(`/jobs/${job.id}`);
    }
    if (job.status !== "succeeded") throw new Error(`probe job ${job.status}: ${job.error ?? job.message ?? ""}`);
    await reload();
  } catch (e) {
    status.replaceChildren(errorBox(e));
    run.disabled = false;
  }
}

function resultView(r: ProbeResult): HTMLElement {
  const xs = r.points.map((p) => p.value);
  const acc = h("div", { class: "plot probe-accuracy" });
  const act = h("div", { class: "plot probe-activation" });
  const el = h(
    "div",
    { class: "probe-result", "data-job": r.job_id, "data-probe": r.probe },
    h("h4", {}, `${r.probe} · node ${r.node} · ${r.pairs} pairs · ${r.ablation} ablation`),
    h("div", { class: "probe-plots" }, acc, act),
    h(
      "table",
      { class: "grid" },
      h("tr", {}, h("th", {}, r.knob), h("th", {}, "full acc."), h("th", {}, "circuit acc."), h("th", {}, "node on A"), h("th", {}, "node on B")),
      ...r.points.map((p) => h("tr", { "data-value": String(p.value) }, h("td", { class: "num" }, String(p.value)), h("td", { class: "num" }, fmt(p.full_accuracy, 3)), h("td", { class: "num" }, fmt(p.circuit_accuracy, 3)), h("td", { class: "num" }, fmt(p.node_a, 3)), h("td", { class: "num" }, fmt(p.node_b, 3)))),
    ),
  );
  const layout = (y: string) => ({ height: 240, margin: { t: 10, r: 10, b: 40, l: 50 }, xaxis: { title: { text: r.knob } }, yaxis: { title: { text: y } } });
  const config = { displayModeBar: false, responsive: true };
  void newPlot(acc, [
    { x: xs, y: r.points.map((p) => p.full_accuracy), mode: "lines+markers", name: "full model", line: { color: "#0072b2" } },
    { x: xs, y: r.points.map((p) => p.circuit_accuracy), mode: "lines+markers", name: "circuit", line: { color: "#e69f00" } },
  ], layout("accuracy"), config);
  void newPlot(act, [
    { x: xs, y: r.points.map((p) => p.node_a), mode: "lines+markers", name: "A prompts", line: { color: "#009e73" } },
    { x: xs, y: r.points.map((p) => p.node_b), mode: "lines+markers", name: "B prompts", line: { color: "#d55e00" } },
  ], layout(`${r.node} at the last token`), config);
  return el;
}
