"""Transcoder jobs over HTTP (in-process runner, SQLite): validation and caps, the sweep and its curves,
features as nodes (profile examples + de-embedding), transcoder circuits whose edges carry both factors."""

import torch
from backend_support import register_model

from backend.db import Database
from backend.jobs.store import task_row, write_circuit, write_profile
from backend.models import ActivationExample, NodeStat
from worker.engine.activations import ProfileConfig, corpus_windows, profile_windows
from worker.engine.checkpoints import load_model
from worker.engine.circuit import Circuit, make_nodes
from worker.engine.data import load_corpus, split_corpus
from worker.engine.sites import feature_site, node_name, parse_node
from worker.engine.tasks import build_task, get_task
from worker.engine.transcoders import CircuitConfig, attribute, attribution_edges, read_transcoders

TASK = "single_double_quote"
TINY = {
    "l1": [0.03, 0.3, 3.0],
    "steps": 30,
    "batch_size": 4,
    "eval_batches": 1,
    "profile_tokens": 2048,
    "tasks": [TASK],
    "tolerance": 0.0,
}


def node_url(model_id: int, node: str) -> str:
    return f"/api/v1/models/{model_id}/nodes/{node.replace('[', '%5B').replace(']', '%5D')}"


def test_transcoder_job_sweep_features_and_circuits(make_api, test_model):
    api = make_api(max_transcoder_steps=100)
    c = api.client
    model_id = register_model(api.settings, test_model, "test-model")

    def rejected(params, status=422):
        r = api.post_job("transcoder", {"model_id": model_id, "steps": 30, **params})
        assert r.status_code == status, r.text
        return r.json()["detail"]

    detail = rejected({"l1": [-1.0]})
    assert "l1.0" in detail and "greater than 0" in detail, detail
    assert "CIRCUITS_MAX_TRANSCODER_STEPS" in rejected({"steps": 101})
    assert "selected" in rejected({"l1": [0.1, 0.2], "selected": 2})
    assert "no_such_task" in rejected({"tasks": ["no_such_task"]})
    assert "does not exist" in rejected({"model_id": 999})
    assert c.get("/api/v1/transcoders/999").status_code == 404
    assert c.get(node_url(model_id, "0.mlp.transcoder[0]")).status_code == 404  # no transcoders yet

    job = api.wait(api.submit("transcoder", {"model_id": model_id, **TINY}), timeout=600)
    assert job["status"] == "succeeded", job
    tid, (cid,) = job["result"]["transcoder_id"], job["result"]["circuit_ids"]
    assert "transcoder" in rejected(TINY | {}, status=409)  # a second sweep must say replace

    listing = c.get("/api/v1/transcoders", params={"model_id": model_id}).json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == tid
    t = c.get(f"/api/v1/transcoders/{tid}").json()
    width = t["width"]
    assert width == 4 * 64 and t["l1"] == TINY["l1"] and t["selected_l1"] == 0.3
    assert len(t["points"]) == 2 * 3 * 2 and t["settings"] == 3 == len(t["matched"]["settings"])
    assert set(t["curves"]) == {"0", "1"} and set(t["curves"]["0"]) == {"transcoder", "sae"}
    line = t["curves"]["1"]["sae"]
    assert [p["l0"] for p in line] == sorted(p["l0"] for p in line) and len(line) == 3
    assert t["reference"]["clean_ce"] == t["clean_ce"] and t["circuits"] == [cid]
    assert [s["name"] for s in t["feature_sites"]] == ["0.mlp.transcoder", "1.mlp.transcoder"]

    sites = {s["name"]: s["dim"] for s in c.get(f"/api/v1/models/{model_id}").json()["sites"]}
    assert sites["1.mlp.transcoder"] == width and sites["1.mlp.post_act"] == 256
    rows = c.get(f"/api/v1/models/{model_id}/sites/1.mlp.transcoder/nodes", params={"order": "frequency"})
    assert rows.status_code == 200 and len(rows.json()["items"]) == width
    fired = rows.json()["items"][0]["name"]
    r = c.get(node_url(model_id, fired))
    assert r.status_code == 200, r.text
    node = r.json()
    assert node["stats"]["frequency"] > 0 and node["examples"] and node["transcoder_id"] == tid
    top = node["de_embedding"]["top"]
    assert len(top) == 10 and [x["score"] for x in top] == sorted((x["score"] for x in top), reverse=True)
    assert c.get(node_url(model_id, "0.mlp.post_act[3]")).json()["de_embedding"] is None
    assert c.get(node_url(model_id, f"0.mlp.transcoder[{width}]")).status_code == 404
    assert c.get(node_url(model_id, "0.mlp.transcoder[x]")).status_code == 422
    # Playground and live ablation reach only the model's own sites: a feature is a clear 404 there.
    r = c.post(
        f"/api/v1/models/{model_id}/playground",
        json={"prompt": "x = 1", "nodes": [fired]},
        headers={"x-api-key": api.key},
    )
    assert r.status_code == 404

    circuit = c.get(f"/api/v1/circuits/{cid}").json()
    assert circuit["transcoder_id"] == tid and circuit["task"] == TASK
    assert {"replacement", "logit_diff_full"} <= set(circuit["losses"])
    assert all(n["site"].endswith(".mlp.transcoder") for n in circuit["nodes"])

    # The edges of a transcoder circuit, stored and served with both factors (the tiny test model needs
    # no feature for this task, so the circuit above may be empty: store the top features' graph).
    folder = api.settings.artifact(f"transcoders/{job['id']}")
    tr = read_transcoders(folder)
    model, tok, _ = load_model(api.settings.artifact(f"models/{model_id}"))
    data = build_task(get_task(TASK), tok)
    att = attribute(model, tr.selected, data, data.train[:8])
    top = {layer: [int(j) for j in att.effects[layer].abs().topk(6).indices] for layer in (0, 1)}
    edges = attribution_edges(att, top)
    names = [node_name(feature_site(layer), j) for layer, js in top.items() for j in js]
    graph = Circuit(
        task=TASK,
        model=str(model_id),
        target_loss=1.0,
        nodes=make_nodes(names, dict.fromkeys(names, 0.5)),
        edges=edges,
        losses={"full": 0.7, "circuit": 0.7, "ablated": 0.7, "circuit_uncalibrated": 0.7},
        calibration={"scale": 1.0, "shift": 0.0},
        curve=[],
    )
    db = Database(api.settings)
    with db.session() as s:
        gid = write_circuit(
            s, model_id, task_row(s, TASK).id, graph, CircuitConfig(), "0" * 32, transcoder_id=tid
        )
    got = c.get(f"/api/v1/circuits/{gid}").json()["edges"]
    assert len(got) == len(edges) > 0
    for e, want in zip(got, edges, strict=True):
        assert e["kind"] == "attribution"
        assert e["activation"] == want.activation and e["weight_product"] == want.weight_product
        assert abs(e["weight"] - e["activation"] * e["weight_product"]) <= 1e-6 * abs(e["weight"]) + 1e-12
    dst = edges[0].dst
    incoming = c.get(node_url(model_id, dst), params={"circuit_id": gid}).json()["incoming"]
    assert incoming and all(x["activation"] is not None and x["weight_product"] is not None for x in incoming)

    # Profiling the model's own sites afterwards keeps the feature pages (rows are replaced per site).
    net, tok, run = load_model(test_model)
    docs, _ = split_corpus(load_corpus(run.train.corpus, 200_000), run.train.val_percent)
    cfg = ProfileConfig(tokens=1024, batch_tokens=512, context=2, sample_positions=256, exact=4)
    profile = profile_windows(net, corpus_windows(tok, docs, 16, 64), cfg, sites=["0.mlp.act_in"])
    with db.session() as s:
        write_profile(s, model_id, profile, "stdlib")
        assert s.query(NodeStat).filter_by(model_id=model_id, site="1.mlp.transcoder").count() == width
        assert s.query(NodeStat).filter_by(model_id=model_id, site="0.mlp.act_in").count() == 64
    db.dispose()
    assert torch.isfinite(torch.tensor(t["clean_ce"]))


