// Preset layout of a circuit from (layer, site, index): layers stacked top to bottom, the 8 sites of a
// layer as sub-rows in forward order, x proportional to index / site width so residual channels line up
// across layers and q/k/v units of one head stay together.

export const SITE_ORDER = [
  "attn.act_in",
  "attn.q",
  "attn.k",
  "attn.v",
  "attn.resid_delta",
  "mlp.act_in",
  "mlp.post_act",
  "mlp.resid_delta",
] as const;

// Sites outside the 8 of every layer get a sub-row between two of them, so circuits without them keep
// their layout: transcoder features read mlp.act_in and replace the MLP, so they sit right below it.
export const EXTRA_ROWS: Record<string, number> = { "mlp.transcoder": 5.5 };

export interface LayoutNode {
  name: string;
  site: string;
  layer: number | null;
  index: number;
}

export interface Position {
  x: number;
  y: number;
}

export const ROW_GAP = 70;
export const LAYER_GAP = 60;
export const MIN_SPACING = 12;

/** Site name without the layer prefix, e.g. "1.attn.q" -> "attn.q". */
export function siteKind(site: string): string {
  return site.replace(/^\d+\./, "");
}

/** Row of a site: layer * 8 + position in SITE_ORDER (or its EXTRA_ROWS slot); unknown sites (embed,
 * final_resid) go first/last. */
export function siteRow(site: string, layer: number | null, nLayers: number): number {
  if (layer === null) return site === "embed" ? -1 : nLayers * SITE_ORDER.length;
  const kind = siteKind(site);
  if (kind in EXTRA_ROWS) return layer * SITE_ORDER.length + EXTRA_ROWS[kind];
  const i = SITE_ORDER.indexOf(kind as (typeof SITE_ORDER)[number]);
  return layer * SITE_ORDER.length + (i < 0 ? SITE_ORDER.length - 1 : i);
}

const HEAD_SITES = new Set(["attn.q", "attn.k", "attn.v"]);
const HEAD_GAP = 0.25; // gap between heads, as a fraction of a head's width

/** Horizontal position in [0, 1) of a unit: index / width, with gaps between attention heads for q/k/v. */
export function unitX(site: string, index: number, dim: number, dHead: number | null): number {
  if (!dHead || !HEAD_SITES.has(siteKind(site)) || dim % dHead !== 0) return (index + 0.5) / dim;
  const heads = dim / dHead;
  const head = Math.floor(index / dHead);
  const slot = head * dHead * (1 + HEAD_GAP) + (index % dHead) + 0.5;
  return slot / (heads * dHead * (1 + HEAD_GAP) - dHead * HEAD_GAP);
}

export function layoutCircuit(
  nodes: LayoutNode[],
  dims: Record<string, number>,
  nLayers: number,
  dHead: number | null = null,
): { positions: Record<string, Position>; width: number; rows: { row: number; y: number; label: string }[] } {
  const perRow = new Map<number, number>();
  for (const n of nodes) {
    const r = siteRow(n.site, n.layer, nLayers);
    perRow.set(r, (perRow.get(r) ?? 0) + 1);
  }
  // Wide enough that the fullest row does not overlap; rows spaced so the graph keeps a readable aspect.
  const fullest = Math.max(0, ...perRow.values());
  const width = Math.min(Math.max(fullest * MIN_SPACING, 1200), 12000);
  const rowGap = Math.max(ROW_GAP, width / 30);
  const rowY = (r: number) => r * rowGap + Math.floor(Math.max(r, 0) / SITE_ORDER.length) * LAYER_GAP;
  const positions: Record<string, Position> = {};
  const labels = new Map<number, string>();
  for (const n of nodes) {
    const r = siteRow(n.site, n.layer, nLayers);
    const dim = Math.max(dims[n.site] ?? n.index + 1, n.index + 1);
    positions[n.name] = { x: unitX(n.site, n.index, dim, dHead) * width, y: rowY(r) };
    labels.set(r, n.site);
  }
  const rows = [...labels.entries()].sort((a, b) => a[0] - b[0]).map(([row, label]) => ({ row, y: rowY(row), label }));
  return { positions, width, rows };
}

/** The box around a set of positions, grown by `margin` (for fitting a view without measuring elements). */
export function positionsBox(positions: Record<string, Position>, margin = 0): { x1: number; y1: number; x2: number; y2: number } | null {
  let x1 = Infinity, y1 = Infinity, x2 = -Infinity, y2 = -Infinity;
  for (const p of Object.values(positions)) {
    x1 = Math.min(x1, p.x);
    x2 = Math.max(x2, p.x);
    y1 = Math.min(y1, p.y);
    y2 = Math.max(y2, p.y);
  }
  if (!Number.isFinite(x1)) return null;
  return { x1: x1 - margin, y1: y1 - margin, x2: x2 + margin, y2: y2 + margin };
}

/** The k nodes a circuit of size k keeps: the highest mask scores (tau). */
export function keptAtK(nodes: { name: string; tau: number }[], k: number): Set<string> {
  return new Set([...nodes].sort((a, b) => b.tau - a.tau).slice(0, k).map((n) => n.name));
}

/** The strongest `limit` edges, by |weight| unless `strength` says otherwise (drawing all of a 25k-edge
 * circuit helps nobody). */
export function strongestEdges<E extends { weight: number }>(
  edges: E[],
  limit: number,
  strength: (e: E) => number = (e) => Math.abs(e.weight),
): E[] {
  if (edges.length <= limit) return edges;
  return [...edges].sort((a, b) => strength(b) - strength(a)).slice(0, limit);
}
