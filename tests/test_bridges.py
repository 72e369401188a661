"""Bridges (worker/engine/bridges.py): residual locations and passes that start there, joint training of
a sparse model with bridges to a frozen dense model (losses, evaluation, resume, fingerprint), steering,
and the `circuits bridge` commands."""

import json
import math
import subprocess
import sys

import pytest
import torch

from worker.engine import checkpoints as ck
from worker.engine.bridges import (
    BRIDGES,
    BridgeError,
    bridged_run,
    final_report,
    load_bridged,
    next_location,
    node_class_means,
    steer,
    train_bridged,
)
from worker.engine.config import ModelConfig
from worker.engine.model import SparseGPT
from worker.engine.sites import resid_locations, site_dims
from worker.engine.tasks import load_task

LOCATIONS = ["0.attn.resid_in", "0.mlp.resid_in", "1.attn.resid_in", "1.mlp.resid_in", "final_resid"]


def records(folder):
    return [json.loads(line) for line in (folder / ck.METRICS).read_text().splitlines()]


def test_a_pass_started_at_a_residual_location_reproduces_the_full_pass():
    cfg = ModelConfig(vocab_size=64, n_ctx=16, d_model=32, n_layer=2, d_head=8)
    torch.manual_seed(0)
    model = SparseGPT(cfg).eval()
    assert resid_locations(cfg) == LOCATIONS
    assert not set(LOCATIONS[:-1]) & set(site_dims(cfg))  # not node sites: pruning never sees them
    x = torch.randint(0, 64, (3, 16))
    logits, acts = model(x, capture=LOCATIONS + ["embed", "1.mlp.post_act"])
    assert torch.equal(acts["0.attn.resid_in"], acts["embed"])
    for loc in LOCATIONS:
        started, later = model(x, start=(loc, acts[loc]), capture=["1.mlp.post_act"])
        torch.testing.assert_close(started, logits)
        if loc != "final_resid" and loc != "1.mlp.resid_in":
            torch.testing.assert_close(later["1.mlp.post_act"], acts["1.mlp.post_act"])
    with pytest.raises(ValueError, match="cannot start at '0.attn.q'"):
        model(x, start=("0.attn.q", acts["embed"]))


def test_bridge_training_writes_per_location_figures_and_learns(bridged_test_model):
    recs = records(bridged_test_model)
    assert [r["step"] for r in recs] == list(range(1, 31))
    for r in recs:
        for key in ("loss", "objective", "nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d"):
            assert math.isfinite(r[key]) and r[key] >= 0, (r["step"], key)
        assert r["objective"] > r["loss"]  # CE plus the bridge terms
    first, last = recs[0], recs[-1]
    assert last["nmse_enc"] < 0.8 * first["nmse_enc"] and last["nmse_dec"] < 0.8 * first["nmse_dec"]
    assert last["kl_s2d"] < first["kl_s2d"] and last["loss"] < first["loss"]
    evals = [r for r in recs if "kl_sparse" in r]
    assert [r["step"] for r in evals] == [15, 30]
    report = final_report(bridged_test_model)
    assert report["step"] == 30 and list(report["locations"]) == LOCATIONS
    for loc, figures in report["locations"].items():
        assert set(figures) == {"nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d"}
        assert all(math.isfinite(v) and v >= 0 for v in figures.values()), loc
    assert report["kl_sparse"] > 0 and report["dense_val_loss"] > 0
    assert (bridged_test_model / BRIDGES).is_file() and (bridged_test_model / ck.WEIGHTS).is_file()