FEATURE_SITES = ["0.mlp.transcoder", "1.mlp.transcoder"]
QUICK = {"l1": [0.3], "steps": 10, "batch_size": 2, "eval_batches": 1, "sae": False, "tasks": []}


def feature_circuit(api, model_id: int, transcoder_id: int, job_id: str) -> tuple[int, list[str]]:
    """A transcoder circuit of the top features of each layer (the tiny model's own may be empty)."""
    tr = read_transcoders(api.settings.artifact(f"transcoders/{job_id}"))
    model, tok, _ = load_model(api.settings.artifact(f"models/{model_id}"))
    data = build_task(get_task(TASK), tok)
    att = attribute(model, tr.selected, data, data.train[:8])
    top = {layer: [int(j) for j in att.effects[layer].abs().topk(4).indices] for layer in (0, 1)}
    names = [node_name(feature_site(layer), j) for layer, js in top.items() for j in js]
    graph = Circuit(
        task=TASK,
        model=str(model_id),
        target_loss=1.0,
        nodes=make_nodes(names, {n: float(i) for i, n in enumerate(reversed(names))}),
        edges=attribution_edges(att, top),
        losses={"full": 0.7, "circuit": 0.7, "ablated": 0.7, "circuit_uncalibrated": 0.7},
        calibration={"scale": 1.0, "shift": 0.0},
        curve=[],
    )
    db = Database(api.settings)
    with db.session() as s:
        cid = write_circuit(
            s, model_id, task_row(s, TASK).id, graph, CircuitConfig(), "0" * 32, transcoder_id=transcoder_id
        )
    db.dispose()
    return cid, names


