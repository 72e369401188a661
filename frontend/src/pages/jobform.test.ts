import { describe, expect, it } from "vitest";
import { ApiError } from "../api/client";
import spec from "../../openapi.json";
import { buildParams, fieldValue, kindForms, type OpenApi } from "./jobform";
import { fieldErrors } from "./jobs";

const forms = Object.fromEntries(kindForms(spec as unknown as OpenApi).map((f) => [f.kind, f]));
const field = (kind: string, path: string) => {
  const f = [...forms[kind].fields, ...forms[kind].groups.flatMap((g) => g.fields)].find((x) => x.path === path);
  if (!f) throw new Error(`${kind} has no field ${path}`);
  return f;
};

describe("job forms from the OpenAPI schema", () => {
  it("has a form for every kind of the request body", () => {
    expect(Object.keys(forms).sort()).toEqual(["bridge", "import", "probe", "profile", "prune", "train", "transcoder"]);
  });

  it("takes types, defaults, bounds and choices from the params schema", () => {
    const target = field("prune", "target_loss");
    expect([target.kind, target.value, target.max]).toEqual(["number", "0.15", 10]);
    expect(field("prune", "steps")).toMatchObject({ kind: "integer", value: "100", min: 1 });
    expect(field("prune", "model_id")).toMatchObject({ kind: "select", optionsFrom: "models", required: true });
    expect(field("prune", "task").optionsFrom).toBe("tasks");
    expect(field("prune", "validate_circuit")).toMatchObject({ kind: "checkbox", checked: false });
    expect(field("train", "preset")).toMatchObject({ kind: "select", options: ["test", "small", "small-long"] });
    expect(field("bridge", "dense_model_id").optionsFrom).toBe("dense models");
    expect(field("transcoder", "l1")).toMatchObject({ kind: "list", items: "number", value: "0.1, 0.3, 1" });
  });

  it("puts nested objects in fieldsets and builds nested params", () => {
    expect(forms.train.groups.map((g) => g.path)).toEqual(["model", "train"]);
    const lr = field("train", "train.lr");
    const steps = field("train", "steps");
    const l1 = field("transcoder", "l1");
    expect(lr.value).toBe("");  // unset: the preset's value
    const params = buildParams([
      [lr, fieldValue(lr, "0.01", false)],
      [steps, fieldValue(steps, "", false)],
    ]);
    expect(params).toEqual({ train: { lr: 0.01 } });
    expect(fieldValue(l1, "0.3, 1", false)).toEqual([0.3, 1]);
  });

  it("shows the API's errors beside their fields, nested ones too", () => {
    const fields = ["steps", "train.lr", "lr"];
    const byLoc = new ApiError(422, "x", [
      { loc: ["body", "train", "params", "train", "lr"], msg: "Input should be greater than 0" },
      { loc: ["body", "train", "params", "steps"], msg: "too small" },
    ]);
    expect(fieldErrors(byLoc, fields).byField).toEqual({ "train.lr": "Input should be greater than 0", steps: "too small" });
    const byDetail = new ApiError(422, "params.steps 100,000,000 exceeds the limit 20,000 (CIRCUITS_MAX_TRAIN_STEPS)");
    expect(Object.keys(fieldErrors(byDetail, fields).byField)).toEqual(["steps"]);
    const nested = new ApiError(422, "params.train.lr: Input should be greater than 0");
    expect(Object.keys(fieldErrors(nested, fields).byField)).toEqual(["train.lr"]);
  });
});
