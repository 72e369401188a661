// Jobs: a form per job kind, generated from the API's OpenAPI schema (jobform.ts), with the API's 422
// messages shown next to their fields; the job list and live progress over server-sent events.
import { API, api, ApiError, type Job, type Schemas } from "../api/client";
import { currentRoute } from "../router";
import { errorBox, h } from "../util";
import { buildParams, fieldValue, type FormField, type KindForm, kindForms, type OpenApi } from "./jobform";
import { jobRow } from "./models";

/** Attach the API's error to fields: by `errors[].loc` (the path after `params`, else the innermost
 * part that names a field), else by the first field named in `detail`. */
export function fieldErrors(err: ApiError, fields: string[]): { byField: Record<string, string>; rest: string[] } {
  const byField: Record<string, string> = {};
  const rest: string[] = [];
  const add = (f: string, msg: string) => (byField[f] = byField[f] ? `${byField[f]}; ${msg}` : msg);
  if (err.errors.length) {
    for (const e of err.errors) {
      const loc = e.loc.map(String);
      const after = loc.indexOf("params") >= 0 ? loc.slice(loc.indexOf("params") + 1) : [];
      let f: string | undefined;
      for (let n = after.length; n > 0 && f === undefined; n--) if (fields.includes(after.slice(0, n).join("."))) f = after.slice(0, n).join(".");
      f ??= [...loc].reverse().find((p) => fields.includes(p));
      if (f !== undefined) add(f, e.msg);
      else rest.push(`${e.loc.join(".")}: ${e.msg}`);
    }
    return { byField, rest };
  }
  let best: string | null = null;
  let at = Infinity;
  for (const f of fields) {
    const m = new RegExp(`(^|[^A-Za-z0-9_.])(params\\.)?${f.replace(/\./g, "\\.")}([^A-Za-z0-9_]|$)`).exec(err.detail);
    if (m && (m.index < at || (m.index === at && best !== null && f.length > best.length))) {
      at = m.index;
      best = f;
    }
  }
  if (best) byField[best] = err.detail;
  else rest.push(err.detail);
  return { byField, rest };
}

/** What an `x-options` field offers: ready models (all or dense ones) or task names. */
interface Choices {
  models: { id: string; kind: string }[];
  tasks: string[];
}

export async function jobsPage(root: HTMLElement): Promise<void> {
  const q = currentRoute().query;
  const [spec, models, tasks] = await Promise.all([
    fetch("/openapi.json").then((r) => (r.ok ? (r.json() as Promise<OpenApi>) : Promise.reject(new ApiError(r.status, "cannot read /openapi.json")))),
    api<Schemas["ModelList"]>("/models?limit=200").catch(() => null),
    api<Schemas["TaskList"]>("/tasks").catch(() => null),
  ]).catch((e) => [e, null, null] as const);
  const list = h("tbody", { id: "jobs-body" });
  root.append(h("h1", {}, "Jobs"));
  if (spec instanceof Error) {
    root.append(errorBox(spec));
    return;
  }
  const choices: Choices = {
    models: (models?.items ?? []).filter((m) => m.status === "ready").map((m) => ({ id: String(m.id), kind: m.kind })),
    tasks: (tasks?.items ?? []).map((t) => t.name),
  };
  const forms = kindForms(spec as OpenApi);
  root.append(
    h("div", { class: "forms" }, ...forms.map((f) => jobForm(f, choices, q, (job) => watch(job, list, true)))),
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

function options(f: FormField, choices: Choices, q: URLSearchParams): { values: string[]; selected?: string } {
  if (f.optionsFrom === "tasks") return { values: choices.tasks, selected: choices.tasks.includes("single_double_quote") ? "single_double_quote" : choices.tasks[0] };
  if (f.optionsFrom) {
    const dense = f.optionsFrom === "dense models";
    const ids = choices.models.filter((m) => !dense || m.kind === "dense").map((m) => m.id);
    const wanted = dense ? null : q.get("model_id");
    return { values: ids, selected: wanted !== null && ids.includes(wanted) ? wanted : ids[ids.length - 1] };
  }
  return { values: f.options ?? [], selected: f.value };
}

function input(f: FormField, choices: Choices, q: URLSearchParams): HTMLInputElement | HTMLSelectElement {
  if (f.kind === "select") {
    const { values, selected } = options(f, choices, q);
    const blank = f.required ? [] : [h("option", { value: "" }, "")];
    return h("select", { name: f.path }, ...blank, ...values.map((o) => h("option", { value: o, selected: o === selected }, o))) as HTMLSelectElement;
  }
  const type = f.kind === "checkbox" ? "checkbox" : f.kind === "number" || f.kind === "integer" ? "number" : "text";
  const el = h("input", { name: f.path, type, step: f.kind === "integer" ? "1" : f.kind === "number" ? "any" : undefined, min: f.min, max: f.max, placeholder: f.kind === "list" ? "comma-separated" : undefined }) as HTMLInputElement;
  if (f.kind === "checkbox") el.checked = f.checked;
  else el.value = f.value;
  return el;
}

function jobForm(spec: KindForm, choices: Choices, q: URLSearchParams, submitted: (job: Job) => void): HTMLElement {
  const { kind } = spec;
  const inputs = new Map<FormField, HTMLInputElement | HTMLSelectElement>();
  const errors: Record<string, HTMLElement> = {};
  const formError = h("div", { class: "form-error", role: "alert" });
  const form = h("form", { class: "job-form", id: `form-${kind}`, novalidate: true }, h("h3", { title: spec.description }, kind));
  const row = (f: FormField) => {
    const el = input(f, choices, q);
    inputs.set(f, el);
    errors[f.path] = h("span", { class: "field-error", "data-field": f.path });
    return h("label", { class: "field", title: f.description ?? "" }, h("span", {}, f.label), el, errors[f.path]);
  };
  form.append(...spec.fields.map(row));
  for (const g of spec.groups) {
    form.append(h("details", { class: "field-group" }, h("summary", { title: g.description }, `${g.label} (${g.description || "options"})`), ...g.fields.map(row)));
  }
  const button = h("button", { type: "submit" }, `Submit ${kind}`);
  form.append(button, formError);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    for (const e of Object.values(errors)) e.textContent = "";
    formError.replaceChildren();
    const params = buildParams([...inputs].map(([f, el]) => [f, fieldValue(f, el.value, (el as HTMLInputElement).checked)]));
    button.disabled = true;
    try {
      submitted(await api<Job>("/jobs", { body: { kind, params } }));
    } catch (e) {
      if (e instanceof ApiError && e.status === 422) {
        const { byField, rest } = fieldErrors(e, Object.keys(errors));
        for (const [f, msg] of Object.entries(byField)) {
          errors[f].textContent = msg;
          errors[f].closest("details")?.setAttribute("open", "");
        }
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
