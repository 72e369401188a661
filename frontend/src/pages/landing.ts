// The landing page (#/): what the models are, the task table (full-model loss, circuit size sparse vs
// dense), the paper's headline figure redrawn from our circuits, the quote circuit, how this differs from
// the paper, and how to train your own. Everything comes from GET /overview (+ the two models' configs).
import { api, type Model, type Schemas } from "../api/client";
import { newPlot } from "../plot";
import { demoBadge, fmt, h } from "../util";

type Overview = Schemas["Overview"];
type TaskCircuit = Schemas["TaskCircuit"];
const QUOTE_TASK = "single_double_quote";
const SPARSE_COLOUR = "#0072b2";
const DENSE_COLOUR = "#d55e00";

/** "2 layers × d_model 128, 1/16 of each weight matrix nonzero" from a model's run configuration. */
export function describeModel(config: Record<string, unknown>): string {
  const model = (config.model ?? {}) as { n_layer?: number; d_model?: number };
  const train = (config.train ?? {}) as { dense?: boolean; weight_density?: number };
  const shape = `${model.n_layer ?? "?"} layers × d_model ${model.d_model ?? "?"}`;
  if (train.dense) return `${shape}, every weight used (dense)`;
  if (train.weight_density === undefined) return shape;
  const d = train.weight_density;
  const fraction = Number.isInteger(1 / d) ? `1/${1 / d}` : `${(100 * d).toFixed(1)} %`;
  return `${shape}, ${fraction} of each weight matrix nonzero`;
}

/** The headline figure's lines: per model, (size, target) for the targets some task reaches. */
export function headlineTraces(headline: Overview["headline"]): { name: string; x: number[]; y: number[]; n: number[] }[] {
  return (["sparse", "dense"] as const).map((kind) => {
    const pts = headline.targets
      .map((t, i) => ({ x: headline[kind][i], y: t, n: headline.tasks[i] }))
      .filter((p): p is { x: number; y: number; n: number } => p.x !== null && p.x !== undefined);
    return { name: kind, x: pts.map((p) => p.x), y: pts.map((p) => p.y), n: pts.map((p) => p.n) };
  });
}

export async function landingPage(root: HTMLElement): Promise<void> {
  const ov = await api<Overview>("/overview");
  root.append(h("h1", {}, "Sparse Circuit Explorer ", ov.demo ? demoBadge() : null));
  if (ov.models.length === 0) {
    root.append(
      h("p", { class: "note", id: "no-models" }, "No models here yet: there is nothing to show until a model is trained, profiled and pruned."),
      trainYourOwn(),
    );
    return;
  }
  const configs = await Promise.all(ov.models.map((m) => api<Model>(`/models/${m.id}`).catch(() => null)));
  root.append(aboutModels(ov, configs), quoteLink(ov), taskTable(ov));
  const plot = h("div", { class: "plot headline-plot", id: "headline-plot" });
  root.append(h("section", {}, h("h2", {}, "Circuit size vs task loss"), headlineText(ov), plot));
  if (ov.headline.tasks.some((n) => n > 0)) drawHeadline(plot, ov.headline);
  root.append(h("div", { class: "boxes" }, differsBox(), trainYourOwn()));
}

function aboutModels(ov: Overview, configs: (Model | null)[]): HTMLElement {
  const items = ov.models.map((m, i) =>
    h(
      "li",
      {},
      h("a", { href: `#/models/${m.id}` }, m.name),
      m.demo ? demoBadge() : null,
      ` — ${m.kind}, ${configs[i] ? describeModel(configs[i]!.config) : "shape unknown"}, ${m.n_params.toLocaleString()} parameters, validation loss ${fmt(m.val_loss, 3)}`,
    ),
  );
  return h(
    "section",
    { id: "about-models" },
    h(
      "p",
      {},
      "Small GPTs trained on Python code. The sparse model keeps only a small fraction of each weight matrix nonzero " +
        "(as in Gao et al., \u201cWeight-sparse transformers have interpretable circuits\u201d); its dense twin has the same shape " +
        "with every weight. For each task \u2014 a two-way next-token choice, such as closing a string with \" or ' \u2014 pruning " +
        "finds the smallest set of nodes (neurons, attention channels, residual channels) that still does the task, with every " +
        "other node mean-ablated. Sparse models should need far smaller circuits.",
    ),
    h("ul", {}, ...items),
  );
}

function quoteLink(ov: Overview): HTMLElement {
  const quote = ov.tasks.find((t) => t.task === QUOTE_TASK)?.sparse;
  if (!quote) return h("p", { class: "hint" }, `No ${QUOTE_TASK} circuit of the sparse model yet (prune it on the `, h("a", { href: "#/jobs" }, "Jobs"), " page).");
  return h(
    "p",
    { class: "cta" },
    h("a", { href: `#/circuits/${quote.circuit_id}`, id: "quote-link", class: "button" }, "Open the quote circuit"),
    ` ${quote.nodes} nodes, ${quote.edges} edges: how the sparse model closes a string with the quote it opened.`,
  );
}

function mark(c: TaskCircuit | null | undefined): HTMLElement | string {
  if (!c) return "–";
  const ok = c.meets_target;
  const sign = ok === null || ok === undefined ? "" : ok ? " \u2713" : " \u2717";
  return h("span", { class: ok ? "verdict ok" : ok === false ? "verdict miss" : "", title: `target ${fmt(c.target_loss, 3)}` }, `${fmt(c.circuit_loss, 3)}${sign}`);
}

