// How the circuit view draws a circuit: small circuits (<= READABLE_MAX nodes) in a readable layout (only
// the sites that hold nodes, evenly spaced so two-line labels never overlap, the token embedding at the
// bottom and the logit difference at the top, layers separated); larger ones collapsed into one node per
// attention head (its q/k/v channels) or per site, each expandable on click.
import type { CatalogSite, Position } from "./layout";

export const READABLE_MAX = 60;
export const EMBED = "io:embed";
export const LOGIT = "io:logit";
const SPACING = 100; // px between neighbours of a row: a label of ~15 characters at 10 px
const ROW_GAP = 80;
const LAYER_GAP = 60;
export const ROW_MAX = 10; // nodes per line: a site with more wraps onto further lines
const HEAD_KINDS = new Set(["attn.q", "attn.k", "attn.v"]);

export interface GroupNode {
  name: string;
  site: string;
  layer: number | null;
  index: number;
}

/** The group a node collapses into: its attention head for q/k/v channels (`1.attn.k[91]` with d_head
 * 16 is head 5 of layer 1), else its site. */
export function groupOf(n: GroupNode, dHead: number | null): { id: string; label: string; head: number | null } {
  const kind = n.site.replace(/^\d+\./, "");
  if (dHead && HEAD_KINDS.has(kind) && n.layer !== null) {
    const head = Math.floor(n.index / dHead);
    return { id: `head:${n.layer}.${head}`, label: `L${n.layer} head ${head}`, head };
  }
  return { id: `site:${n.site}`, label: n.site, head: null };
}

/** Readable positions: y upward from the embedding (bottom) through the layers' node sites in forward
 * order to the logit difference (top); within a row the nodes sorted by (head, index), evenly spaced,
 * centred. */
export function readableLayout(
  nodes: GroupNode[],
  catalog: CatalogSite[],
  dHead: number | null,
): { positions: Record<string, Position>; rows: { y: number; label: string }[]; layers: { y: number; label: string }[] } {
  const order = new Map(catalog.map((s, i) => [s.name, i]));
  const bySite = new Map<string, GroupNode[]>();
  for (const n of nodes) bySite.set(n.site, [...(bySite.get(n.site) ?? []), n]);
  const sites = [...bySite.keys()].sort((a, b) => (order.get(a) ?? 1e9) - (order.get(b) ?? 1e9));
  const positions: Record<string, Position> = {};
  const rows: { y: number; label: string }[] = [];
  const layers: { y: number; label: string }[] = [];
  let y = 0;
  let prevLayer: number | null | undefined;
  for (const site of sites) {
    const members = bySite.get(site)!.sort((a, b) => (groupOf(a, dHead).head ?? 0) - (groupOf(b, dHead).head ?? 0) || a.index - b.index);
    const layer = members[0].layer;
    y -= prevLayer !== undefined && layer !== prevLayer ? ROW_GAP + LAYER_GAP : ROW_GAP;
    if (layer !== prevLayer) layers.push({ y, label: layer === null ? "" : `layer ${layer}` });
    prevLayer = layer;
    rows.push({ y, label: site });
    for (let start = 0; start < members.length; start += ROW_MAX) {
      if (start > 0) y -= ROW_GAP * 0.8;
      const line = members.slice(start, start + ROW_MAX);
      let x = (-(line.length - 1) * SPACING) / 2;
      let lastHead: number | null = null;
      for (const n of line) {
        const head = groupOf(n, dHead).head;
        if (lastHead !== null && head !== lastHead) x += SPACING / 4; // heads apart
        positions[n.name] = { x, y };
        lastHead = head;
        x += SPACING;
      }
    }
  }
  positions[EMBED] = { x: 0, y: ROW_GAP };
  positions[LOGIT] = { x: 0, y: y - ROW_GAP - LAYER_GAP };
  return { positions, rows, layers };
}

export interface DrawnEdge {
  src: string;
  dst: string;
  weight: number;
  rel: number;
  kind: string;
  count: number;
}

/** The graph as drawn: every node shown as itself when its group is expanded, else as its group; edges
 * between the shown nodes, those joining the same pair (and sign) summed, internal ones of a collapsed
 * group dropped. */
export function collapse<E extends { src: string; dst: string; weight: number; rel: number; kind: string }>(
  edges: E[],
  groupOfNode: Map<string, string>,
  expanded: (group: string) => boolean,
): { shown: (node: string) => string; edges: DrawnEdge[] } {
  const shown = (n: string) => {
    const g = groupOfNode.get(n);
    return g === undefined || expanded(g) ? n : g;
  };
  const merged = new Map<string, DrawnEdge>();
  for (const e of edges) {
    const src = shown(e.src);
    const dst = shown(e.dst);
    if (src === dst) continue;
    const key = `${src}|${dst}|${e.weight >= 0 ? "+" : "-"}`;
    const m = merged.get(key);
    if (m) {
      m.weight += e.weight;
      m.rel = Math.max(m.rel, e.rel);
      m.count += 1;
    } else merged.set(key, { src, dst, weight: e.weight, rel: e.rel, kind: e.kind, count: 1 });
  }
  return { shown, edges: [...merged.values()] };
}
