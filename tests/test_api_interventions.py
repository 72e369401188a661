"""Playground and live ablation: interactive forward passes on the cached model, checked against the
engine, on SQLite and PostgreSQL."""

import pytest
import torch

from worker.engine.checkpoints import load_model

API = "/api/v1"


def test_playground_matches_a_direct_forward_pass(api_backend):
    c, model_id = api_backend.client, api_backend.model_id
    nodes = ["0.mlp.post_act[3]", "1.attn.v[5]", "embed[0]"]
    prompt = "def main():\n    print('hello')\n"
    r = c.post(f"{API}/models/{model_id}/playground", json={"prompt": prompt, "nodes": nodes})
    assert r.status_code == 200, r.text
    out = r.json()
    model, tok, _ = load_model(api_backend.world["folder"])
    ids = tok.encode(prompt).ids
    assert [t["id"] for t in out["tokens"]] == ids and not out["truncated"]
    assert "".join(t["text"] for t in out["tokens"]) == prompt
    with torch.no_grad():
        logits, acts = model(torch.tensor([ids]), capture=["0.mlp.post_act", "1.attn.v", "embed"])
    where = [("0.mlp.post_act", 3), ("1.attn.v", 5), ("embed", 0)]
    for node, (site, index) in zip(nodes, where, strict=True):
        assert out["activations"][node] == pytest.approx(acts[site][0, :, index].tolist(), abs=1e-5)
    assert out["top_next"][0]["id"] == int(logits[0, -1].argmax())
    assert out["top_next_probs"] == sorted(out["top_next_probs"], reverse=True)

    long = c.post(f"{API}/models/{model_id}/playground", json={"prompt": "x = 1\n" * 200, "nodes": nodes[:1]})
    assert long.status_code == 200 and long.json()["truncated"]
    assert len(long.json()["tokens"]) == model.cfg.n_ctx == len(long.json()["activations"][nodes[0]])
    for body, code in [
        ({"prompt": "x", "nodes": []}, 422),
        ({"prompt": "", "nodes": nodes}, 422),
        ({"prompt": "x", "nodes": ["0.mlp.post_act[100000]"]}, 404),
        ({"prompt": "x", "nodes": ["nonsense"]}, 422),
        ({"prompt": 5, "nodes": nodes}, 422),
        ({"prompt": "x" * 5000, "nodes": nodes}, 422),
        ({"prompt": "x", "nodes": ["0.mlp.post_act[1]"] * 65}, 422),
        ({"prompt": "x", "nodes": nodes, "other": 1}, 422),
    ]:
        r = c.post(f"{API}/models/{model_id}/playground", json=body)
        assert r.status_code == code, (body, r.text)
        assert r.json()["detail"]
    assert c.post(f"{API}/models/424242/playground", json={"prompt": "x", "nodes": nodes}).status_code == 404


def test_live_ablation_reproduces_the_circuits_losses(api_backend):
    c, circuit_id = api_backend.client, api_backend.circuit_id
    engine = api_backend.world["circuit"]
    url = f"{API}/circuits/{circuit_id}/ablate"
    everything = c.post(url, json={"pairs": 512, "show": 2})  # the whole test split
    assert everything.status_code == 200, everything.text
    keep = everything.json()
    assert keep["n_nodes"] == len(engine.nodes) and keep["pairs"] == api_backend.world["test_pairs"] < 512
    assert keep["loss"] == pytest.approx(engine.losses["circuit_uncalibrated"], abs=1e-5)
    assert keep["loss_calibrated"] == pytest.approx(engine.losses["circuit"], abs=1e-5)
    assert keep["full_loss"] == pytest.approx(engine.losses["full"], abs=1e-5)
    assert [p["expected"] for p in keep["prompts"]] == ["a", "b", "a", "b"]
    assert all(p["p_a"] + p["p_b"] == pytest.approx(1.0) for p in keep["prompts"])
    ablated = c.post(url, json={"pairs": 512, "mode": "ablate"}).json()
    assert ablated["loss"] == pytest.approx(engine.losses["ablated"], abs=1e-5)

    # Switching nodes changes the result; switching them back restores it.
    names = [n.name for n in engine.nodes]
    base = c.post(url, json={"pairs": 64}).json()  # (its latency: bench/api_load.py)
    assert base["n_nodes"] == len(names) and base["pairs"] == 64 and base["seconds"] > 0
    none = c.post(url, json={"pairs": 64, "off": names}).json()
    assert none["n_nodes"] == 0 and none["loss"] != pytest.approx(base["loss"], abs=1e-6)
    restored = c.post(url, json={"pairs": 64, "off": names, "on": names}).json()
    assert restored["n_nodes"] == 0  # off wins over on
    grown = c.post(url, json={"pairs": 64, "on": ["1.mlp.post_act[0]", "1.mlp.post_act[1]"]}).json()
    assert grown["n_nodes"] == len(names) + 2
    for body, code in [
        ({"off": ["embed[0]"]}, 422),
        ({"off": ["0.mlp.post_act[100000]"]}, 404),
        ({"on": ["bad node"]}, 422),
        ({"pairs": 0}, 422),
        ({"pairs": 100000}, 422),
        ({"mode": "sideways"}, 422),
        ({"ablation": "median"}, 422),
        ({"off": "0.mlp.post_act[1]"}, 422),
        ({"unknown": True}, 422),
    ]:
        r = c.post(url, json=body)
        assert r.status_code == code, (body, r.text)
        assert r.json()["detail"]
    assert c.post(f"{API}/circuits/424242/ablate", json={}).status_code == 404
    assert c.post(url, content=b"[1, 2", headers={"content-type": "application/json"}).status_code == 422