def test_live_ablation_switches_features_off_in_a_transcoder_circuit(make_api, test_model):
    """The circuit page calls the ablation on its first draw: a transcoder circuit must answer it, with
    its features switched off in the replacement pass."""
    api = make_api(max_transcoder_steps=100)
    c = api.client
    model_id = register_model(api.settings, test_model, "test-model")
    job = api.wait(
        api.submit("transcoder", {"model_id": model_id, **QUICK, "profile_tokens": 0}), timeout=600
    )
    assert job["status"] == "succeeded", job
    cid, names = feature_circuit(api, model_id, job["result"]["transcoder_id"], job["id"])

    def ablate(**body):
        r = c.post(f"/api/v1/circuits/{cid}/ablate", json=body, headers={"x-api-key": api.key})
        assert r.status_code == 200, r.text
        return r.json()

    first = ablate()  # what the page asks on its first draw
    assert first["n_nodes"] == len(names) and first["pairs"] > 0
    assert 0 <= first["p_correct"] <= 1 and first["full_loss"] > 0
    every = ablate(mode="ablate")  # nothing switched off but the circuit's features
    none_off = ablate(mode="ablate", off=names)  # ... and with them all back: the replacement model
    assert none_off["n_nodes"] == 0 and every["n_nodes"] == len(names)
    fewer = ablate(off=names[:1])
    assert fewer["n_nodes"] == len(names) - 1 and fewer["loss"] != first["loss"]
    r = c.post(
        f"/api/v1/circuits/{cid}/ablate", json={"off": ["0.mlp.post_act[3]"]}, headers={"x-api-key": api.key}
    )
    assert r.status_code == 404  # a transcoder circuit switches features, not the model's own nodes


def test_replacing_transcoders_without_a_profile_drops_the_old_feature_rows(make_api, test_model):
    """A `replace` job with profile_tokens=0 must not leave the previous features' statistics and
    examples behind, shown on the new features' pages."""
    api = make_api(max_transcoder_steps=100)
    c = api.client
    model_id = register_model(api.settings, test_model, "test-model")
    first = api.wait(
        api.submit("transcoder", {"model_id": model_id, **QUICK, "profile_tokens": 1024}), timeout=600
    )
    assert first["status"] == "succeeded", first
    rows = c.get(f"/api/v1/models/{model_id}/sites/0.mlp.transcoder/nodes", params={"order": "frequency"})
    fired = rows.json()["items"][0]["name"]
    assert c.get(node_url(model_id, fired)).json()["stats"] is not None  # profiled
    params = {"model_id": model_id, **QUICK, "profile_tokens": 0, "replace": True, "seed": 1}
    second = api.wait(api.submit("transcoder", params), timeout=600)
    assert second["status"] == "succeeded", second
    node = c.get(node_url(model_id, fired)).json()
    assert node["transcoder_id"] == second["result"]["transcoder_id"]
    assert node["stats"] is None and node["examples"] == []
    assert c.get(f"/api/v1/models/{model_id}/sites/0.mlp.transcoder/nodes").json()["items"] == []
    db = Database(api.settings)
    with db.session() as s:
        assert (
            s.query(NodeStat).filter(NodeStat.model_id == model_id, NodeStat.site.in_(FEATURE_SITES)).count()
            == 0
        )
        assert s.query(ActivationExample).filter_by(model_id=model_id, site=parse_node(fired)[0]).count() == 0
    db.dispose()
