"""The read API (models, tasks, circuits, nodes) and its errors, on SQLite and PostgreSQL."""

from urllib.parse import quote

import pytest

API = "/api/v1"


def test_models_list_get_and_metrics(api_backend):
    c, model_id = api_backend.client, api_backend.model_id
    listed = c.get(f"{API}/models").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == model_id
    assert listed["items"][0]["kind"] == "sparse" and listed["items"][0]["profiled"] is True
    assert c.get(f"{API}/models", params={"kind": "dense"}).json()["total"] == 0
    model = c.get(f"{API}/models/{model_id}").json()
    sites = {s["name"]: s for s in model["sites"]}
    assert sites["0.mlp.post_act"]["dim"] == 4 * sites["0.mlp.act_in"]["dim"] == 256
    assert sites["embed"]["layer"] is None and sites["1.attn.q"]["layer"] == 1
    assert len(sites) == 2 + 2 * 8 and model["n_circuits"] == 1
    assert model["config"]["model"]["d_model"] == 64
    metrics = c.get(f"{API}/models/{model_id}/metrics").json()
    assert metrics == {"model_id": model_id, "points": []}
    for path, code in [
        (f"{API}/models/999999", 404),
        (f"{API}/models/0", 422),
        (f"{API}/models/abc", 422),
        (f"{API}/models/99999999999999999999", 422),
        (f"{API}/models/999999/metrics", 404),
        (f"{API}/models?limit=0", 422),
        (f"{API}/models?kind=huge", 422),
    ]:
        r = c.get(path)
        assert r.status_code == code, (path, r.text)
        assert r.json()["detail"]


def test_site_catalog_in_forward_order(api_backend):
    c, model_id = api_backend.client, api_backend.model_id
    catalog = c.get(f"{API}/models/{model_id}/sites").json()
    names = [s["name"] for s in catalog]
    assert names[:3] == ["embed", "0.attn.resid_in", "0.attn.act_in"] and names[-1] == "final_resid"
    assert [s["name"] for s in catalog if not s["holds_nodes"]] == [
        f"{i}.{k}.resid_in" for i in range(2) for k in ("attn", "mlp")
    ]
    q = catalog[names.index("1.attn.q")]
    assert q == {"name": "1.attn.q", "layer": 1, "kind": "attn.q", "dim": 64, "holds_nodes": True,
                 "is_feature_site": False}  # fmt: skip
    served = [s["name"] for s in c.get(f"{API}/models/{model_id}").json()["sites"]]
    assert served == [s["name"] for s in catalog if s["holds_nodes"]]
    assert c.get(f"{API}/models/999999/sites").status_code == 404


