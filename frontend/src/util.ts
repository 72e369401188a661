// Small DOM helpers shared by the pages.

type Attrs = Record<string, string | number | boolean | undefined | ((e: Event) => void)>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Node | string | null | undefined | false)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === "function") el.addEventListener(k.replace(/^on/, ""), v);
    else if (k === "class") el.className = String(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

export function errorBox(e: unknown): HTMLElement {
  const msg = e instanceof Error ? e.message : String(e);
  return h("div", { class: "error", role: "alert" }, msg);
}

export const fmt = (x: number | null | undefined, digits = 4) =>
  x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);

export function download(name: string, blob: Blob): void {
  const a = h("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

/** The mark of a model shipped with the app (the demo bundle), not trained here. */
export function demoBadge(): HTMLElement {
  return h("span", { class: "badge demo", title: "shipped with the app (the demo bundle), not trained here" }, "demo");
}
