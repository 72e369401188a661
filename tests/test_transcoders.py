"""Transcoders and the SAE baseline: training, L0 and replacement CE, storage with the dense model's
fingerprint, feature profiles, attribution edges (activation x weight product) and circuits, CLI."""

import copy
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from backend.cli import app
from worker.engine.activations import ProfileConfig
from worker.engine.checkpoints import CheckpointError, load_model, save_model
from worker.engine.circuit import Circuit
from worker.engine.data import fixed_batches
from worker.engine.model import SiteEdit
from worker.engine.sites import feature_site
from worker.engine.tasks import build_task, get_task
from worker.engine.transcoders import (
    CircuitConfig,
    Replacement,
    SparseCoder,
    TranscoderConfig,
    _streams,
    attribute,
    attribution_edges,
    de_embedding,
    load_transcoders,
    matched_comparison,
    mlp_io,
    profile_features,
    prune_features,
    read_transcoders,
    task_loss_with,
    train_transcoders,
    transcoder_circuit,
)

TINY = TranscoderConfig(l1=[0.03, 0.3, 3.0], steps=60, batch_size=4, eval_batches=2, lr=3e-3)
TASK = "single_double_quote"


@pytest.fixture(scope="module")
def trained(test_model, tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("transcoders") / "tc"
    model, tok, run = load_model(test_model)
    progress = []
    tr = train_transcoders(model, tok, run, TINY, test_model, folder, lambda f, m: progress.append(f))
    return tr, model, tok, run, folder, progress


def test_replacement_pass_is_exact(test_model):
    model, tok, run = load_model(test_model)
    x = torch.randint(0, model.cfg.vocab_size, (2, 16))
    clean, acts = model(x, capture=[f"{i}.mlp.act_in" for i in range(model.cfg.n_layer)])
    # An identity replacement (the true MLP output) changes nothing, bit for bit.
    same, _ = Replacement(model, {i: (lambda inp, y: y) for i in range(model.cfg.n_layer)})(x)
    assert torch.equal(same, clean)
    # The transcoders' input is the MLP's normalised input before the model's AbsTopK: act_in after it.
    for i, (inp, _) in enumerate(mlp_io(model, x)):
        assert torch.equal(model._topk(inp, "mlp.act_in"), acts[f"{i}.mlp.act_in"])
    # Zeroing layer 1's MLP equals the model's own site edit doing the same.
    zero, _ = Replacement(model, {1: lambda inp, y: torch.zeros_like(y)})(x)
    ref, _ = model(x, edits={"1.mlp.resid_delta": SiteEdit(keep=torch.zeros(model.cfg.d_model))})
    assert torch.allclose(zero, ref)


def test_training_reduces_mse_and_l1_orders_sparsity(trained):
    tr, model, tok, run, folder, progress = trained
    sweep = tr.sweep
    first, last = sweep["history"][0], sweep["history"][-1]
    assert last["step"] == TINY.steps and progress[-1] == pytest.approx(1.0)
    for m, slot in enumerate(sweep["slots"]):
        # the strongest penalty (l1 3.0) may collapse the coder towards zero output, whose MSE can exceed
        # that of its first step; the weaker two must reconstruct better than they started
        if slot["l1_index"] < 2:
            assert last["mse"][m] < first["mse"][m], slot
        if slot["l1_index"] == 0:  # the weakest penalty: most of the MLP output reconstructed
            assert last["mse"][m] < 0.5 * first["mse"][m], (slot, first["mse"][m], last["mse"][m])
    points = sweep["points"]
    assert len(points) == 2 * 3 * model.cfg.n_layer
    for kind in ("transcoder", "sae"):
        for layer in range(model.cfg.n_layer):
            l0 = [
                p["l0"]
                for p in sorted(points, key=lambda p: p["l1"])
                if p["kind"] == kind and p["layer"] == layer
            ]
            assert l0[0] > l0[-1], (kind, layer, l0)  # 100x the L1 coefficient: far fewer active latents


def test_l0_and_replacement_ce_match_a_direct_computation(trained):
    tr, model, tok, run, folder, _ = trained
    _, val = _streams(run, tok)
    batches = fixed_batches(val, TINY.eval_batches, TINY.batch_size, model.cfg.n_ctx, seed=TINY.seed + 1)
    clean_ce = sum(
        torch.nn.functional.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item() for x, y in batches
    ) / len(batches)
    assert tr.sweep["reference"]["clean_ce"] == pytest.approx(clean_ce, rel=1e-5)
    layer, i = 1, 1
    coder = tr.coders["transcoder"][i][layer]
    active, ce, n = 0.0, 0.0, 0
    for x, y in batches:
        inp, out = mlp_io(model, x)[layer]
        active += float((coder.encode(inp) > 0).sum())
        n += y.numel()
        # By hand: layer `layer`'s MLP output set to the transcoder's output of its (unchanged) input.
        edit = SiteEdit(keep=torch.zeros(model.cfg.d_model), replace=coder(inp))
        logits, _ = model(x, edits={f"{layer}.mlp.resid_delta": edit})
        ce += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
    point = next(
        p
        for p in tr.sweep["points"]
        if p["kind"] == "transcoder" and p["l1_index"] == i and p["layer"] == layer
    )
    assert point["l0"] == pytest.approx(active / n, rel=1e-6)
    assert point["ce"] == pytest.approx(ce / n, rel=1e-5)
    for p in tr.sweep["points"]:
        assert torch.isfinite(torch.tensor(p["ce"])) and 0 <= p["dead_fraction"] <= 1
        if p["l1_index"] == 2:  # FVU ~ 1: the MLP is as good as gone, which costs CE
            assert p["ce"] > clean_ce and p["fvu"] > 0.5
        if p["l1_index"] == 0:
            assert p["fvu"] < 0.5
    # (on this barely trained test model a faithful coder may even beat the real MLP's CE by noise)


def test_matched_comparison_interpolates_in_log_l0():
    import math

    points = [
        {"kind": "sae", "l1": 1.0, "l1_index": 0, "layer": 0, "l0": 10.0, "ce": 3.0},
        {"kind": "sae", "l1": 2.0, "l1_index": 1, "layer": 0, "l0": 100.0, "ce": 2.0},
        {"kind": "transcoder", "l1": 1.0, "l1_index": 0, "layer": 0, "l0": math.sqrt(1000), "ce": 2.4},
        {"kind": "transcoder", "l1": 2.0, "l1_index": 1, "layer": 0, "l0": 1000.0, "ce": 1.5},
    ]
    m = matched_comparison(points)
    inside, outside = m["rows"]
    assert inside["sae_ce"] == pytest.approx(2.5) and not inside["extrapolated"]  # halfway in log L0
    assert inside["delta"] == pytest.approx(0.1)
    assert outside["sae_ce"] == pytest.approx(1.0) and outside["extrapolated"]  # the last segment's line
    assert m["transcoder_better_settings"] == 1 and [s["transcoder_better"] for s in m["settings"]] == [
        True,
        False,
    ]


def test_folder_round_trip_and_fingerprint_mismatch(trained, tmp_path):
    tr, model, tok, run, folder, _ = trained
    back, model2, _, _ = load_transcoders(folder)
    a, b = tr.coders["sae"][2][0], back.coders["sae"][2][0]
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
    assert back.sweep["points"] == json.loads(json.dumps(tr.sweep["points"]))
    assert torch.equal(model2.wte.weight, model.wte.weight)
    other = tmp_path / "other"
    shutil.copytree(tr.run.dense.path, other)
    changed, _, _ = load_model(other)
    with torch.no_grad():
        changed.wte.weight[0, 0] += 1.0
    save_model(other, changed)
    with pytest.raises(CheckpointError, match="not the one the transcoders were trained on"):
        load_transcoders(folder, other)
    (folder / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="invalid"):
        read_transcoders(folder)


def test_attribution_edges_are_activation_times_weight_product(trained):
    tr, model, tok, run, folder, _ = trained
    task = build_task(get_task(TASK), tok)
    prompts = task.train[:6]
    coders = tr.selected
    att = attribute(model, coders, task, prompts)
    # By hand: the replacement model's residual stream before layer 1's MLP, at every position.
    x = prompts.flatten(0, 1)
    rep = Replacement(model, {i: (lambda inp, y, c=c: c(inp)) for i, c in enumerate(coders)})
    rep(x)
    r1 = rep.resid_in[1].flatten(0, 1)
    z0, z1 = coders[0].encode(rep.inputs[0]).flatten(0, 1), coders[1].encode(rep.inputs[1]).flatten(0, 1)
    s1 = torch.rsqrt(r1.pow(2).mean(-1) + model.blocks[1].mlp.norm.eps_for(r1.dtype))
    g1 = model.blocks[1].mlp.norm.weight
    src = [int(i) for i in (z0 > 0).any(0).nonzero().flatten()[:5]]
    dst = [int(j) for j in (z1 > 0).any(0).nonzero().flatten()[:5]]
    assert src and dst
    edges = {(e.src, e.dst): e for e in attribution_edges(att, {0: src, 1: dst})}
    checked = 0
    for i in src:
        for j in dst:
            w = float(coders[0].W_dec[:, i] @ (g1 * coders[1].W_enc[j]))
            act = float((z0[:, i] * s1 * (z1[:, j] > 0)).mean())
            e = edges.get((f"0.mlp.transcoder[{i}]", f"1.mlp.transcoder[{j}]"))
            if act == 0:
                assert e is None
                continue
            assert e.kind == "attribution"
            assert e.weight_product == pytest.approx(w, rel=1e-4, abs=1e-7)
            assert e.activation == pytest.approx(act, rel=1e-4, abs=1e-7)
            assert e.weight == pytest.approx(e.activation * e.weight_product, rel=1e-6)
            checked += 1
    assert checked > 0
    # The weight factor is exact for the frozen-scale linearisation: feature i's contribution to j's
    # pre-activation at a position where i is active is a_i * s1 * weight_product.
    pos = int((z0[:, src[0]] > 0).nonzero()[0])
    contribution = (z0[pos, src[0]] * coders[0].W_dec[:, src[0]] * s1[pos] * g1) @ coders[1].W_enc[dst[0]]
    w = float(coders[0].W_dec[:, src[0]] @ (g1 * coders[1].W_enc[dst[0]]))
    assert float(contribution) == pytest.approx(float(z0[pos, src[0]] * s1[pos]) * w, rel=1e-4, abs=1e-7)


def test_feature_effects_predict_switching_a_feature_off(trained):
    tr, model, tok, run, folder, _ = trained
    task = build_task(get_task(TASK), tok)
    prompts = task.train[:8]
    coders = tr.selected
    att = attribute(model, coders, task, prompts)
    assert [e.shape for e in att.effects] == [(c.width,) for c in coders]
    # The effect is d(-task CE)/d(scale of the feature): check it by a central finite difference in
    # float64. The model's AbsTopK is discontinuous where its selection changes, so a float32 step
    # large enough to beat rounding (1e-2) can cross a selection boundary; a 1e-5 step in float64
    # almost never does and leaves rounding error far below the tolerance.
    layer = 0
    j = int(att.effects[layer].abs().argmax())
    model64 = copy.deepcopy(model).double()
    coders64 = [SparseCoder(*(t.double() for t in (c.W_enc, c.b_enc, c.W_dec, c.b_dec))) for c in coders]
    eps = 1e-5
    keep = [torch.ones(c.width, dtype=torch.float64) for c in coders]
    keep[layer][j] = 1 + eps
    up = task_loss_with(model64, coders64, task, prompts, keep)[0]
    keep[layer][j] = 1 - eps
    down = task_loss_with(model64, coders64, task, prompts, keep)[0]
    assert (down - up) / (2 * eps) == pytest.approx(float(att.effects[layer][j]), rel=0.02, abs=1e-5)
    keep = [torch.ones(c.width) for c in coders]
    base = task_loss_with(model, coders, task, prompts, keep)[0]
    # Switching the feature fully off changes the task CE (it was picked for its large effect).
    keep[layer][j] = 0
    assert task_loss_with(model, coders, task, prompts, keep)[0] != pytest.approx(base, abs=1e-6)


def test_pruning_keeps_exactly_the_needed_features():
    needed = {2, 5, 7}
    calls = []

    def loss(chosen):
        calls.append(len(chosen))
        return 0.1 * len(needed - set(chosen)) + 0.001 * len(chosen)

    kept, k = prune_features(list(range(10)), loss, target=0.01)
    assert k == 8  # the smallest top-k holding all three (loss 0.008)
    assert sorted(kept) == [2, 5, 7]  # the greedy pass removed the five unneeded ones among them
    kept, k = prune_features([3, 1], loss, target=0.0)  # unreachable: everything stays
    assert kept == [3, 1] and k == 2


def test_transcoder_circuit_and_its_json(trained):
    tr, model, tok, run, folder, _ = trained
    task = build_task(get_task(TASK), tok)
    cfg = CircuitConfig(attribution_pairs=16, eval_pairs=16, curve_points=4, tolerance=0.0)
    c = transcoder_circuit(tr, model, task, cfg, "test")
    run0 = c.runs[0]
    assert run0["circuit_loss_eval"] <= c.target_loss + 1e-9
    assert c.target_loss == pytest.approx(run0["replacement_loss_eval"])
    assert run0["kept"] == len(c.nodes) <= run0["bisection_k"] <= run0["candidates"]
    for key in ("full", "replacement", "circuit", "ablated"):
        assert torch.isfinite(torch.tensor(c.losses[key]))
    assert all(n.site == feature_site(n.layer) and n.name == f"{n.site}[{n.index}]" for n in c.nodes)
    taus = [abs(n.tau) for n in c.nodes]
    assert taus == sorted(taus, reverse=True)
    assert c.curve[0]["k"] == 0 and c.curve[-1]["k"] == run0["candidates"]
    # The JSON form carries both factors of every attribution edge (here: edges among the top features).
    att = attribute(model, tr.selected, task, task.train[:16])
    top = {layer: [int(j) for j in att.effects[layer].abs().topk(8).indices] for layer in (0, 1)}
    c.edges = attribution_edges(att, top)
    assert c.edges
    data = json.loads(json.dumps(c.to_json()))
    assert all({"activation", "weight_product"} <= set(e) for e in data["edges"])
    back = Circuit.from_json(data)
    assert back.edges == c.edges and back.nodes == c.nodes


def test_feature_profile_and_de_embedding(trained):
    tr, model, tok, run, folder, _ = trained
    cfg = ProfileConfig(tokens=2048, batch_tokens=1024, context=3, sample_positions=512, exact=4)
    profile = profile_features(model, tok, run, tr.selected, cfg)
    width = tr.run.width
    assert set(profile.sites) == {"0.mlp.transcoder", "1.mlp.transcoder"}
    with torch.no_grad():
        z = tr.selected[1].encode(mlp_io(model, profile.windows.tokens)[1][0])
    site = profile.sites["1.mlp.transcoder"]
    assert site.mean.shape == (width,)
    assert torch.allclose(site.mean, z.mean((0, 1)), atol=1e-5)
    assert torch.allclose(site.frequency, (z > 0).float().mean((0, 1)), atol=1e-6)
    fired = int(site.frequency.argmax())
    node = profile.node(f"1.mlp.transcoder[{fired}]")
    assert node.examples and all(ex.value > 0 for ex in node.examples if ex.side == "top")
    d = de_embedding(model, tr.selected, f"0.mlp.transcoder[{fired}]", k=5)
    scores = model.wte.weight @ (tr.selected[0].W_enc[fired] * model.blocks[0].mlp.norm.weight)
    assert [i for i, _ in d["top"]] == scores.topk(5).indices.tolist()
    with pytest.raises(ValueError, match="no such feature"):
        de_embedding(model, tr.selected, f"0.mlp.transcoder[{width}]")
    with pytest.raises(ValueError, match="not a transcoder feature"):
        de_embedding(model, tr.selected, "0.mlp.post_act[1]")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--l1", "a,b"], "--l1 takes comma-separated numbers"),
        (["--l1", "-1"], "l1.0: Input should be greater than 0"),
        (["--steps", "0"], "steps"),
    ],
)
def test_cli_train_bad_input_is_one_clear_line(test_model, tmp_path, args, message):
    r = CliRunner().invoke(
        app, ["transcoder", "train", "--dense", str(test_model), "--out", str(tmp_path / "t"), *args]
    )
    assert r.exit_code == 2, r.output
    assert r.output.count("error:") == 1 and message in r.output