def test_tasks_samples_and_custom_tasks(api_backend):
    c, key = api_backend.client, api_backend.key
    tasks = {t["name"]: t for t in c.get(f"{API}/tasks").json()["items"]}
    quote_task = tasks["single_double_quote"]
    assert quote_task["builtin"] and quote_task["n_circuits"] == 1 and quote_task["n_pairs"] is None
    assert c.get(f"{API}/tasks/single_double_quote").json()["completion_a"] == '")'
    assert c.get(f"{API}/tasks/no_such_task").status_code == 404

    text = c.get(f"{API}/tasks/single_double_quote/samples", params={"n": 3}).json()["items"]
    assert len(text) == 3 and all(s["split"] == "test" for s in text)
    assert all(s["prompt_a"] != s["prompt_b"] and s["completion_b"] == "')" for s in text)
    seen = c.get(
        f"{API}/tasks/single_double_quote/samples", params={"n": 2, "model_id": api_backend.model_id}
    ).json()
    assert seen["model_id"] == api_backend.model_id and len(seen["items"]) == 2
    assert all('"' in s["prompt_a"] and "'" in s["prompt_b"] for s in seen["items"])
    assert c.get(f"{API}/tasks/single_double_quote/samples", params={"n": 0}).status_code == 422
    assert c.get(f"{API}/tasks/single_double_quote/samples", params={"model_id": 424242}).status_code == 404

    name = f"brackets_{api_backend.backend}"
    task = {
        "name": name,
        "completion_a": ")",
        "completion_b": "]",
        "description": "call or index",
        "pairs": [
            {"prompt_a": "value = compute(alpha", "prompt_b": "value = items[alpha", "split": "train"},
            {"prompt_a": "total = len(beta", "prompt_b": "total = table[beta", "split": "train"},
            {"prompt_a": "print(gamma", "prompt_b": "print(rows[gamma", "split": "test"},
        ],
    }
    assert c.post(f"{API}/tasks", json=task).status_code == 401
    r = c.post(f"{API}/tasks", json=task, headers={"x-api-key": key})
    assert r.status_code == 201, r.text
    assert r.json()["builtin"] is False and r.json()["n_pairs"] == 3
    assert c.post(f"{API}/tasks", json=task, headers={"x-api-key": key}).status_code == 409
    custom = c.get(f"{API}/tasks", params={"builtin": False}).json()["items"]
    # the fuzzer may have created custom tasks in this shared app: ours is listed, no built-in one is
    assert name in [t["name"] for t in custom] and not any(t["builtin"] for t in custom)
    assert "single_double_quote" not in [t["name"] for t in custom]
    samples = c.get(f"{API}/tasks/{name}/samples", params={"split": "train"}).json()["items"]
    assert [s["source"] for s in samples] == ["pairs[0]", "pairs[1]"]

    shared = {**task, "name": f"newline_{api_backend.backend}", "completion_a": "\nA", "completion_b": "\nB"}
    r = c.post(f"{API}/tasks", json=shared, headers={"x-api-key": key})
    assert r.status_code == 422 and "'\\n'" in r.json()["detail"] and "first token" in r.json()["detail"]
    for bad in [
        {**task, "name": "Bad Name"},
        {**task, "name": "ok_name", "pairs": "not a list"},
        {**task, "name": "ok_name", "pairs": [{"prompt_a": "x", "prompt_b": "x"}] * 2},
        {**task, "name": "ok_name", "completion_b": ")"},
        {**task, "name": "single_double_quote"},
        {**task, "name": "ok_name", "extra": 1},
    ]:
        r = c.post(f"{API}/tasks", json=bad, headers={"x-api-key": key})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"]
    assert c.post(f"{API}/tasks", content=b"{not json", headers={"x-api-key": key}).status_code == 422


