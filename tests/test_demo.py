"""The demo bundle: packed weights, saved profiles, build -> load -> verify on `test`-preset models."""

import json

import pytest
import torch
from backend_support import FAST
from sqlalchemy import func, select

from backend import demo
from backend.db import Database, upgrade
from backend.models import ActivationExample, Circuit, CircuitNode, Model, NodeStat
from backend.settings import Settings
from worker.engine.activations import PROFILE, ProfileConfig, load_profile, profile_folder, save_profile
from worker.engine.checkpoints import (
    PACKED,
    WEIGHTS,
    _load_tensors,
    load_model,
    pack_weights,
    save_packed_model,
    unpack_model,
    unpack_weights,
)
from worker.engine.prune import PruneConfig

TASK = "while_return_true"
TINY_PRUNE = PruneConfig(
    steps=8,
    runs=1,
    batch_pairs=8,
    eval_pairs=16,
    curve_points=3,
    curve_pairs=16,
    faithfulness_pairs=8,
    target_loss=0.69,
)


def test_packed_weights_are_exact_or_float16_and_small(test_model, tmp_path):
    tensors, _ = _load_tensors(test_model / WEIGHTS)
    packed, shapes = pack_weights(tensors)
    back = unpack_weights(packed, shapes)
    assert all(torch.equal(back[k], tensors[k].float()) for k in tensors)
    sparse = [k for k in tensors if (tensors[k] != 0).float().mean() < 0.5]
    assert sparse and all(k + ".mask" in packed for k in sparse)
    half = unpack_weights(*pack_weights(tensors, half="all"))
    assert all(torch.equal(half[k], tensors[k].half().float()) for k in tensors)
    whole = unpack_weights(*pack_weights(tensors, half="whole"))
    assert all(torch.equal(whole[k], tensors[k].float()) for k in sparse)
    assert all(torch.equal(whole[k], tensors[k].half().float()) for k in tensors if k not in sparse)

    save_packed_model(test_model, tmp_path / "packed", half="whole")
    assert (tmp_path / "packed" / PACKED).stat().st_size < 0.6 * (test_model / WEIGHTS).stat().st_size
    save_packed_model(test_model, tmp_path / "packed")  # exact
    unpack_model(tmp_path / "packed", tmp_path / "model")
    a, _, _ = load_model(test_model)
    b, _, _ = load_model(tmp_path / "model")
    x = torch.randint(0, 1024, (2, 16))
    assert torch.equal(a(x)[0], b(x)[0])


def test_saved_profile_is_the_profile(test_model, tmp_path):
    profile = profile_folder(test_model, ProfileConfig(tokens=2048, examples=2))
    save_profile(profile, tmp_path)
    again = load_profile(tmp_path)
    a, b = profile.node("0.mlp.post_act[0]"), again.node("0.mlp.post_act[0]")
    assert (a.mean, a.frequency, len(a.examples)) == (b.mean, b.frequency, len(b.examples))
    assert [e.tokens for e in a.examples] == [e.tokens for e in b.examples]
    used = {e.doc for n in profile.nodes() for e in n.examples}
    assert all(again.windows.docs[i].text == profile.windows.docs[i].text for i in used)


@pytest.fixture(scope="module")
def bundle(test_model, dense_test_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    work = tmp_path_factory.mktemp("work")
    manifest = demo.build(
        test_model,
        dense_test_model,
        out,
        work,
        jobs=1,
        prune_cfg=TINY_PRUNE,
        tasks=[TASK],
        progress=lambda m: None,
    )
    return out, manifest


def test_build_writes_a_bundle_of_both_models(bundle):
    out, manifest = bundle
    assert [(c["kind"], c["task"]) for c in manifest["circuits"]] == [("sparse", TASK), ("dense", TASK)]
    assert set(manifest["tasks"][TASK]) == {"sparse", "dense"}
    assert manifest["tasks"][TASK]["sparse"]["prompts"] > 0
    for kind in demo.KINDS:
        assert (out / kind / PACKED).is_file() and (out / kind / PROFILE).is_file()
        assert not (out / kind / WEIGHTS).exists()  # only packed weights are shipped
    sparse = json.loads((out / "circuits" / f"sparse.{TASK}.json").read_text())
    assert sparse["validation"]["checks"]  # the sparse circuits carry their controls
    assert all("edges" in p for p in sparse["curve"])


def test_build_refuses_a_folder_that_is_not_a_bundle(test_model, dense_test_model, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(demo.BundleError, match="holds no demo bundle"):
        demo.build(test_model, dense_test_model, tmp_path, tmp_path / "w", tasks=[TASK], progress=print)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_load_adds_demo_rows_beside_the_users_once(bundle, database_url, tmp_path):
    out, manifest = bundle
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, **FAST)
    upgrade(settings)
    db = Database(settings)
    try:
        with db.session() as s:  # a user's model already holds the demo's name
            s.add(
                Model(name=demo.NAMES["sparse"], kind="sparse", status="ready", config={}, artifact_path="x")
            )
        ids = demo.load(db, settings, out, progress=lambda m: None)
        assert set(ids) == {"sparse", "dense"}
        with db.session() as s:
            rows = {m.name: m for m in s.scalars(select(Model))}
            assert not rows[demo.NAMES["sparse"]].demo  # the user's row, untouched
            ours = s.get(Model, ids["sparse"])
            assert ours.name == demo.NAMES["sparse"] + "-2" and ours.demo and ours.profiled
            assert (
                s.scalar(select(func.count()).select_from(NodeStat).where(NodeStat.model_id == ours.id)) > 0
            )
            assert s.scalar(select(func.count()).select_from(ActivationExample)) > 0
            circuit = s.scalar(select(Circuit).where(Circuit.model_id == ours.id))
            names = set(s.scalars(select(CircuitNode.name).where(CircuitNode.circuit_id == circuit.id)))
            shipped = json.loads((out / "circuits" / f"sparse.{TASK}.json").read_text())
            assert names == {n["name"] for n in shipped["nodes"]}
            assert circuit.validation["checks"]
        folder = settings.artifact(ours.artifact_path)
        load_model(folder)
        assert (folder / "means.safetensors").is_file()
        assert demo.load(db, settings, out, progress=lambda m: None) == {}  # once
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Model).where(Model.demo.is_(True))) == 2
    finally:
        db.dispose()


def test_verify_reproduces_the_shipped_node_sets(bundle):
    out, _ = bundle
    rows = demo.verify(out, progress=lambda m: None)
    assert [(r["kind"], r["same"]) for r in rows] == [("sparse", True), ("dense", True)]


def test_verify_notices_a_changed_circuit(bundle, tmp_path):
    import shutil

    out, _ = bundle
    copy = tmp_path / "bundle"
    shutil.copytree(out, copy)
    path = copy / "circuits" / f"sparse.{TASK}.json"
    circuit = json.loads(path.read_text())
    circuit["nodes"] = (
        circuit["nodes"][1:]
        if circuit["nodes"]
        else [{"name": "0.attn.q[0]", "site": "0.attn.q", "layer": 0, "index": 0, "tau": 1.0}]
    )
    path.write_text(json.dumps(circuit))
    rows = demo.verify(copy, tasks=[TASK], progress=lambda m: None)
    assert rows[0]["same"] is False
