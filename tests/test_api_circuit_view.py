"""What the circuit view reads beside the graph: a trace of the circuit on chosen prompts and automatic
node labels from the profile, checked against the engine."""

from collections import Counter

import pytest

from worker.engine.ablation import Ablation
from worker.engine.checkpoints import load_model
from worker.engine.tasks import build_task, get_task
from worker.engine.trace import class_means, trace

API = "/api/v1"


@pytest.fixture(scope="module")
def engine(api_world):
    model, tok, _ = load_model(api_world["folder"])
    task = build_task(get_task(api_world["circuit"].task), tok)
    return model, tok, task


def test_trace_of_a_prompt_pair_matches_the_engine(api_backend, engine):
    model, tok, task = engine
    c, circuit_id, world = api_backend.client, api_backend.circuit_id, api_backend.world
    names = sorted(n.name for n in world["circuit"].nodes)
    prompts = [tok.decode(task.test[0, 0].tolist()), tok.decode(task.test[0, 1].tolist())]
    off = names[1]
    r = c.post(f"{API}/circuits/{circuit_id}/trace", json={"prompts": prompts, "off": [off]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["completion_a"], out["completion_b"]) == (task.completion_a, task.completion_b)
    assert len(out["traces"]) == 2
    scale = world["circuit"].calibration["scale"]
    for got, prompt in zip(out["traces"], prompts, strict=True):
        ids = [t["id"] for t in got["tokens"]]
        assert ids == tok.encode(prompt).ids and not got["truncated"]
        want = trace(model, ids, names, Ablation("mean", world["means"]), task.token_a, task.token_b, {off})
        assert set(got["activations"]) == set(names)
        for n in names:
            assert got["activations"][n] == pytest.approx(want.activations[n], abs=1e-5)
        site, index = off.split("[")[0], int(off.split("[")[1][:-1])
        mean = float(world["means"][site][index])
        assert got["activations"][off] == pytest.approx([mean] * len(ids), abs=1e-5)
        assert got["logit_diff"] == pytest.approx(want.logit_diff, abs=1e-4)
        assert got["logit_diff_calibrated"] == pytest.approx(scale * want.logit_diff, abs=1e-4)
        assert got["full_logit_diff"] == pytest.approx(want.full_logit_diff, abs=1e-4)
        assert got["heads"] == []  # the circuit runs through layer 0's MLP only
    # The two prompts differ in the feature the task is about: the full model answers them differently.
    assert out["traces"][0]["full_logit_diff"] != pytest.approx(out["traces"][1]["full_logit_diff"], abs=1e-6)


def test_trace_rejects_bad_input_by_name(api_backend):
    c, circuit_id = api_backend.client, api_backend.circuit_id
    url = f"{API}/circuits/{circuit_id}/trace"
    for body, code, words in [
        ({"prompts": ["x"], "off": ["1.mlp.post_act[0]"]}, 422, "not a node of circuit"),
        ({"prompts": ["x"], "off": ["0.mlp.post_act[100000]"]}, 404, "has nodes 0.."),
        ({"prompts": []}, 422, "prompts"),
        ({"prompts": ["a", "b", "c"]}, 422, "prompts"),
        ({"prompts": [""]}, 422, "prompts"),
        ({"prompts": ["x"], "other": 1}, 422, "other"),
    ]:
        r = c.post(url, json=body)
        assert r.status_code == code, (body, r.text)
        assert words in str(r.json()["detail"]), (body, r.text)
    assert c.post(f"{API}/circuits/424242/trace", json={"prompts": ["x"]}).status_code == 404


def test_labels_come_from_the_profile_and_the_task(api_backend, engine):
    model, tok, task = engine
    c, circuit_id, world = api_backend.client, api_backend.circuit_id, api_backend.world
    r = c.get(f"{API}/circuits/{circuit_id}/labels")
    assert r.status_code == 200, r.text
    out = r.json()
    names = sorted(n.name for n in world["circuit"].nodes)
    assert out["profiled"] and [i["node"] for i in out["items"]] == names
    sides = class_means(model, task.test[:64], names, Ablation("mean", world["means"]))
    for item in out["items"]:
        n = item["node"]
        node = c.get(f"{API}/models/{api_backend.model_id}/nodes/{n.replace('[', '%5B').replace(']', '%5D')}")
        examples = [e for e in node.json()["examples"] if e["bin"] in ("top_0.1", "top_1")]
        top = Counter(e["tokens"][e["center"]] for e in examples)
        assert item["top_tokens"] and set(item["top_tokens"]) <= set(top), n  # every node site is profiled
        assert top[item["top_tokens"][0]] == max(top.values())
        assert repr(item["top_tokens"][0]) in item["label"]
        assert (item["a_mean"], item["b_mean"]) == pytest.approx(sides[n], abs=1e-5)
        if item["a_mean"] != item["b_mean"]:
            assert ("A>B" if item["a_mean"] > item["b_mean"] else "B>A") in item["label"]
        assert (item["logit_weight"] is not None) == (".resid_delta[" in n)
        if item["logit_weight"]:
            assert ("→A" if item["logit_weight"] > 0 else "→B") in item["label"]
        assert item["head"] is None
    assert c.get(f"{API}/circuits/424242/labels").status_code == 404
