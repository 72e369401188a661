// Typed fetch wrapper over the API (types generated from the OpenAPI schema: npm run types).
import type { components } from "./schema";

export type Schemas = components["schemas"];
export type Circuit = Schemas["CircuitRead"];
export type CircuitNode = Schemas["CircuitNodeRead"];
export type CircuitEdge = Schemas["CircuitEdgeRead"];
export type Model = Schemas["ModelRead"];
export type Job = Schemas["JobRead"];
export type NodeInfo = Schemas["NodeRead"];
export type Example = Schemas["ExampleRead"];
export type Ablation = Schemas["AblationResult"];

export const API = "/api/v1";

/** An API answer that was not 2xx: `detail` is the server's message, `errors` its field locations. */
export class ApiError extends Error {
  constructor(
    public status: number,
    public detail: string,
    public errors: { loc: (string | number)[]; msg: string }[] = [],
  ) {
    super(`${status}: ${detail}`);
  }
}

export function apiKey(): string {
  return localStorage.getItem("circuits.apiKey") ?? "";
}

export function setApiKey(key: string): void {
  localStorage.setItem("circuits.apiKey", key);
}

export async function api<T>(path: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
  const headers: Record<string, string> = {};
  if (init.body !== undefined) headers["content-type"] = "application/json";
  if (apiKey()) headers["x-api-key"] = apiKey();
  let res: Response;
  try {
    res = await fetch(API + path, {
      method: init.method ?? (init.body === undefined ? "GET" : "POST"),
      headers,
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
    });
  } catch (e) {
    throw new ApiError(0, `network error: ${(e as Error).message}`);
  }
  const text = await res.text();
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const body = (data ?? {}) as { detail?: unknown; errors?: ApiError["errors"] };
    const detail = typeof body.detail === "string" ? body.detail : text || res.statusText;
    throw new ApiError(res.status, detail, body.errors ?? []);
  }
  return data as T;
}

export const nodePath = (name: string) => encodeURIComponent(name);
