import { describe, expect, it } from "vitest";
import { steerStrengths } from "./node";

describe("steering strengths", () => {
  it("sweeps 0..max when adding, -max..max when setting, the server default at 0", () => {
    expect(steerStrengths("add", 4)).toEqual([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4]);
    const set = steerStrengths("set", 2)!;
    expect(set.length).toBe(9);
    expect(set[0]).toBe(-2);
    expect(set[4]).toBe(0);
    expect(set[8]).toBe(2);
    expect(steerStrengths("add", 0)).toBeNull();
  });
});
