import { describe, expect, it } from "vitest";
import { describeModel, headlineTraces } from "./landing";

describe("landing page", () => {
  it("describes a model from its run configuration", () => {
    const sparse = { model: { n_layer: 2, d_model: 128 }, train: { dense: false, weight_density: 0.0625 } };
    expect(describeModel(sparse)).toBe("2 layers × d_model 128, 1/16 of each weight matrix nonzero");
    expect(describeModel({ model: { n_layer: 2, d_model: 128 }, train: { dense: true, weight_density: 0.0625 } })).toBe(
      "2 layers × d_model 128, every weight used (dense)",
    );
    expect(describeModel({ model: { n_layer: 8, d_model: 2048 }, train: { weight_density: 0.003 } })).toBe(
      "8 layers × d_model 2048, 0.3 % of each weight matrix nonzero",
    );
    expect(describeModel({ model: { n_layer: 2, d_model: 64 } })).toBe("2 layers × d_model 64");
  });

  it("draws only the targets some task reaches", () => {
    const traces = headlineTraces({ targets: [0.05, 0.15, 0.3], sparse: [null, 9, 4], dense: [null, 144, 60], tasks: [0, 2, 3], size: "edges" });
    expect(traces.map((t) => t.name)).toEqual(["sparse", "dense"]);
    expect(traces[0]).toEqual({ name: "sparse", x: [9, 4], y: [0.15, 0.3], n: [2, 3] });
    expect(traces[1].x).toEqual([144, 60]);
  });
});
