import { describe, expect, it } from "vitest";
import { type CatalogSite, keptAtK, layoutCircuit, mergeCatalogs, positionsBox, siteRows, strongestEdges, unitX } from "./layout";

// The catalog the API serves for a 2-layer model (d_model 64), optionally with transcoder features.
const KINDS = ["attn.resid_in", "attn.act_in", "attn.q", "attn.k", "attn.v", "attn.resid_delta", "mlp.resid_in", "mlp.act_in", "mlp.transcoder", "mlp.post_act", "mlp.resid_delta"];
function catalog(features: number | null = null): CatalogSite[] {
  const site = (name: string, layer: number | null, kind: string, dim: number): CatalogSite => ({
    name, layer, kind, dim, holds_nodes: !kind.endsWith("resid_in"), is_feature_site: kind === "mlp.transcoder",
  });
  const layers = [0, 1].flatMap((l) =>
    KINDS.filter((k) => k !== "mlp.transcoder" || features !== null).map((k) =>
      site(`${l}.${k}`, l, k, k === "mlp.post_act" ? 256 : k === "mlp.transcoder" ? (features ?? 0) : 64),
    ),
  );
  return [site("embed", null, "embed", 64), ...layers, site("final_resid", null, "final_resid", 64)];
}

describe("layout", () => {
  it("orders sites forward within a layer and layers top to bottom", () => {
    const rows = siteRows(catalog());
    expect(rows.get("embed")).toBe(-1);
    expect(rows.get("0.attn.act_in")).toBe(0);
    expect(rows.get("0.attn.v")).toBe(3);
    expect(rows.get("0.mlp.resid_delta")).toBe(7);
    expect(rows.get("1.attn.q")).toBe(9);
    expect(rows.get("final_resid")).toBe(16);
    expect(rows.has("0.mlp.resid_in")).toBe(false); // residual locations hold no nodes
  });

  it("aligns residual channels across layers", () => {
    const nodes = [
      { name: "0.attn.act_in[5]", site: "0.attn.act_in", layer: 0, index: 5 },
      { name: "1.attn.act_in[5]", site: "1.attn.act_in", layer: 1, index: 5 },
      { name: "1.mlp.resid_delta[5]", site: "1.mlp.resid_delta", layer: 1, index: 5 },
    ];
    const { positions } = layoutCircuit(nodes, catalog());
    expect(positions["0.attn.act_in[5]"].x).toBe(positions["1.attn.act_in[5]"].x);
    expect(positions["1.mlp.resid_delta[5]"].x).toBe(positions["1.attn.act_in[5]"].x);
    expect(positions["1.attn.act_in[5]"].y).toBeGreaterThan(positions["0.attn.act_in[5]"].y);
  });

  it("keeps the top-k nodes by tau and the strongest edges", () => {
    const kept = keptAtK([{ name: "a", tau: 0.1 }, { name: "b", tau: 0.9 }, { name: "c", tau: 0.5 }], 2);
    expect([...kept].sort()).toEqual(["b", "c"]);
    const e = strongestEdges([{ weight: 0.1 }, { weight: -2 }, { weight: 1 }], 2);
    expect(e.map((x) => x.weight)).toEqual([-2, 1]);
  });

  it("leaves a gap between attention heads on q/k/v rows only", () => {
    const inHead = unitX("attn.q", 1, 64, 16) - unitX("attn.q", 0, 64, 16);
    const acrossHeads = unitX("attn.q", 16, 64, 16) - unitX("attn.q", 15, 64, 16);
    expect(acrossHeads).toBeGreaterThan(inHead * 1.5);
    expect(unitX("attn.q", 63, 64, 16)).toBeLessThan(1);
    expect(unitX("mlp.act_in", 16, 64, 16) - unitX("mlp.act_in", 15, 64, 16)).toBeCloseTo(1 / 64);
  });

  it("gives transcoder features their own sub-row below mlp.act_in of their layer", () => {
    const rows = siteRows(catalog(256));
    expect(rows.get("1.mlp.transcoder")).toBeGreaterThan(rows.get("1.mlp.act_in")!);
    expect(rows.get("1.mlp.transcoder")).toBeLessThan(rows.get("1.mlp.post_act")!);
    // Features do not move the other rows: a circuit keeps its layout once the model has transcoders.
    for (const [site, row] of siteRows(catalog())) expect(rows.get(site)).toBe(row);
    const nodes = [
      { name: "0.mlp.transcoder[3]", site: "0.mlp.transcoder", layer: 0, index: 3 },
      { name: "1.mlp.transcoder[3]", site: "1.mlp.transcoder", layer: 1, index: 3 },
      { name: "1.mlp.act_in[3]", site: "1.mlp.act_in", layer: 1, index: 3 },
      { name: "1.mlp.resid_delta[3]", site: "1.mlp.resid_delta", layer: 1, index: 3 },
    ];
    const { positions, rows: labels } = layoutCircuit(nodes, catalog(256));
    const y = (n: string) => positions[n].y;
    expect(y("1.mlp.transcoder[3]")).toBeGreaterThan(y("1.mlp.act_in[3]"));
    expect(y("1.mlp.transcoder[3]")).toBeLessThan(y("1.mlp.resid_delta[3]"));
    expect(y("1.mlp.transcoder[3]")).toBeGreaterThan(y("0.mlp.transcoder[3]"));
    expect(labels.map((r) => r.label)).toEqual(["0.mlp.transcoder", "1.mlp.act_in", "1.mlp.transcoder", "1.mlp.resid_delta"]);
    expect(positions["1.mlp.transcoder[3]"].x * 4).toBeCloseTo(positions["1.mlp.act_in[3]"].x);
  });

  it("merges catalogs, each missing site after its predecessor", () => {
    const merged = mergeCatalogs(catalog(), catalog(128)).map((s) => s.name);
    expect(merged).toEqual(catalog(128).map((s) => s.name));
  });

  it("boxes positions with a margin, and nothing as null", () => {
    expect(positionsBox({ a: { x: 1, y: 5 }, b: { x: -3, y: 2 } }, 1)).toEqual({ x1: -4, y1: 1, x2: 2, y2: 6 });
    expect(positionsBox({})).toBeNull();
  });
});
