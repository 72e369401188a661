import { describe, expect, it } from "vitest";
import { keptAtK, layoutCircuit, positionsBox, siteRow, strongestEdges, unitX } from "./layout";

describe("layout", () => {
  it("orders sites forward within a layer and layers top to bottom", () => {
    expect(siteRow("0.attn.act_in", 0, 2)).toBe(0);
    expect(siteRow("0.attn.v", 0, 2)).toBe(3);
    expect(siteRow("0.mlp.resid_delta", 0, 2)).toBe(7);
    expect(siteRow("1.attn.q", 1, 2)).toBe(9);
  });

  it("aligns residual channels across layers", () => {
    const nodes = [
      { name: "0.attn.act_in[5]", site: "0.attn.act_in", layer: 0, index: 5 },
      { name: "1.attn.act_in[5]", site: "1.attn.act_in", layer: 1, index: 5 },
      { name: "1.mlp.resid_delta[5]", site: "1.mlp.resid_delta", layer: 1, index: 5 },
    ];
    const dims = { "0.attn.act_in": 64, "1.attn.act_in": 64, "1.mlp.resid_delta": 64 };
    const { positions } = layoutCircuit(nodes, dims, 2);
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
    const inHead = unitX("0.attn.q", 1, 64, 16) - unitX("0.attn.q", 0, 64, 16);
    const acrossHeads = unitX("0.attn.q", 16, 64, 16) - unitX("0.attn.q", 15, 64, 16);
    expect(acrossHeads).toBeGreaterThan(inHead * 1.5);
    expect(unitX("0.attn.q", 63, 64, 16)).toBeLessThan(1);
    expect(unitX("0.mlp.act_in", 16, 64, 16) - unitX("0.mlp.act_in", 15, 64, 16)).toBeCloseTo(1 / 64);
  });

  it("gives transcoder features their own sub-row below mlp.act_in of their layer", () => {
    expect(siteRow("1.mlp.transcoder", 1, 2)).toBeGreaterThan(siteRow("1.mlp.act_in", 1, 2));
    expect(siteRow("1.mlp.transcoder", 1, 2)).toBeLessThan(siteRow("1.mlp.post_act", 1, 2));
    const nodes = [
      { name: "0.mlp.transcoder[3]", site: "0.mlp.transcoder", layer: 0, index: 3 },
      { name: "1.mlp.transcoder[3]", site: "1.mlp.transcoder", layer: 1, index: 3 },
      { name: "1.mlp.act_in[3]", site: "1.mlp.act_in", layer: 1, index: 3 },
      { name: "1.mlp.resid_delta[3]", site: "1.mlp.resid_delta", layer: 1, index: 3 },
    ];
    const dims = { "0.mlp.transcoder": 256, "1.mlp.transcoder": 256, "1.mlp.act_in": 64, "1.mlp.resid_delta": 64 };
    const { positions, rows } = layoutCircuit(nodes, dims, 2);
    const y = (n: string) => positions[n].y;
    expect(y("1.mlp.transcoder[3]")).toBeGreaterThan(y("1.mlp.act_in[3]"));
    expect(y("1.mlp.transcoder[3]")).toBeLessThan(y("1.mlp.resid_delta[3]"));
    expect(y("1.mlp.transcoder[3]")).toBeGreaterThan(y("0.mlp.transcoder[3]"));
    expect(rows.map((r) => r.label)).toEqual(["0.mlp.transcoder", "1.mlp.act_in", "1.mlp.transcoder", "1.mlp.resid_delta"]);
    expect(positions["1.mlp.transcoder[3]"].x * 4).toBeCloseTo(positions["1.mlp.act_in[3]"].x);
  });

  it("boxes positions with a margin, and nothing as null", () => {
    expect(positionsBox({ a: { x: 1, y: 5 }, b: { x: -3, y: 2 } }, 1)).toEqual({ x1: -4, y1: 1, x2: 2, y2: 6 });
    expect(positionsBox({})).toBeNull();
  });
});