function taskTable(ov: Overview): HTMLElement {
  const num = (x: string) => h("td", { class: "num" }, x);
  const link = (c: TaskCircuit | null | undefined, label: string) => (c ? h("a", { href: `#/circuits/${c.circuit_id}` }, label) : null);
  const rows = ov.tasks.map((t) =>
    h(
      "tr",
      { "data-task": t.task },
      h("td", {}, t.task),
      num(fmt(t.sparse?.full_loss, 3)),
      num(fmt(t.dense?.full_loss, 3)),
      num(t.sparse ? `${t.sparse.nodes} / ${t.sparse.edges}` : "–"),
      num(t.dense ? `${t.dense.nodes} / ${t.dense.edges}` : "–"),
      h("td", { class: "num" }, mark(t.sparse)),
      h("td", { class: "num" }, mark(t.dense)),
      h("td", {}, link(t.sparse, "sparse"), t.sparse && t.dense ? " · " : "", link(t.dense, "dense")),
    ),
  );
  const r = ov.edge_ratio;
  return h(
    "section",
    {},
    h("h2", {}, "Tasks"),
    ov.tasks.length === 0
      ? h("p", {}, "No circuits yet.")
      : h(
          "table",
          { class: "grid", id: "overview-tasks" },
          h(
            "thead",
            {},
            h("tr", {}, h("th", { rowspan: 2 }, "task"), h("th", { colspan: 2 }, "full-model loss"), h("th", { colspan: 2 }, "circuit nodes / edges"), h("th", { colspan: 2 }, "circuit test loss (\u2713 meets target)"), h("th", { rowspan: 2 }, "circuits")),
            h("tr", {}, ...["sparse", "dense", "sparse", "dense", "sparse", "dense"].map((c) => h("th", {}, c))),
          ),
          h("tbody", {}, ...rows),
        ),
    h(
      "p",
      { class: "meta", id: "edge-ratio" },
      r.geomean === null || r.geomean === undefined
        ? `No task yet where both circuits meet their target, so no edge ratio (the paper: about ${r.target}\u00d7).`
        : `Over the ${r.tasks} task${r.tasks === 1 ? "" : "s"} where both circuits meet their target, the dense circuit has ${fmt(r.geomean, 1)}\u00d7 the edges of the sparse one (geometric mean; the paper reports about ${r.target}\u00d7).`,
    ),
  );
}

function headlineText(ov: Overview): HTMLElement {
  const unit = ov.headline.size === "edges" ? "edges" : "kept nodes (these circuits carry no edge counts per curve point)";
  return h(
    "p",
    { class: "meta" },
    `The paper's headline figure from our circuits: for each task-loss target, the smallest circuit (in ${unit}) on each circuit's ` +
      "loss-vs-size curve that reaches it, as a geometric mean over the tasks where both models reach it. Left is better.",
  );
}

function drawHeadline(el: HTMLElement, headline: Overview["headline"]): void {
  const unit = headline.size === "edges" ? "edges" : "nodes";
  const traces = headlineTraces(headline).map((t) => ({
    x: t.x,
    y: t.y,
    text: t.n.map((n) => `${n} task${n === 1 ? "" : "s"}`),
    name: t.name,
    mode: "lines+markers",
    hovertemplate: `%{x:.1f} ${unit} for loss ≤ %{y} (%{text})<extra>${t.name}</extra>`,
    line: { color: t.name === "sparse" ? SPARSE_COLOUR : DENSE_COLOUR },
  }));
  void newPlot(
    el,
    traces,
    {
      height: 340,
      margin: { t: 20, l: 60, r: 10, b: 50 },
      xaxis: { type: "log", title: { text: `circuit size (${unit}, geometric mean over tasks)` } },
      yaxis: { title: { text: "task loss (test)" } },
      legend: { orientation: "h" },
    },
    { displaylogo: false, responsive: true },
  );
}

function differsBox(): HTMLElement {
  return h(
    "section",
    { class: "panel", id: "differs" },
    h("h2", {}, "How this differs from the paper"),
    h(
      "ul",
      {},
      h("li", {}, "Scale: 2 layers \u00d7 d_model 128 here, against the paper's 8 \u00d7 2048 \u2014 trainable on a laptop CPU."),
      h("li", {}, "Corpus: the Python standard library of the running interpreter (about 20 M training tokens), not the paper's Python corpus."),
      h("li", {}, "Tasks: 17 of the 20 task definitions are ours, built from real stdlib code with one edit; 3 follow the paper."),
      h("li", {}, "Method as in the paper: learned node masks, bisection to the target loss, mean ablation by default (zero and resample ablation are options)."),
    ),
  );
}

function trainYourOwn(): HTMLElement {
  const step = (what: string, form: string, cli: string | null) =>
    h("li", {}, h("a", { href: "#/jobs" }, what), ` \u2014 the ${form} form on the Jobs page`, cli ? "; CLI: " : " (browser or API only)", cli ? h("code", {}, cli) : null);
  return h(
    "section",
    { class: "panel", id: "train-your-own" },
    h("h2", {}, "Train your own"),
    h(
      "ol",
      {},
      step("Train", "train", "circuits train --preset small --out data/models/small"),
      step("Profile", "profile", null),
      step("Prune", "prune", "circuits prune --model data/models/small --task single_double_quote --out quote.json"),
    ),
    h("p", { class: "hint" }, "Models trained on the command line join the app with ", h("code", {}, "circuits models add DIR"), "."),
  );
}
