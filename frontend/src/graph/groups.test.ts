import { describe, expect, it } from "vitest";
import { collapse, EMBED, groupOf, LOGIT, readableLayout, ROW_MAX } from "./groups";
import type { CatalogSite } from "./layout";

const KINDS = ["attn.act_in", "attn.q", "attn.k", "attn.v", "attn.resid_delta", "mlp.act_in", "mlp.post_act", "mlp.resid_delta"];
const catalog: CatalogSite[] = [0, 1].flatMap((l) => KINDS.map((k) => ({ name: `${l}.${k}`, layer: l, kind: k, dim: k === "mlp.post_act" ? 256 : 64, holds_nodes: true })));
const node = (site: string, index: number) => ({ name: `${site}[${index}]`, site, layer: Number(site.split(".")[0]), index });

describe("groups", () => {
  it("puts q/k/v channels in their head (index // d_head) and other nodes in their site", () => {
    expect(groupOf(node("1.attn.k", 91), 16)).toEqual({ id: "head:1.5", label: "L1 head 5", head: 5 });
    expect(groupOf(node("1.attn.q", 80), 16).id).toBe("head:1.5");
    expect(groupOf(node("0.mlp.post_act", 91), 16)).toEqual({ id: "site:0.mlp.post_act", label: "0.mlp.post_act", head: null });
  });

  it("lays small circuits out upward, evenly spaced, without two nodes closer than a label", () => {
    const nodes = [node("0.attn.act_in", 3), node("0.attn.q", 17), node("0.attn.k", 18), node("0.mlp.post_act", 7), node("0.mlp.post_act", 8), node("1.mlp.resid_delta", 3)];
    const { positions, rows, layers } = readableLayout(nodes, catalog, 16);
    const y = (n: string) => positions[n].y;
    expect(y("0.attn.q[17]")).toBeLessThan(y("0.attn.act_in[3]")); // later sites higher up
    expect(y("1.mlp.resid_delta[3]")).toBeLessThan(y("0.mlp.post_act[7]"));
    expect(positions[EMBED].y).toBeGreaterThan(Math.max(...nodes.map((n) => y(n.name))));
    expect(positions[LOGIT].y).toBeLessThan(Math.min(...nodes.map((n) => y(n.name))));
    expect(rows.map((r) => r.label)).toEqual(["0.attn.act_in", "0.attn.q", "0.attn.k", "0.mlp.post_act", "1.mlp.resid_delta"]);
    expect(layers.map((l) => l.label)).toEqual(["layer 0", "layer 1"]);
    const pts = Object.values(positions);
    for (const a of pts) for (const b of pts) if (a !== b) expect(Math.abs(a.x - b.x) >= 100 || Math.abs(a.y - b.y) >= 60).toBe(true);
  });

  it("wraps a site with many nodes onto more lines", () => {
    const nodes = Array.from({ length: 25 }, (_, i) => node("0.mlp.post_act", i));
    const { positions } = readableLayout(nodes, catalog, 16);
    const ys = new Set(nodes.map((n) => positions[n.name].y));
    expect(ys.size).toBe(Math.ceil(25 / ROW_MAX));
  });

  it("collapses groups: edges between shown nodes summed per sign, internal ones dropped", () => {
    const groups = new Map([["a[0]", "g1"], ["a[1]", "g1"], ["b[0]", "g2"]]);
    const edges = [
      { src: "a[0]", dst: "b[0]", weight: 0.5, rel: 0.5, kind: "weight" },
      { src: "a[1]", dst: "b[0]", weight: 0.25, rel: 1, kind: "weight" },
      { src: "a[1]", dst: "b[0]", weight: -0.1, rel: 0.2, kind: "weight" },
      { src: "a[0]", dst: "a[1]", weight: 1, rel: 1, kind: "weight" },
    ];
    const shut = collapse(edges, groups, () => false);
    expect(shut.edges).toEqual([
      { src: "g1", dst: "g2", weight: 0.75, rel: 1, kind: "weight", count: 2 },
      { src: "g1", dst: "g2", weight: -0.1, rel: 0.2, kind: "weight", count: 1 },
    ]);
    const open = collapse(edges, groups, (g) => g === "g1");
    expect(open.shown("a[0]")).toBe("a[0]");
    expect(open.shown("b[0]")).toBe("g2");
    expect(open.edges).toHaveLength(4);
  });
});
