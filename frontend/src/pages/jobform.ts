// Job forms generated from the API's OpenAPI schema: one form per job kind of the POST /jobs body, its
// fields from the kind's params schema (types, defaults, bounds, descriptions; nested objects as
// fieldsets). `x-options` on a field names what to choose from: "models", "dense models" or "tasks".

/** The subset of JSON Schema the forms read. */
export interface JsonSchema {
  $ref?: string;
  type?: string;
  title?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  const?: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  pattern?: string;
  anyOf?: JsonSchema[];
  items?: JsonSchema;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  oneOf?: JsonSchema[];
  discriminator?: { propertyName: string; mapping: Record<string, string> };
  "x-options"?: string;
}

export interface OpenApi {
  paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: JsonSchema }> } }>>;
  components: { schemas: Record<string, JsonSchema> };
}

/** One input of a form: `path` is the field's place in params, e.g. "steps" or "train.lr". */
export interface FormField {
  path: string;
  label: string;
  kind: "number" | "integer" | "text" | "checkbox" | "select" | "list";
  items?: "number" | "integer" | "text";
  options?: string[];
  optionsFrom?: string;
  value: string;
  checked: boolean;
  required: boolean;
  min?: number;
  max?: number;
  description?: string;
}

/** A kind's form: plain fields, then one fieldset per nested object. */
export interface KindForm {
  kind: string;
  description: string;
  fields: FormField[];
  groups: { path: string; label: string; description: string; fields: FormField[] }[];
}

function resolve(spec: OpenApi, s: JsonSchema): JsonSchema {
  let out = s;
  while (out.$ref) {
    const { $ref, ...rest } = out;
    out = { ...spec.components.schemas[$ref.split("/").pop() as string], ...rest };
  }
  return out;
}

/** A field's schema without the `null` branch of an optional value (and whether it had one). */
function nonNull(spec: OpenApi, s: JsonSchema): { schema: JsonSchema; nullable: boolean } {
  const r = resolve(spec, s);
  if (!r.anyOf) return { schema: r, nullable: false };
  const branches = r.anyOf.filter((b) => b.type !== "null");
  const { anyOf: _, ...rest } = r;
  return { schema: { ...resolve(spec, branches[0]), ...rest }, nullable: branches.length < r.anyOf.length };
}

function field(spec: OpenApi, path: string, s: JsonSchema, required: boolean): FormField {
  const { schema } = nonNull(spec, s);
  const name = path.split(".").pop() as string;
  const f: FormField = {
    path,
    label: name.replace(/_/g, " "),
    kind: "text",
    value: "",
    checked: false,
    required,
    description: schema.description,
  };
  const dflt = schema.default;
  if (schema["x-options"]) {
    f.kind = "select";
    f.optionsFrom = schema["x-options"];
  } else if (schema.enum) {
    f.kind = "select";
    f.options = schema.enum.map(String);
  } else if (schema.type === "boolean") {
    f.kind = "checkbox";
    f.checked = dflt === true;
  } else if (schema.type === "integer" || schema.type === "number") {
    f.kind = schema.type;
    f.min = schema.minimum ?? schema.exclusiveMinimum;
    f.max = schema.maximum ?? schema.exclusiveMaximum;
  } else if (schema.type === "array") {
    f.kind = "list";
    const item = resolve(spec, schema.items ?? {}).type;
    f.items = item === "integer" || item === "number" ? item : "text";
  }
  if (f.kind !== "checkbox" && dflt !== undefined && dflt !== null) f.value = Array.isArray(dflt) ? dflt.join(", ") : String(dflt);
  return f;
}

/** Every kind's form, in the order of the request body's `oneOf`. */
export function kindForms(spec: OpenApi, path = "/api/v1/jobs"): KindForm[] {
  const body = spec.paths[path].post.requestBody!.content["application/json"].schema;
  const union = resolve(spec, body);
  return (union.oneOf ?? []).map((ref) => {
    const job = resolve(spec, ref);
    const kind = String(resolve(spec, job.properties!.kind).const ?? resolve(spec, job.properties!.kind).enum?.[0]);
    const params = resolve(spec, job.properties!.params);
    const form: KindForm = { kind, description: params.description ?? "", fields: [], groups: [] };
    const required = new Set(params.required ?? []);
    for (const [name, s] of Object.entries(params.properties ?? {})) {
      const inner = nonNull(spec, s).schema;
      if (inner.properties) {
        const fields = Object.entries(inner.properties).map(([n, sub]) => field(spec, `${name}.${n}`, sub, false));
        form.groups.push({ path: name, label: name, description: s.description ?? inner.description ?? "", fields });
      } else form.fields.push(field(spec, name, s, required.has(name)));
    }
    return form;
  });
}

/** The value an input holds as a JSON value, or undefined for an empty (unset) input. */
export function fieldValue(f: FormField, raw: string, checked: boolean): unknown {
  if (f.kind === "checkbox") return checked;
  if (raw.trim() === "") return undefined;
  if (f.kind === "list") {
    const parts = raw.split(",").map((p) => p.trim()).filter((p) => p !== "");
    return f.items === "text" ? parts : parts.map(Number);
  }
  if (f.kind === "number" || f.kind === "integer") return Number(raw);
  if (f.kind === "select" && f.optionsFrom?.includes("models")) return Number(raw);
  return raw;
}

/** Params from the fields' values: nested paths become nested objects; unset fields are left out. */
export function buildParams(values: [FormField, unknown][]): Record<string, unknown> {
  const params: Record<string, unknown> = {};
  for (const [f, v] of values) {
    if (v === undefined) continue;
    const parts = f.path.split(".");
    let at = params;
    for (const p of parts.slice(0, -1)) at = (at[p] ??= {}) as Record<string, unknown>;
    at[parts[parts.length - 1]] = v;
  }
  return params;
}
