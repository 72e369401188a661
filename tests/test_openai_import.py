"""Released models and circuits in, graphs out: the CLI (`import openai`, `import openai-circuit`,
`models add`, `export-graph`), the `import` job and GET /circuits/{id}/graph."""

import json
import subprocess
import sys

import pytest
import torch
from openai_release import write_release, write_viz_data

from worker.engine import openai_format as of
from worker.engine.checkpoints import load_model


def circuits(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "backend.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def release(test_model, tmp_path_factory):
    return write_release(test_model, tmp_path_factory.mktemp("release") / "csp_test")


def test_imported_model_computes_what_the_original_does(release, test_model, tmp_path):
    r = circuits("import", "openai", str(release), "--out", str(tmp_path / "model"))
    assert r.returncode == 0, r.stderr
    assert "weight-sparse" in r.stdout
    imported, tok, run = load_model(tmp_path / "model")
    original, tok0, _ = load_model(test_model)
    ids = torch.tensor([tok0.encode("def f(x):\n    return 'a'\n").ids])
    with torch.no_grad():
        a, _ = imported(ids)
        b, _ = original(ids)
    # the release's RMSNorm eps is float32's machine epsilon, ours 1e-6: close, not bit-equal
    assert (a - b).abs().max().item() < 1e-3
    assert run.model.topk_at is not None and len(run.model.topk_at) == 8 and run.model.pos_emb


def stderr_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[-1].startswith("error: "), r.stderr
    return lines[-1]


def test_cli_bad_release_exits_2_and_writes_nothing(release, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in release.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    sd = torch.load(bad / of.WEIGHTS_FILE, weights_only=True)
    sd["transformer.h.0.mlp.c_fc.weight"] = sd["transformer.h.0.mlp.c_fc.weight"][:, :-1]
    torch.save(sd, bad / of.WEIGHTS_FILE)
    r = circuits("import", "openai", str(bad), "--out", str(tmp_path / "out" / "model"))
    assert "transformer.h.0.mlp.c_fc.weight has shape" in stderr_error(r)
    assert not (tmp_path / "out" / "model").exists()
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def cli_env(data_dir, **extra):
    import os

    return {**os.environ, "CIRCUITS_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1", **extra}


def test_models_add_registers_a_cli_trained_folder(test_model, make_api, tmp_path):
    api = make_api()
    env = cli_env(api.settings.data_dir)
    r = circuits("models", "add", str(test_model), "--name", "from-cli", env=env)
    assert r.returncode == 0, r.stderr
    model_id = int(r.stdout.split()[1])
    body = api.client.get(f"/api/v1/models/{model_id}").json()
    assert body["status"] == "ready" and body["name"] == "from-cli" and body["kind"] == "sparse"
    assert body["summary"]["steps"] == 200 and len(body["sites"]) > 0
    # the same name twice, or a folder that is no model: exit 2, nothing added
    before = sorted(p.name for p in api.settings.models_dir.iterdir())
    assert "already exists" in stderr_error(
        circuits("models", "add", str(test_model), "--name", "from-cli", env=env)
    )
    assert "holds no config.json" in stderr_error(circuits("models", "add", str(tmp_path), env=env))
    assert sorted(p.name for p in api.settings.models_dir.iterdir()) == before
    assert api.client.get("/api/v1/models").json()["total"] == 1


def test_import_job_under_the_root_only(release, make_api, tmp_path):
    api = make_api(import_root=release.parent)
    assert api.post_job("import", {"source": "openai", "path": "../"}).status_code == 422
    r = api.post_job("import", {"source": "openai", "path": "csp_test/../../etc"})
    assert r.status_code == 422 and "outside the import root" in r.text
    (release.parent / "unknown").mkdir()
    (release.parent / "unknown" / of.CONFIG_FILE).write_text(json.dumps({"n_layer": 1, "shiny_switch": 1}))
    r = api.post_job("import", {"source": "openai", "path": "unknown"})
    assert r.status_code == 422 and "unknown architecture switch(es) shiny_switch" in r.text
    off = make_api(data_dir=tmp_path / "other")
    r = off.post_job("import", {"source": "openai", "path": "csp_test"})
    assert r.status_code == 422 and "CIRCUITS_IMPORT_ROOT" in r.text
    job = api.wait(api.submit("import", {"source": "openai", "path": "csp_test", "name": "released"}))
    assert job["status"] == "succeeded", job["error"]
    model = api.client.get(f"/api/v1/models/{job['result']['model_id']}").json()
    assert model["status"] == "ready" and model["config"]["imported_from"].startswith(
        "openai/circuit_sparsity"
    )
    assert [p.name for p in api.settings.models_dir.iterdir()] == [str(model["id"])]


def test_failed_import_job_leaves_no_row_or_folder(release, make_api, tmp_path):
    root = tmp_path / "root"
    bad = root / "bad"
    bad.mkdir(parents=True)
    for f in release.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    torch.save({"model": torch.load(bad / of.WEIGHTS_FILE, weights_only=True)}, bad / of.WEIGHTS_FILE)
    api = make_api(import_root=root)
    job = api.wait(api.submit("import", {"source": "openai", "path": "bad"}))
    assert job["status"] == "failed" and "not a plain state dict" in job["error"]
    assert api.client.get("/api/v1/models").json()["total"] == 0
    assert list(api.settings.models_dir.iterdir()) == []


def test_released_circuit_and_its_graph(release, make_api):
    api = make_api(import_root=release.parent)
    job = api.wait(api.submit("import", {"source": "openai", "path": "csp_test"}))
    model_id = job["result"]["model_id"]
    nodes = {"0.attn.v": [3, 5], "0.attn.resid_delta": [1, 7], "0.mlp.post_act": [2]}
    pairs = [
        [
            torch.tensor([[0.5, 0.0], [0.0, -0.25], [9.0, 9.0]]),
            [3, 5, "bias"],
            [1, 7],
            ("0.attn.v", "0.attn.resid_delta"),
        ],
        [torch.tensor([[0.0, 2.0]]), [2], [4, 7], ("0.mlp.post_act", "0.mlp.resid_delta")],  # 4 not kept
    ]
    viz = write_viz_data(
        release.parent / "viz" / "csp_test" / "single_double_quote_beeg" / "k" / "viz_data.pt",
        nodes,
        pairs,
        0.2,
        0.3,
    )
    env = cli_env(api.settings.data_dir)
    r = circuits("import", "openai-circuit", str(viz), "--model", str(model_id), env=env)
    assert r.returncode == 0, r.stderr
    circuit_id = int(r.stdout.split()[1])
    c = api.client.get(f"/api/v1/circuits/{circuit_id}").json()
    assert c["task"] == "single_double_quote" and c["model_id"] == model_id
    assert c["losses"] == {"full": pytest.approx(0.2), "circuit": pytest.approx(0.3)}  # halved
    assert sorted(n["name"] for n in c["nodes"]) == sorted(
        f"{s}[{i}]" for s, idx in nodes.items() for i in idx
    )
    edges = {(e["src"], e["dst"]): e["weight"] for e in c["edges"]}
    assert edges == {
        ("0.attn.v[3]", "0.attn.resid_delta[1]"): 0.5,
        ("0.attn.v[5]", "0.attn.resid_delta[7]"): -0.25,
    }
    assert c["nodes"][0]["tau"] == pytest.approx(2.0)  # the largest halved channel ablation loss first
    samples = c["validation"]["released"]["task_samples"]
    assert [s["token_ids"] for s in samples] == [[5, 6, 7], [8, 9], [5, 7, 9, 4], [6, 6]]
    assert [s["class"] for s in samples] == ["a", "a", "b", "b"]
    # a location that is no site of the model: exit 2, no circuit
    write_viz_data(viz.parent / "bad.pt", {"0.attn.z": [1]}, [], 0.2, 0.3)
    assert "0.attn.z" in stderr_error(
        circuits(
            "import",
            "openai-circuit",
            str(viz.parent / "bad.pt"),
            "--model",
            str(model_id),
            "--task",
            "single_double_quote",
            env=env,
        )
    )
    assert api.client.get("/api/v1/circuits").json()["total"] == 1

    graph = api.client.get(f"/api/v1/circuits/{circuit_id}/graph")
    assert graph.status_code == 200
    check_graph(graph.json(), n_nodes=5, n_links=2)
    out = release.parent / "graph.json"
    r = circuits("export-graph", "--circuit", str(circuit_id), "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text()) == graph.json()
    assert api.client.get("/api/v1/circuits/999/graph").status_code == 404


# circuit-tracer's frontend graph model (circuit_tracer/frontend/graph_models.py): field -> types
GRAPH_FIELDS = {
    "metadata": {"slug": str, "scan": str, "transcoder_list": list, "prompt_tokens": list, "prompt": str},
    "qParams": {"pinnedIds": list, "supernodes": list, "linkType": str, "clickedId": str, "sg_pos": str},
}
NODE_FIELDS = {
    "node_id": str,
    "feature": int,
    "layer": str,
    "ctx_idx": int,
    "feature_type": str,
    "jsNodeId": str,
    "clerp": str,
    "influence": (float, int, type(None)),
    "activation": (float, type(None)),
}


def check_graph(graph: dict, n_nodes: int, n_links: int) -> None:
    assert set(graph) >= {"metadata", "qParams", "nodes", "links"}
    for section, fields in GRAPH_FIELDS.items():
        for field, kind in fields.items():
            assert isinstance(graph[section][field], kind), (section, field)
    assert len(graph["nodes"]) == n_nodes and len(graph["links"]) == n_links
    ids = [n["node_id"] for n in graph["nodes"]]
    assert len(set(ids)) == len(ids)
    for node in graph["nodes"]:
        for field, kind in NODE_FIELDS.items():
            assert isinstance(node[field], kind), (field, node)
    for link in graph["links"]:
        assert link["source"] in ids and link["target"] in ids and isinstance(link["weight"], float)


def test_hook_names_map_to_our_sites():
    assert of.our_hook_name("3.resid_in") == "3.attn.resid_in"
    assert of.our_hook_name("3.resid_mid") == "3.mlp.resid_in"
    assert of.our_hook_name("3.attn.q") == "3.attn.q" and of.our_hook_name("final_resid") == "final_resid"