def test_live_ablation_modes_follow_the_engine(api_backend):
    from worker.engine.ablation import Ablation, load_or_make_windows, prunable_sites
    from worker.engine.masks import NodeMasks
    from worker.engine.prune import task_logits
    from worker.engine.sites import parse_node
    from worker.engine.tasks import build_task, get_task
    from worker.engine.tasks.base import pair_labels

    c, circuit_id, world = api_backend.client, api_backend.circuit_id, api_backend.world
    url = f"{API}/circuits/{circuit_id}/ablate"
    model, tok, run = load_model(world["folder"])
    task = build_task(get_task(world["circuit"].task), tok)
    dims = model.site_dims()
    masks = NodeMasks({s: dims[s] for s in prunable_sites(model)}, 0.0, 0.0, None)
    keep = torch.zeros(masks.tau.numel())
    for n in world["circuit"].nodes:
        site, index = parse_node(n.name)
        keep[masks.slices[site][0] + index] = 1
    prompts = task.test[:32]
    labels = pair_labels(len(prompts))
    answers = {}
    for mode in ("mean", "zero"):
        r = c.post(url, json={"pairs": 32, "ablation": mode})
        assert r.status_code == 200, r.text
        answers[mode] = r.json()
        assert answers[mode]["ablation"] == mode
        logits = task_logits(model, task, prompts, keep, masks, Ablation(mode, world["means"]))
        ce = torch.nn.functional.cross_entropy(logits, labels).item()
        assert answers[mode]["loss"] == pytest.approx(ce, abs=1e-5)
    assert answers["zero"]["loss"] != pytest.approx(answers["mean"]["loss"], abs=1e-4)
    # resample draws afresh per request from the model folder's cached pretraining windows
    first, second = (c.post(url, json={"pairs": 32, "ablation": "resample"}).json() for _ in range(2))
    assert first["ablation"] == "resample" and first["loss"] != second["loss"]
    assert load_or_make_windows(world["folder"], model, tok, run).shape[1] == model.cfg.n_ctx


def test_an_edge_circuit_is_pruned_stored_and_ablated_on_its_edges(api_backend, request):
    """A prune job with unit=edges stores an edge circuit; live ablation keeps (or ablates) its edges,
    not the edges among its nodes."""
    from types import SimpleNamespace

    from backend_support import delete_circuit

    from worker.engine.ablation import Ablation
    from worker.engine.masks import EdgeMasks
    from worker.engine.prune import task_logits
    from worker.engine.tasks import build_task, get_task
    from worker.engine.tasks.base import pair_labels

    api, c, world = api_backend.api, api_backend.client, api_backend.world
    params = {
        "model_id": api_backend.model_id,
        "task": world["circuit"].task,
        "unit": "edges",
        "steps": 4,
        "runs": 1,
        "eval_pairs": 32,
        "batch_pairs": 16,
        "curve_points": 2,
        "curve_pairs": 8,
        "faithfulness_pairs": 4,
    }
    job = api.wait(api.submit("prune", params), timeout=300)
    assert job["status"] == "succeeded", job
    request.addfinalizer(lambda: delete_circuit(api_backend.settings, job["result"]["circuit_id"]))
    r = c.get(f"{API}/circuits/{job['result']['circuit_id']}")
    assert r.status_code == 200, r.text
    stored = r.json()
    assert stored["unit"] == "edges" and stored["params"]["unit"] == "edges"
    assert stored["n_edges"] == len(stored["edges"]) and stored["faithfulness"]["unit"] == "edges"

    model, tok, _ = load_model(world["folder"])
    task = build_task(get_task(stored["task"]), tok)
    masks = EdgeMasks(model, 0.0, 0.0, None)
    circuit = SimpleNamespace(edges=[SimpleNamespace(**e) for e in stored["edges"]])
    keep = torch.zeros(masks.tau.numel())
    keep[masks.indices(circuit)] = 1
    prompts, labels = task.test[:32], pair_labels(32)
    ablation = Ablation("mean", world["means"])
    for mode, kept in (("keep", keep), ("ablate", 1 - keep)):
        r = c.post(f"{API}/circuits/{stored['id']}/ablate", json={"pairs": 32, "mode": mode})
        assert r.status_code == 200, r.text
        logits = task_logits(model, task, prompts, kept, masks, ablation)
        assert r.json()["loss"] == pytest.approx(
            torch.nn.functional.cross_entropy(logits, labels).item(), abs=1e-5
        )
    if stored["nodes"]:
        off = stored["nodes"][0]["name"]
        r = c.post(f"{API}/circuits/{stored['id']}/ablate", json={"pairs": 32, "off": [off]})
        assert r.status_code == 200 and r.json()["n_nodes"] == len(stored["nodes"]) - 1, r.text
    # The trace runs the circuit's own edges too.
    prompt = "def f(x):\n    while True"
    r = c.post(f"{API}/circuits/{stored['id']}/trace", json={"prompts": [prompt]})
    assert r.status_code == 200, r.text
    ids = tok.encode(prompt).ids
    x = torch.tensor([ids])
    with torch.no_grad():
        logits, _ = model(x, **masks.edit(model, ablation, keep, 1, len(ids)))
    expected = float(logits[0, -1, task.token_a] - logits[0, -1, task.token_b])
    assert r.json()["traces"][0]["logit_diff"] == pytest.approx(expected, abs=1e-4)
