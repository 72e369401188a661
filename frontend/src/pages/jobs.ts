// Jobs: forms for train, profile and prune (the API's 422 messages shown next to their fields), the job
// list and live progress over server-sent events.
import { API, api, ApiError, type Job, type Schemas } from "../api/client";
import { currentRoute } from "../router";
import { errorBox, h } from "../util";
import { jobRow } from "./models";

type Kind = "train" | "profile" | "prune";

interface Field {
  name: string;
  type: "text" | "number" | "select" | "checkbox";
  label: string;
  options?: string[];
  value?: string;
  step?: string;
  required?: boolean;
}

/** Attach the API's error to fields: by `errors[].loc`, else by the first field named in `detail`. */
export function fieldErrors(err: ApiError, fields: string[]): { byField: Record<string, string>; rest: string[] } {
  const byField: Record<string, string> = {};
  const rest: string[] = [];
  if (err.errors.length) {
    for (const e of err.errors) {
      const f = [...e.loc].reverse().find((p) => fields.includes(String(p)));
      if (f !== undefined) byField[String(f)] = byField[String(f)] ? `${byField[String(f)]}; ${e.msg}` : e.msg;
      else rest.push(`${e.loc.join(".")}: ${e.msg}`);
    }
    return { byField, rest };
  }
  let best: string | null = null;
  let at = Infinity;
  for (const f of fields) {
    const m = new RegExp(`(^|[^A-Za-z0-9_])${f}([^A-Za-z0-9_]|$)`).exec(err.detail);
    if (m && m.index < at) {
      at = m.index;
      best = f;
    }
  }
  if (best) byField[best] = err.detail;
  else rest.push(err.detail);
  return { byField, rest };
}

export async function jobsPage(root: HTMLElement): Promise<void> {
  const q = currentRoute().query;
  const [models, tasks] = await Promise.all([
    api<Schemas["ModelList"]>("/models?limit=200").catch(() => null),
    api<Schemas["TaskList"]>("/tasks").catch(() => null),
  ]);
  const modelIds = (models?.items ?? []).filter((m) => m.status === "ready").map((m) => String(m.id));
  const modelOpt = (): Field => ({ name: "model_id", type: "select", label: "model", options: modelIds, value: q.get("model_id") ?? modelIds[modelIds.length - 1], required: true });
  const forms: Record<Kind, Field[]> = {
    train: [
      { name: "name", type: "text", label: "name" },
      { name: "preset", type: "select", label: "preset", options: ["test", "small"], value: "test" },
      { name: "dense", type: "checkbox", label: "dense baseline" },
      { name: "steps", type: "number", label: "steps" },
    ],
    profile: [
      modelOpt(),
      { name: "tokens", type: "number", label: "tokens", value: "65536" },
      { name: "examples_per_bin", type: "number", label: "examples per bin", value: "5" },
      { name: "context", type: "number", label: "context", value: "12" },
    ],
    prune: [
      modelOpt(),
      { name: "task", type: "select", label: "task", options: (tasks?.items ?? []).map((t) => t.name), value: "single_double_quote", required: true },
      { name: "target_loss", type: "number", label: "target loss", value: "0.15", step: "any" },
      { name: "runs", type: "number", label: "runs" },
      { name: "steps", type: "number", label: "mask steps" },
      { name: "batch_pairs", type: "number", label: "batch pairs" },
      { name: "eval_pairs", type: "number", label: "eval pairs" },
      { name: "curve_points", type: "number", label: "curve points" },
      { name: "curve_pairs", type: "number", label: "curve pairs" },
      { name: "validate_circuit", type: "checkbox", label: "run controls" },
    ],
  };
  const list = h("tbody", { id: "jobs-body" });
  root.append(
    h("h1", {}, "Jobs"),
    h("div", { class: "forms" }, ...(Object.keys(forms) as Kind[]).map((k) => jobForm(k, forms[k], (job) => watch(job, list, true)))),
    h("h2", {}, "All jobs"),
    h("table", { class: "grid jobs", id: "jobs-table" }, h("thead", {}, h("tr", {}, ...["id", "kind", "status", "progress", "message", "result"].map((c) => h("th", {}, c)))), list),
  );
  try {
    const jobs = await api<Schemas["JobList"]>("/jobs?limit=100");
    for (const j of jobs.items) watch(j, list, false);
  } catch (e) {
    root.append(errorBox(e));
  }
}

function jobForm(kind: Kind, fields: Field[], submitted: (job: Job) => void): HTMLElement {
  const inputs: Record<string, HTMLInputElement | HTMLSelectElement> = {};
  const errors: Record<string, HTMLElement> = {};
  const formError = h("div", { class: "form-error", role: "alert" });
  const form = h("form", { class: "job-form", id: `form-${kind}`, novalidate: true }, h("h3", {}, kind));
  for (const f of fields) {
    let input: HTMLInputElement | HTMLSelectElement;
    if (f.type === "select") {
      input = h("select", { name: f.name }, ...(f.options ?? []).map((o) => h("option", { value: o, selected: o === f.value }, o)));
    } else {
      input = h("input", { name: f.name, type: f.type, step: f.step ?? (f.type === "number" ? "1" : undefined) }) as HTMLInputElement;
      if (f.value !== undefined) input.value = f.value;
    }
    inputs[f.name] = input;
    errors[f.name] = h("span", { class: "field-error", "data-field": f.name });
    form.append(h("label", { class: "field" }, h("span", {}, f.label), input, errors[f.name]));
  }
  const button = h("button", { type: "submit" }, `Submit ${kind}`);
  form.append(button, formError);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    for (const e of Object.values(errors)) e.textContent = "";
    formError.replaceChildren();
    const params: Record<string, unknown> = {};
    for (const f of fields) {
      const input = inputs[f.name];
      if (f.type === "checkbox") params[f.name] = (input as HTMLInputElement).checked;
      else if (input.value === "") continue;
      else if (f.type === "number" || f.name === "model_id") params[f.name] = Number(input.value);
      else params[f.name] = input.value;
    }
    button.disabled = true;
    try {
      submitted(await api<Job>("/jobs", { body: { kind, params } }));
    } catch (e) {
      if (e instanceof ApiError && e.status === 422) {
        const { byField, rest } = fieldErrors(e, fields.map((f) => f.name));
        for (const [f, msg] of Object.entries(byField)) errors[f].textContent = msg;
        if (rest.length) formError.append(errorBox(rest.join("; ")));
      } else formError.append(errorBox(e));
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

/** Show a job in the list and follow its progress over SSE until it ends. */
function watch(job: Job, list: HTMLElement, prepend: boolean): void {
  let row = jobRow(job);
  if (prepend) list.prepend(row);
  else list.append(row);
  if (TERMINAL.has(job.status)) return;
  const source = new EventSource(`${API}/jobs/${job.id}/events`);
  const update = (ev: MessageEvent) => {
    try {
      const next = jobRow(JSON.parse(ev.data) as Job);
      row.replaceWith(next);
      row = next;
    } catch {
      /* keep-alive or non-JSON data */
    }
  };
  source.addEventListener("progress", update as EventListener);
  source.addEventListener("end", (ev) => {
    update(ev as MessageEvent);
    source.close();
  });
  source.onerror = () => {
    // The stream ended or the server went away: fetch the final state once.
    source.close();
    api<Job>(`/jobs/${job.id}`)
      .then((j) => {
        const next = jobRow(j);
        row.replaceWith(next);
        row = next;
      })
      .catch(() => undefined);
  };
}
