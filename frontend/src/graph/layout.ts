// Preset layout of a circuit from (layer, site, index): layers stacked top to bottom, the sites of a
// layer as sub-rows in the forward order of the model's site catalog (served by the API), x proportional
// to index / site width so residual channels line up across layers and q/k/v units of one head stay
// together.

/** One entry of a model's site catalog (GET /models/{id}/sites, or the `sites` of a model). */
export interface CatalogSite {
  name: string;
  layer: number | null;
  kind: string;
  dim: number;
  holds_nodes: boolean;
  is_feature_site?: boolean;
}

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

/** Row of every node site: the catalog's node sites in forward order, `embed` at -1; a feature site
 * gets a half row after the site before it, so circuits without features keep their layout. */
export function siteRows(catalog: CatalogSite[]): Map<string, number> {
  const rows = new Map<string, number>();
  let row = -2;
  for (const s of catalog) {
    if (!s.holds_nodes) continue;
    if (s.is_feature_site) rows.set(s.name, row + 0.5);
    else rows.set(s.name, ++row);
  }
  return rows;
}

/** One catalog holding the sites of several (e.g. the two models of a comparison): each site missing
 * from the first goes right after the site before it in its own catalog. */
export function mergeCatalogs(...catalogs: CatalogSite[][]): CatalogSite[] {
  const out = [...(catalogs[0] ?? [])];
  for (const other of catalogs.slice(1)) {
    other.forEach((s, i) => {
      if (out.some((o) => o.name === s.name)) return;
      const after = i === 0 ? -1 : out.findIndex((o) => o.name === other[i - 1].name);
      out.splice(after + 1, 0, s);
    });
  }
  return out;
}

const HEAD_KINDS = new Set(["attn.q", "attn.k", "attn.v"]);
const HEAD_GAP = 0.25; // gap between heads, as a fraction of a head's width

/** Horizontal position in [0, 1) of a unit: index / width, with gaps between attention heads for q/k/v. */
export function unitX(kind: string, index: number, dim: number, dHead: number | null): number {
  if (!dHead || !HEAD_KINDS.has(kind) || dim % dHead !== 0) return (index + 0.5) / dim;
  const heads = dim / dHead;
  const head = Math.floor(index / dHead);
  const slot = head * dHead * (1 + HEAD_GAP) + (index % dHead) + 0.5;
  return slot / (heads * dHead * (1 + HEAD_GAP) - dHead * HEAD_GAP);
}

export function layoutCircuit(
  nodes: LayoutNode[],
  catalog: CatalogSite[],
  dHead: number | null = null,
): { positions: Record<string, Position>; width: number; rows: { row: number; y: number; label: string }[] } {
  const sites = new Map(catalog.map((s) => [s.name, s]));
  const rowOf = siteRows(catalog);
  const nLayers = Math.max(0, ...catalog.map((s) => (s.layer ?? -1) + 1));
  const lastRow = Math.max(0, ...rowOf.values());
  // A site the catalog lacks (e.g. features of transcoders since replaced): the last row of its layer.
  const lastOfLayer = (layer: number | null) =>
    Math.max(-1, ...catalog.filter((s) => s.holds_nodes && s.layer === layer).map((s) => rowOf.get(s.name) ?? -1));
  const row = (n: LayoutNode) => rowOf.get(n.site) ?? (n.layer === null ? lastRow : lastOfLayer(n.layer));
  const perRow = new Map<number, number>();
  for (const n of nodes) perRow.set(row(n), (perRow.get(row(n)) ?? 0) + 1);
  // Wide enough that the fullest row does not overlap; rows spaced so the graph keeps a readable aspect.
  const fullest = Math.max(0, ...perRow.values());
  const width = Math.min(Math.max(fullest * MIN_SPACING, 1200), 12000);
  const rowGap = Math.max(ROW_GAP, width / 30);
  const rowY = (r: number, layer: number | null) => r * rowGap + (layer ?? (r < 0 ? 0 : nLayers)) * LAYER_GAP;
  const positions: Record<string, Position> = {};
  const labels = new Map<number, { label: string; y: number }>();
  for (const n of nodes) {
    const r = row(n);
    const site = sites.get(n.site);
    const dim = Math.max(site?.dim ?? n.index + 1, n.index + 1);
    const y = rowY(r, n.layer);
    positions[n.name] = { x: unitX(site?.kind ?? "", n.index, dim, dHead) * width, y };
    labels.set(r, { label: n.site, y });
  }
  const rows = [...labels.entries()].sort((a, b) => a[0] - b[0]).map(([row, { label, y }]) => ({ row, y, label }));
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