def test_encoder_keeps_exactly_k_and_hybrid_passes_have_full_shape(bridged_test_model):
    b = load_bridged(bridged_test_model)
    k = b.bridges.k
    assert k == b.sparse.cfg.d_model // 4
    x = torch.randint(0, b.dense.cfg.vocab_size, (2, 24))
    with torch.no_grad():
        _, dense_acts = b.dense(x, capture=LOCATIONS)
        _, sparse_acts = b.sparse(x, capture=LOCATIONS)
        for loc in LOCATIONS:
            encoded = b.bridges.encode(loc, dense_acts[loc])
            assert encoded.shape == (2, 24, b.sparse.cfg.d_model)
            assert ((encoded != 0).sum(-1) == k).all()
            to_sparse, _ = b.sparse(x, start=(loc, encoded))
            to_dense, _ = b.dense(x, start=(loc, b.bridges.decode(loc, sparse_acts[loc])))
            assert to_sparse.shape == to_dense.shape == (2, 24, b.dense.cfg.vocab_size)
            assert torch.isfinite(to_sparse).all() and torch.isfinite(to_dense).all()


def test_bridge_training_resumes_bit_for_bit(tmp_path, dense_test_model):
    run = bridged_run(dense_test_model, "test", steps=12)
    run.train = run.train.model_copy(update={"checkpoint_every": 4, "eval_every": 6})
    train_bridged(run, tmp_path / "whole")

    class Killed(Exception):
        pass

    def kill_at_10(fraction, message, **rec):  # the engine's progress protocol (figures: the record)
        if rec.get("step") == 10 and "loss" in rec:
            raise Killed

    with pytest.raises(Killed):
        train_bridged(run, tmp_path / "cut", on_progress=kill_at_10)
    assert not (tmp_path / "cut" / ck.WEIGHTS).exists() and not (tmp_path / "cut" / BRIDGES).exists()
    train_bridged(None, tmp_path / "cut", resume=True)  # from the step-8 checkpoint, config from the folder
    assert records(tmp_path / "cut") == [
        {**r, "tokens_per_s": c["tokens_per_s"]}
        for r, c in zip(records(tmp_path / "whole"), records(tmp_path / "cut"), strict=True)
    ]
    a, b = load_bridged(tmp_path / "whole"), load_bridged(tmp_path / "cut")
    for x, y in ((a.sparse, b.sparse), (a.bridges, b.bridges)):
        for (name, p), (_, q) in zip(x.state_dict().items(), y.state_dict().items(), strict=True):
            assert torch.equal(p, q), name


def test_a_dense_model_other_than_the_trained_one_is_refused(tmp_path, bridged_test_model, test_model):
    with pytest.raises(BridgeError, match="does not match the bridges: .*weights_sha256 differs"):
        load_bridged(bridged_test_model, dense_folder=test_model)
    run = ck.read_run_config(bridged_test_model)
    assert run.bridge is not None and run.bridge.dense.n_layer == 2
    with pytest.raises(BridgeError, match="weights_sha256 differs"):
        train_bridged(run, tmp_path / "other", dense_folder=test_model)
    with pytest.raises(BridgeError, match="not a bridged model"):
        load_bridged(test_model)


