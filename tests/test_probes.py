"""Adversarial probes: the knob's prompts, the figures against direct forward passes, and the probe
job through the API (on SQLite and PostgreSQL)."""

import pytest
import torch
import torch.nn.functional as F

from worker.engine.ablation import Ablation, prunable_sites
from worker.engine.checkpoints import load_model
from worker.engine.masks import NodeMasks
from worker.engine.probes import PROBES, ProbeError, probe_prompts, run_probe
from worker.engine.prune import calibrated_loss, task_logits
from worker.engine.sites import parse_node
from worker.engine.tasks import build_task, get_task
from worker.engine.tasks.base import pair_labels, two_class_logits

API = "/api/v1"


def test_probe_prompts_append_the_filler_to_both_sides():
    prompts = torch.arange(12).view(2, 2, 3)
    out = probe_prompts(prompts, [7, 8], 3)
    assert out.shape == (2, 2, 9)
    assert torch.equal(out[..., :3], prompts)
    assert out[..., 3:].tolist() == [[[7, 8] * 3] * 2] * 2
    assert torch.equal(probe_prompts(prompts, [7, 8], 0), prompts)


def test_quote_probe_figures_match_direct_forward_passes(api_world):
    model, tok, run = load_model(api_world["folder"])
    circuit = api_world["circuit"]
    task = build_task(get_task("single_double_quote"), tok, max_pairs=64)
    ablation = Ablation("mean", api_world["means"])
    nodes = [n.name for n in circuit.nodes]
    spec = PROBES["quote_distance"]
    steps = []
    result = run_probe(
        model,
        tok,
        task,
        spec,
        ablation,
        nodes,
        nodes[0],
        circuit.calibration,
        16,
        lambda f, m: steps.append(f),
    )
    unit = tok.encode(spec.filler).ids
    fits = [v for v in spec.values if task.test.shape[-1] + v * len(unit) <= model.cfg.n_ctx]
    assert [p["value"] for p in result["points"]] == fits and len(fits) >= 3 and steps[-1] == 1.0
    labels = pair_labels(16)
    site, index = parse_node(nodes[0])
    for point in (result["points"][0], result["points"][-1]):
        prompts = probe_prompts(task.test[:16], unit, point["value"])
        with torch.no_grad():
            logits, acts = model(prompts.flatten(0, 1), capture=[site])
        full = two_class_logits(logits, task)
        assert point["full_accuracy"] == pytest.approx(float((full.argmax(-1) == labels).float().mean()))
        assert point["full_loss"] == pytest.approx(F.cross_entropy(full, labels).item(), abs=1e-5)
        last = acts[site][:, -1, index].view(-1, 2)
        assert (point["node_a"], point["node_b"]) == pytest.approx(
            (float(last[:, 0].mean()), float(last[:, 1].mean())), abs=1e-5
        )
        dims = model.site_dims()
        masks = NodeMasks({s: dims[s] for s in prunable_sites(model)}, 0.0, 0.0, None)
        keep = torch.zeros(masks.tau.numel())
        for n in nodes:
            s, i = parse_node(n)
            keep[masks.slices[s][0] + i] = 1
        kept = task_logits(model, task, prompts, keep, masks, ablation)
        scale, shift = circuit.calibration["scale"], circuit.calibration["shift"]
        assert point["circuit_loss"] == pytest.approx(calibrated_loss(kept, labels, scale, shift), abs=1e-5)
    # the circuit's figures are those of the circuit alone (the rest ablated): not the full model's
    assert any(p["circuit_loss"] != pytest.approx(p["full_loss"], abs=1e-4) for p in result["points"])
    with pytest.raises(ProbeError, match="runs on task bracket_counting"):
        run_probe(model, tok, task, PROBES["bracket_dilution"], ablation, nodes, nodes[0], {}, 4)


def test_probe_job_through_the_api(api_backend):
    api, c, circuit_id = api_backend.api, api_backend.client, api_backend.circuit_id
    listed = c.get(f"{API}/circuits/{circuit_id}/probes").json()
    assert [p["name"] for p in listed["available"]] == ["quote_distance"] and listed["results"] == []
    for params, message in [
        ({"circuit_id": circuit_id, "probe": "bracket_dilution"}, "runs on task bracket_counting"),
        ({"circuit_id": circuit_id, "probe": "quote_distance", "node": "0.attn.q[0]"}, "is not a node of"),
        ({"circuit_id": 999999, "probe": "quote_distance"}, "does not exist"),
        ({"circuit_id": circuit_id, "probe": "louder"}, "probe"),
        ({"circuit_id": circuit_id, "probe": "quote_distance", "pairs": 0}, "pairs"),
    ]:
        r = api.post_job("probe", params)
        assert r.status_code == 422 and message in r.text, (params, r.text)
    # The backend is shared by the session's API tests: jobs other modules left behind would hold the
    # in-process runner, so they are cancelled first.
    for status in ("running", "queued"):
        for j in c.get(f"{API}/jobs", params={"status": status, "limit": 500}).json()["items"]:
            c.post(f"{API}/jobs/{j['id']}/cancel", headers={"x-api-key": api.key})
    for j in c.get(f"{API}/jobs", params={"limit": 500}).json()["items"]:
        api.wait(j["id"], timeout=120)
    node = api_backend.world["circuit"].nodes[1].name
    job = api.wait(
        api.submit("probe", {"circuit_id": circuit_id, "probe": "quote_distance", "node": node, "pairs": 8}),
        timeout=600,  # behind any job of another key still on the shared runner
    )
    assert job["status"] == "succeeded", job
    results = c.get(f"{API}/circuits/{circuit_id}/probes").json()["results"]
    assert [r["job_id"] for r in results] == [job["id"]]
    assert results[0]["node"] == node and results[0]["pairs"] == 8 and results[0]["ablation"] == "mean"
    assert [p["value"] for p in results[0]["points"]][:3] == [0, 1, 2]
    assert c.get(f"{API}/circuits/999999/probes").status_code == 404
