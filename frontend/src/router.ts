// Hash routes: #/models, #/models/1, #/circuits/1?node=...&k=...&off=..., #/jobs. The URL holds the view state.

export interface Route {
  path: string[];
  query: URLSearchParams;
}

export function currentRoute(): Route {
  const hash = location.hash.replace(/^#\/?/, "");
  const [p, q = ""] = hash.split("?", 2);
  return { path: p.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(q) };
}

/** Replace query parameters of the current route without re-rendering the page. */
export function updateQuery(values: Record<string, string | null>): void {
  const r = currentRoute();
  for (const [k, v] of Object.entries(values)) {
    if (v === null || v === "") r.query.delete(k);
    else r.query.set(k, v);
  }
  const q = r.query.toString();
  const hash = "#/" + r.path.map(encodeURIComponent).join("/") + (q ? "?" + q : "");
  history.replaceState(null, "", hash);
}
