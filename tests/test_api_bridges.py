"""Bridges over HTTP (SQLite, in-process jobs): the steering sweep endpoint checked against the engine,
its errors, and the `bridge` job (a new bridged model row; resumed after a restart)."""

import pytest
from backend_support import register_model, train_step
from sqlalchemy import update

from backend.db import Database
from backend.models import Job, Model
from worker.engine.bridges import load_bridged, steer
from worker.engine.tasks import build_task, get_task

API = "/api/v1"
TASK = "single_double_quote"


def set_summary(api, model_id: int, summary: dict) -> None:
    db = Database(api.settings)
    with db.session() as s:
        s.execute(update(Model).where(Model.id == model_id).values(summary=summary))
    db.dispose()


@pytest.fixture
def bridged_api(make_api, dense_test_model, bridged_test_model, test_model):
    api = make_api()
    ids = {
        "dense": register_model(api.settings, dense_test_model, "dense"),
        "bridged": register_model(api.settings, bridged_test_model, "bridged"),
        "sparse": register_model(api.settings, test_model, "sparse"),
    }
    set_summary(api, ids["bridged"], {"dense_model_id": ids["dense"]})
    return api, ids


def test_steer_sweep_matches_the_engine_and_rejects_bad_input(bridged_api, bridged_test_model):
    api, ids = bridged_api
    c, url = api.client, f"{API}/models/{ids['bridged']}/steer"
    body = {"task": TASK, "node": "0.mlp.post_act[5]", "strengths": [0, 2, 8], "pairs": 12}
    r = c.post(url, json=body)
    assert r.status_code == 401 and "x-api-key" in r.json()["detail"]  # steering needs a key
    c.headers["x-api-key"] = api.key
    r = c.post(url, json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_id"] == ids["bridged"] and out["dense_model_id"] == ids["dense"]
    assert out["strengths"] == [0, 2, 8] and out["prompts"] == 12 and out["location"] == "1.attn.resid_in"
    b = load_bridged(bridged_test_model)
    engine = steer(b, build_task(get_task(TASK), b.tok), "0.mlp.post_act[5]", strengths=[0, 2, 8], pairs=12)
    assert out["control_node"] == engine["control_node"] != out["node"]
    for which in ("node", "control"):
        for key, values in engine["curves"][which].items():
            assert out["curves"][which][key] == pytest.approx(values, abs=1e-5), (which, key)
    assert out["baseline"] == pytest.approx(engine["baseline"], abs=1e-5)
    r = c.post(url, json={**body, "correct_only": True})
    if r.status_code == 200:  # only the prompts the dense model gets right (maybe none of class a)
        assert r.json()["correct_only"] and r.json()["prompts"] <= 12
        assert r.json()["baseline"]["dense_p_a"] > 0.5
    else:
        assert r.status_code == 422 and "gets none of the 12" in r.json()["detail"]
    assert c.get(f"{API}/models/{ids['bridged']}").json()["bridged"] is True
    assert c.get(f"{API}/models/{ids['dense']}").json()["bridged"] is False

    for model_id, change, code, message in [
        (ids["bridged"], {"node": "nonsense"}, 422, "not a node name"),
        (ids["bridged"], {"node": "7.mlp.post_act[1]"}, 404, "has no site '7.mlp.post_act'"),
        (ids["bridged"], {"node": "0.mlp.post_act[99999]"}, 404, "has nodes 0..255"),
        (ids["bridged"], {"task": "no_such_task"}, 404, "task 'no_such_task' not found"),
        (ids["bridged"], {"mode": "multiply"}, 422, "mode"),
        (ids["bridged"], {"strengths": []}, 422, "strengths"),
        (ids["bridged"], {"pairs": 0}, 422, "pairs"),
        (ids["bridged"], {"colour": "red"}, 422, "colour"),
        (ids["sparse"], {}, 422, "has no bridges"),
        (424242, {}, 404, "model 424242 not found"),
    ]:
        r = c.post(f"{API}/models/{model_id}/steer", json={**body, **change})
        assert r.status_code == code, (change, r.text)
        assert message in r.json()["detail"], (change, r.text)
    nan = b'{"task": "%s", "node": "embed[1]", "strengths": [NaN]}' % TASK.encode()
    r = c.post(url, content=nan, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "strengths" in r.json()["detail"]

    set_summary(api, ids["bridged"], {"dense_model_id": ids["sparse"]})  # the wrong dense model
    r = c.post(url, json=body)
    assert r.status_code == 409 and "does not match the bridges" in r.json()["detail"]
    set_summary(api, ids["bridged"], {"dense_model_id": 999})
    r = c.post(url, json=body)
    assert r.status_code == 409 and "dense model 999" in r.json()["detail"]


def test_bridge_job_makes_a_bridged_model_and_resumes_after_a_restart(bridged_api, make_api):
    api, ids = bridged_api
    for params, message in [
        ({"dense_model_id": 999}, "params.dense_model_id: model 999 does not exist"),
        ({"dense_model_id": ids["dense"], "steps": 10**6}, "CIRCUITS_MAX_TRAIN_STEPS"),
        ({"dense_model_id": ids["dense"], "train": {"lr": -1}}, "params.train.lr"),
        ({"dense_model_id": ids["dense"], "train": {"corpus": "/etc"}}, "come from the dense model"),
        ({"dense_model_id": ids["dense"], "kl_coef": -1}, "kl_coef"),
        ({}, "dense_model_id"),
    ]:
        r = api.post_job("bridge", params)
        assert r.status_code == 422 and message in r.json()["detail"], (params, r.text)

    params = {"dense_model_id": ids["dense"], "preset": "test", "steps": 40, "name": "tiny-bridged"}
    params["train"] = {"checkpoint_every": 3, "eval_every": 20}
    job_id = api.submit("bridge", params)
    api.wait(job_id, lambda j: train_step(j) >= 4)  # past the checkpoint at step 3
    api.close()  # the server shuts down mid-training
    db = Database(api.settings)
    with db.session() as s:
        assert s.get(Job, job_id).status == "queued"
    db.dispose()
    api2 = make_api()  # same data dir
    job = api2.wait(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    assert job["result"]["resumed_from_step"] >= 3
    model = api2.client.get(f"{API}/models/{job['result']['model_id']}").json()
    assert model["name"] == "tiny-bridged" and model["bridged"] and model["kind"] == "sparse"
    assert model["config"]["bridge"]["dense"]["n_layer"] == 2 and model["config"]["train"]["steps"] == 40
    summary = model["summary"]
    assert summary["dense_model_id"] == ids["dense"] and summary["steps"] == 40
    assert list(summary["bridge"]["locations"]) == [
        "0.attn.resid_in", "0.mlp.resid_in", "1.attn.resid_in", "1.mlp.resid_in", "final_resid"
    ]  # fmt: skip
    r = api2.client.post(
        f"{API}/models/{model['id']}/steer",
        json={"task": TASK, "node": "1.attn.v[3]", "strengths": [0, 1]},
        headers={"x-api-key": api2.key},  # steering needs a key
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["curves"]["control"]["dense_p_b"]) == 2