def test_circuit_list_and_full_graph(api_backend):
    c, circuit_id = api_backend.client, api_backend.circuit_id
    engine = api_backend.world["circuit"]
    listed = c.get(f"{API}/circuits", params={"model_id": api_backend.model_id}).json()
    assert listed["total"] == 1 and listed["items"][0]["task"] == "single_double_quote"
    assert listed["items"][0]["n_nodes"] == len(engine.nodes)
    assert c.get(f"{API}/circuits", params={"task": "else_elif"}).json()["total"] == 0
    assert c.get(f"{API}/circuits", params={"max_nodes": 1}).json()["total"] == 0
    r = c.get(f"{API}/circuits/{circuit_id}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    graph = r.json()
    assert [n["name"] for n in graph["nodes"]] == [n.name for n in engine.nodes]
    assert len(graph["edges"]) == len(engine.edges) > 0
    weights = {(e.src, e.dst): e.weight for e in engine.edges}
    assert all(abs(weights[e["src"], e["dst"]] - e["weight"]) < 1e-6 for e in graph["edges"])
    assert graph["losses"] == pytest.approx(engine.losses)
    assert graph["calibration"] == pytest.approx(engine.calibration) and graph["curve"] == engine.curve
    assert c.get(f"{API}/circuits/{circuit_id}").content == r.content  # served from the rendered cache
    assert c.get(f"{API}/circuits/424242").status_code == 404
    assert c.get(f"{API}/circuits/-1").status_code == 422
    assert c.get(f"{API}/circuits", params={"model_id": "x"}).status_code == 422


def test_node_stats_examples_and_edges(api_backend):
    c, model_id, circuit_id = api_backend.client, api_backend.model_id, api_backend.circuit_id
    engine = api_backend.world["circuit"]
    profile = api_backend.world["profile"]
    name = next(
        n.name
        for n in engine.nodes
        if n.site == "0.mlp.post_act"
        and any(e.dst == n.name for e in engine.edges)
        and any(e.src == n.name for e in engine.edges)
    )
    url = f"{API}/models/{model_id}/nodes/{quote(name)}"
    assert "%5B" in url
    node = c.get(url, params={"circuit_id": circuit_id}).json()
    expected = profile.node(name)
    assert node["site"] == "0.mlp.post_act" and node["layer"] == 0 and node["circuits"] == [circuit_id]
    assert node["stats"]["mean"] == pytest.approx(expected.mean, rel=1e-5, abs=1e-7)
    assert node["stats"]["frequency"] == pytest.approx(expected.frequency)
    assert node["stats"]["quantiles"]["0.5"] == pytest.approx(expected.quantiles[5], abs=1e-6)
    assert len(node["examples"]) == len(expected.examples) > 0
    bins = [e["bin"] for e in node["examples"]]
    order = ["top_0.1", "top_1", "top_10", "top_50", "bottom_0.1", "bottom_1", "bottom_10", "bottom_50"]
    assert bins == sorted(bins, key=order.index)
    for got, want in zip(node["examples"], expected.examples, strict=True):
        assert got["token_ids"] == want.tokens and got["center"] == want.center
        assert got["activation"] == pytest.approx(want.value)
        assert got["values"][got["center"]] == pytest.approx(want.value, rel=2e-3, abs=1e-3)
        assert len(got["tokens"]) == len(got["values"]) == len(got["token_ids"])
        if "\ufffd" not in "".join(got["tokens"]):
            assert got["text"] == "".join(got["tokens"])
    incoming = {(e["node"], e["kind"]) for e in node["incoming"]}
    outgoing = {(e["node"], e["kind"]) for e in node["outgoing"]}
    assert incoming == {(e.src, e.kind) for e in engine.edges if e.dst == name}
    assert outgoing == {(e.dst, e.kind) for e in engine.edges if e.src == name}
    assert incoming and outgoing

    unprofiled = c.get(f"{API}/models/{model_id}/nodes/{quote('1.attn.q[3]')}").json()
    assert unprofiled["stats"] is None and unprofiled["examples"] == [] and unprofiled["circuits"] == []
    for node_name, code in [
        ("1.mlp.post_act[99999]", 404),
        ("7.mlp.post_act[1]", 404),
        ("0.mlp.nothing[1]", 404),
        ("0.mlp.post_act", 422),
        ("garbage[1", 422),
        ("0.mlp.post_act[-1]", 422),
    ]:
        r = c.get(f"{API}/models/{model_id}/nodes/{quote(node_name)}")
        assert r.status_code == code, (node_name, r.text)
        assert r.json()["detail"]
    assert c.get(url, params={"circuit_id": 424242}).status_code == 404
    assert c.get(f"{API}/models/424242/nodes/{quote(name)}").status_code == 404

    site = c.get(f"{API}/models/{model_id}/sites/0.mlp.post_act/nodes", params={"order": "frequency"}).json()
    assert len(site["items"]) == 256
    freqs = [n["frequency"] for n in site["items"]]
    assert freqs == sorted(freqs, reverse=True)
    assert c.get(f"{API}/models/{model_id}/sites/1.attn.q/nodes").json()["items"] == []
    assert c.get(f"{API}/models/{model_id}/sites/9.attn.q/nodes").status_code == 404
    assert c.get(f"{API}/models/{model_id}/sites/0.attn.q/nodes", params={"order": "x"}).status_code == 422


def test_openapi_describes_every_route(api_backend):
    spec = api_backend.client.get("/openapi.json").json()
    for path, method in [
        ("/api/v1/models", "get"),
        ("/api/v1/models/{model_id}", "get"),
        ("/api/v1/models/{model_id}/metrics", "get"),
        ("/api/v1/tasks", "get"),
        ("/api/v1/tasks", "post"),
        ("/api/v1/tasks/{name}/samples", "get"),
        ("/api/v1/circuits", "get"),
        ("/api/v1/circuits/{circuit_id}", "get"),
        ("/api/v1/models/{model_id}/nodes/{node}", "get"),
        ("/api/v1/models/{model_id}/sites/{site}/nodes", "get"),
        ("/api/v1/models/{model_id}/playground", "post"),
        ("/api/v1/circuits/{circuit_id}/ablate", "post"),
    ]:
        op = spec["paths"][path][method]
        ok = op["responses"]["200" if method == "get" or "ablate" in path or "playground" in path else "201"]
        assert "$ref" in ok["content"]["application/json"]["schema"], path