def test_steering_sweep_is_well_formed(bridged_test_model):
    b = load_bridged(bridged_test_model)
    task = load_task("single_double_quote", b.tok)
    node = "0.mlp.post_act[5]"
    out = steer(b, task, node, mode="add", strengths=[0.0, 2.0, 8.0], pairs=16)
    assert out["location"] == "1.attn.resid_in" == next_location(b.sparse.cfg, "0.mlp.post_act")
    assert out["prompts"] == 16 and out["strengths"] == [0.0, 2.0, 8.0]
    assert out["control_node"].startswith("0.mlp.post_act[") and out["control_node"] != node
    base = out["baseline"]
    for curve in out["curves"].values():
        assert set(curve) == {
            f"{m}_p_{c}{v}" for m in ("dense", "sparse") for c in "ab" for v in ("", "_vocab")
        }
        assert all(len(v) == 3 and all(0 <= p <= 1 for p in v) for v in curve.values())
        for i in range(3):
            assert curve["dense_p_a"][i] + curve["dense_p_b"][i] == pytest.approx(1)
            assert curve["dense_p_b_vocab"][i] <= curve["dense_p_b"][i]
        # adding 0 changes nothing: the dense model's unsteered probabilities
        assert curve["dense_p_b"][0] == pytest.approx(base["dense_p_b"], abs=1e-6)
        assert curve["sparse_p_b"][0] == pytest.approx(base["sparse_p_b"], abs=1e-6)
    assert out["curves"]["node"]["dense_p_b"][2] != pytest.approx(base["dense_p_b"], abs=1e-4)

    solved = 0
    for cls in "ab":  # every prompt is right for one of the two classes: at least one class has some
        try:
            right = steer(b, task, node, strengths=[0.0], prompt_class=cls, pairs=16, correct_only=True)
        except BridgeError as e:
            assert "gets none of the 16" in str(e)
            continue
        solved += right["prompts"]
        assert right["correct_only"] and right["baseline"][f"dense_p_{cls}"] > 0.5
    assert 0 < solved <= 32

    # A residual channel that differs between the classes (sparse training leaves some constant).
    channels = [f"final_resid[{i}]" for i in range(b.sparse.cfg.d_model)]
    means = node_class_means(b.sparse, task, channels, pairs=8)
    node = max(channels, key=lambda n: abs(means[n]["mean_a"] - means[n]["mean_b"]))
    defaults = steer(b, task, node, mode="set", pairs=8, prompt_class="b", position="all")
    m = defaults["node_means"]
    assert defaults["location"] == "final_resid" and len(defaults["strengths"]) == 7
    assert defaults["strengths"][0] == pytest.approx(m["b"]) and defaults["strengths"][2] == pytest.approx(
        m["a"]
    )

    for node, message in [
        ("0.attn.nothing[1]", "unknown site '0.attn.nothing'"),
        ("0.mlp.post_act[100000]", "has nodes 0..255, not 100000"),
        ("0.attn.resid_in[0]", "unknown site '0.attn.resid_in'"),
        ("nonsense", "is not a node name"),
    ]:
        with pytest.raises(ValueError, match=message):
            steer(b, task, node, strengths=[1.0], pairs=4)
    with pytest.raises(BridgeError, match="mode must be"):
        steer(b, task, node, mode="multiply", strengths=[1.0], pairs=4)
    with pytest.raises(BridgeError, match="finite"):
        steer(b, task, "0.mlp.post_act[5]", strengths=[float("nan")], pairs=4)


def circuits(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "backend.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_cli_bridge_report_steer_and_errors(tmp_path, bridged_test_model, test_model):
    r = circuits("bridge", "report", "--model", str(bridged_test_model), "--json")
    assert r.returncode == 0, r.stderr
    assert list(json.loads(r.stdout)["locations"]) == LOCATIONS
    r = circuits(
        "bridge", "steer", "--model", str(bridged_test_model), "--task", "single_double_quote",
        "--node", "1.mlp.post_act[7]", "--strengths", "0,4", "--pairs", "8", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["node"] == "1.mlp.post_act[7]" and out["location"] == "final_resid"
    assert len(out["curves"]["control"]["dense_p_b"]) == 2
    model = ["--model", str(bridged_test_model), "--task", "single_double_quote"]
    for args, message in [
        (["steer", *model, "--node", "9.mlp.post_act[1]"], "unknown site '9.mlp.post_act'"),
        (["steer", *model, "--node", "0.mlp.post_act[1]", "--strengths", "1,x"], "--strengths must be"),
        (["steer", *model, "--node", "0.mlp.post_act[1]", "--mode", "mul"], "mode must be 'add' or 'set'"),
        (["steer", *model, "--node", "1.mlp.post_act[1]", "--dense", str(test_model)], "does not match"),
        (["steer", "--model", str(test_model), "--task", "x", "--node", "embed[0]"], "not a bridged model"),
        (["train", "--out", str(tmp_path / "b")], "--dense is required"),
        (["train", "--out", str(tmp_path / "b"), "--dense", str(tmp_path)], "no config.json"),
        (["train", "--out", str(tmp_path / "b"), "--dense", str(test_model), "--steps", "0"], "positive"),
        (["train", "--resume", "--out", str(test_model)], "not a bridge training run"),
    ]:
        r = circuits("bridge", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.strip().splitlines()[-1].startswith("error:") and message in r.stderr, (
            args,
            r.stderr,
        )
    assert not (tmp_path / "b").exists()
