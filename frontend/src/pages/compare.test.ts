import { describe, expect, it } from "vitest";
import { overlap } from "./compare";

describe("overlap", () => {
  it("splits two node sets into shared and one-sided parts", () => {
    const o = overlap(["a", "b", "c"], ["b", "c", "d", "e"]);
    expect(o.shared).toEqual(["b", "c"]);
    expect(o.onlyA).toEqual(["a"]);
    expect(o.onlyB).toEqual(["d", "e"]);
    expect(o.jaccard).toBeCloseTo(2 / 5);
  });
});
