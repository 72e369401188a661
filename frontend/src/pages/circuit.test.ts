import { describe, expect, it } from "vitest";
import type { Circuit } from "../api/client";
import { checkBadges, ownPoint } from "./circuit";

const circuit = (over: Partial<Circuit>): Circuit => ({ target_loss: 0.15, losses: { circuit: 0.96, full: 0.09 }, validation: {}, faithfulness: {}, ...over }) as Circuit;

describe("circuit header", () => {
  it("starts the loss-vs-k slider at the circuit's own k", () => {
    const curve = [{ k: 0 }, { k: 1 }, { k: 11 }, { k: 51 }, { k: 254 }];
    expect(ownPoint(curve, 51)).toBe(3);
    expect(ownPoint(curve, 49)).toBe(3);
    expect(ownPoint([], 5)).toBe(0);
  });

  it("shows the engine's checks as pass/fail badges, a failing circuit failing", () => {
    const checks = [
      { name: "sufficiency", passed: false, value: 0.96, criterion: "circuit test loss <= target 0.15" },
      { name: "random_circuit", passed: true, value: 0.69, criterion: "random circuits of equal size miss the target 0.15" },
    ];
    const badges = checkBadges(circuit({ validation: { checks } }));
    expect(badges.map((b) => [b.id, b.pass])).toEqual([["sufficiency", false], ["random_circuit", true]]);
    expect(badges[0].detail).toContain("0.960");
  });

  it("judges sufficiency from the test loss when the controls were not run, and lists faithfulness scores", () => {
    const badges = checkBadges(circuit({ faithfulness: { modes: { mean: { cpr: 0.8, cmd: 0.3 } } } }));
    expect(badges.map((b) => [b.id, b.pass])).toEqual([["sufficiency", false], ["controls", null], ["faithfulness-mean", null]]);
    expect(checkBadges(circuit({ losses: { circuit: 0.1 } }))[0].pass).toBe(true);
  });
});