def test_cli_errors_and_circuit(trained, tmp_path):
    tr, model, tok, run, folder, _ = trained
    runner = CliRunner()
    r = runner.invoke(
        app, ["transcoder", "train", "--dense", str(tmp_path / "none"), "--out", str(tmp_path / "t")]
    )
    assert r.exit_code == 2 and "error:" in r.output
    r = runner.invoke(
        app, ["transcoder", "circuit", "--transcoders", str(tmp_path), "--task", TASK, "--out", "x.json"]
    )
    assert r.exit_code == 2 and "holds no config.json" in r.output
    # (folder's config.json may have been overwritten by the round-trip test: write a fresh folder)
    good = tmp_path / "good"
    from worker.engine.transcoders import save_transcoders

    save_transcoders(good, tr)
    r = runner.invoke(
        app, ["transcoder", "circuit", "--transcoders", str(good), "--task", "no_such", "--out", "x.json"]
    )
    assert r.exit_code == 2 and "no_such" in r.output
    out = tmp_path / "c.json"
    r = runner.invoke(
        app, ["transcoder", "circuit", "--transcoders", str(good), "--task", TASK, "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    c = Circuit.from_json(json.loads(out.read_text()))
    assert c.task == TASK and all(e.activation is not None for e in c.edges)
    r = runner.invoke(app, ["transcoder", "report", "--transcoders", str(good)])
    assert r.exit_code == 0 and "matched L0" in r.output
