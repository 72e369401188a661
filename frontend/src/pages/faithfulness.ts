// How far to trust a circuit: the faithfulness curve f(C) per ablation mode with its CPR / CMD scores
// (MIB), and each validation control judged pass/fail against its stated criterion.
import type { Circuit } from "../api/client";
import { newPlot } from "../plot";
import { fmt, h } from "../util";

type Point = { percent: number; nodes: number; m: number; f: number };
type Curve = { m_full: number; m_empty: number; points: Point[]; cpr: number; cmd: number };
type Check = { name: string; passed: boolean; value: number; criterion: string };

const MODE_COLOURS: Record<string, string> = { mean: "#0072b2", zero: "#e69f00", resample: "#009e73" };

function curves(c: Circuit): [string, Curve][] {
  const modes = (c.faithfulness as { modes?: Record<string, Curve> }).modes ?? {};
  return Object.entries(modes);
}

export function validationChecks(c: Circuit): Check[] {
  return ((c.validation as { checks?: Check[] }).checks ?? []) as Check[];
}

/** The faithfulness section of the circuit page; `plot()` draws its chart (call it after the graph). */
export function faithfulnessBox(c: Circuit): { box: HTMLElement; plot: () => Promise<void> } {
  const box = h("section", { class: "faithfulness", id: "faithfulness" }, h("h3", {}, "Faithfulness"));
  const entries = curves(c);
  const checks = validationChecks(c);
  if (entries.length === 0) box.append(h("p", { class: "hint" }, "This circuit has no faithfulness curve (it was pruned before they were computed)."));
  else {
    const meta = c.faithfulness as { metric?: string; pairs?: number };
    box.append(
      h("p", { class: "hint" }, `f(C) = (m(C) − m(∅)) / (m(full) − m(∅)), m = ${meta.metric ?? "mean logit difference"}, ${meta.pairs ?? "?"} pairs; circuits of the top x % of all ${c.unit ?? "nodes"} in the pruner's order. CPR: area under f (higher is better); CMD: area under |1 − f| (0 is best). Pruned with ${c.ablation} ablation.`),
      h(
        "table",
        { class: "grid", id: "faithfulness-scores" },
        h("tr", {}, h("th", {}, "ablation"), h("th", {}, "CPR"), h("th", {}, "CMD"), h("th", {}, "m(full)"), h("th", {}, "m(∅)")),
        ...entries.map(([mode, cv]) => h("tr", { "data-mode": mode }, h("td", {}, mode), h("td", { class: "num" }, fmt(cv.cpr, 3)), h("td", { class: "num" }, fmt(cv.cmd, 3)), h("td", { class: "num" }, fmt(cv.m_full, 3)), h("td", { class: "num" }, fmt(cv.m_empty, 3)))),
      ),
      h("div", { class: "plot", id: "faithfulness-plot" }),
    );
  }
  box.append(h("h4", {}, "Controls"));
  if (checks.length === 0) box.append(h("p", { class: "hint", id: "no-controls" }, "Not validated: prune with “validate” to run the controls (random circuit, shuffled labels, nonsense task, generalisation gap)."));
  else
    box.append(
      h(
        "table",
        { class: "grid", id: "controls" },
        h("tr", {}, h("th", {}, "control"), h("th", {}, "result"), h("th", {}, "value"), h("th", {}, "criterion")),
        ...checks.map((k) => h("tr", { "data-check": k.name, class: k.passed ? "pass" : "fail" }, h("td", {}, k.name.replace(/_/g, " ")), h("td", { class: k.passed ? "pass" : "fail" }, k.passed ? "pass" : "FAIL"), h("td", { class: "num" }, fmt(k.value, 3)), h("td", {}, k.criterion))),
      ),
    );
  const plot = async () => {
    const el = box.querySelector<HTMLElement>("#faithfulness-plot");
    if (!el) return;
    await newPlot(
      el,
      entries.map(([mode, cv]) => ({ x: cv.points.map((p) => p.percent), y: cv.points.map((p) => p.f), mode: "lines+markers", name: `${mode} (CPR ${fmt(cv.cpr, 2)})`, line: { color: MODE_COLOURS[mode] } })),
      { height: 260, margin: { t: 10, r: 10, b: 40, l: 50 }, xaxis: { type: "log", title: { text: `% of ${c.unit ?? "nodes"} kept` } }, yaxis: { title: { text: "faithfulness f" } }, shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 1, y1: 1, line: { dash: "dot", color: "#999" } }] },
      { displayModeBar: false, responsive: true },
    );
  };
  return { box, plot };
}
