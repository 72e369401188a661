import json
import subprocess
import sys

import pytest
import torch

from worker.engine import checkpoints as ck
from worker.engine.ablation import (
    Ablation,
    load_or_compute_means,
    load_or_make_windows,
    nonsense_task,
    prunable_sites,
    shuffled_labels,
)
from worker.engine.circuit import SCHEMA_VERSION, Circuit, Edge, Node, edges_from_weights, size_comparison
from worker.engine.prune import (
    MAX_CALIBRATION_SCALE,
    NodeMasks,
    PruneConfig,
    calibrate,
    calibrated_fit,
    calibrated_loss,
    curve_areas,
    drop_unneeded,
    find_circuit,
    keep_top,
    prune,
    split_files,
    split_train,
    task_logits,
    validate,
)
from worker.engine.sites import parse_node
from worker.engine.tasks import build_task, get_task
from worker.engine.tasks.base import source_file


@pytest.fixture(scope="module")
def loaded(test_model):
    model, tok, run = ck.load_model(test_model)
    means = load_or_compute_means(test_model, model, tok, run, n_batches=2)
    windows = load_or_make_windows(test_model, model, tok, run, n_batches=2)
    task = build_task(get_task("while_return_true"), tok, max_pairs=64)
    return model, tok, Ablation("mean", means, windows), task


def test_masks_are_heaviside_forward_sigmoid_backward():
    masks = NodeMasks({"0.attn.q": 4}, 0.0, 0.0, torch.Generator())
    with torch.no_grad():
        masks.tau.copy_(torch.tensor([-0.5, -0.1, 0.2, 0.9]))
    keep = masks.keep(temperature=1.0)
    assert keep.tolist() == [0.0, 0.0, 1.0, 1.0]
    keep.sum().backward()
    s = torch.sigmoid(masks.tau.detach())
    torch.testing.assert_close(masks.tau.grad, s * (1 - s))


def test_calibration_recovers_scale_and_shift():
    torch.manual_seed(0)
    d = torch.randn(4000) * 2
    labels = (torch.rand(4000) > torch.sigmoid(0.5 * d - 0.3)).long()  # P(A) = sigmoid(0.5 d - 0.3)
    logits2 = torch.stack([d, torch.zeros_like(d)], -1)
    scale, shift = calibrate(logits2, labels)
    assert scale == pytest.approx(0.5, abs=0.08) and shift == pytest.approx(-0.3, abs=0.1)
    assert calibrated_loss(logits2, labels, scale, shift) <= calibrated_loss(logits2, labels, 1.0, 0.0)


def test_calibration_scale_is_bounded_and_never_turns_the_answer_around():
    torch.manual_seed(0)
    d = torch.randn(512) * 0.01
    labels = (d < 0).long()  # perfectly separated by tiny differences: the unbounded scale is infinite
    separated = torch.stack([d, torch.zeros_like(d)], -1)
    scale, _ = calibrate(separated, labels)
    assert scale == pytest.approx(MAX_CALIBRATION_SCALE, rel=1e-2)
    scale, _ = calibrate(separated, 1 - labels)  # the circuit's answer is the wrong one
    assert 0 < scale < 0.05


def test_means_cover_every_site_and_are_cached(test_model, loaded):
    model, _, ablation, _ = loaded
    means = ablation.means
    assert set(means) == set(model.site_dims())
    assert all(means[s].shape == (d,) for s, d in model.site_dims().items())
    assert (test_model / "means.safetensors").is_file()


def test_edges_are_the_nonzero_weights_between_kept_nodes(loaded):
    model, *_ = loaded
    w = model.blocks[1].mlp.fc_in.weight
    j, i = (w != 0).nonzero()[0].tolist()
    zero_j, zero_i = (w == 0).nonzero()[0].tolist()
    nodes = [
        f"1.mlp.act_in[{i}]",
        f"1.mlp.post_act[{j}]",
        f"1.mlp.act_in[{zero_i}]",
        f"1.mlp.post_act[{zero_j}]",
    ]
    edges = edges_from_weights(model, nodes)
    pairs = {(e.src, e.dst): e.weight for e in edges if e.kind == "weight"}
    assert pairs[(f"1.mlp.act_in[{i}]", f"1.mlp.post_act[{j}]")] == pytest.approx(w[j, i].item())
    assert (f"1.mlp.act_in[{zero_i}]", f"1.mlp.post_act[{zero_j}]") not in pairs
    outs, ins = sorted({j, zero_j}), sorted({i, zero_i})
    assert len(pairs) == int((w[outs][:, ins] != 0).sum())
    res = edges_from_weights(model, ["0.attn.resid_delta[3]", "1.mlp.act_in[3]", "0.mlp.act_in[3]"])
    gains = {e.dst: e.weight for e in res if e.kind == "residual"}
    assert gains == {
        "0.mlp.act_in[3]": pytest.approx(model.blocks[0].mlp.norm.weight[3].item()),
        "1.mlp.act_in[3]": pytest.approx(model.blocks[1].mlp.norm.weight[3].item()),
    }


def test_find_circuit_produces_a_complete_circuit(loaded):
    model, _, ablation, task = loaded
    cfg = PruneConfig(steps=4, runs=2, eval_pairs=32, batch_pairs=16)
    seen = []
    circuit = find_circuit(model, task, ablation, cfg, "test-model", lambda f, m: seen.append(f))
    # Faithfulness: under every mode the full node set is the full model (f = 1) and m is the mean
    # logit difference; the scores are the areas of the stored curve.
    faith = circuit.faithfulness
    assert set(faith["modes"]) == {"mean", "zero", "resample"} and circuit.ablation == "mean"
    for curve in faith["modes"].values():
        assert [p["percent"] for p in curve["points"]] == [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]
        assert curve["points"][-1]["nodes"] == sum(model.site_dims()[s] for s in prunable_sites(model))
        assert curve["points"][-1]["m"] == pytest.approx(curve["m_full"], abs=1e-5)
        assert curve["points"][-1]["f"] == pytest.approx(1.0, abs=1e-4)
        assert (curve["cpr"], curve["cmd"]) == pytest.approx(curve_areas(curve["points"]))
    assert faith["modes"]["mean"]["m_full"] == pytest.approx(faith["modes"]["zero"]["m_full"])
    assert "circuit_train_masks" in circuit.losses
    assert seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)
    data = json.loads(json.dumps(circuit.to_json()))
    assert data["schema_version"] == SCHEMA_VERSION
    assert {"nodes", "edges", "losses", "curve", "task", "model"} <= set(data)
    assert set(data["losses"]) >= {"full", "circuit", "ablated"}
    assert [r["stage"] for r in data["runs"]][:2] == ["search", "search"]
    greedy = [r for r in data["runs"] if r["stage"] == "greedy"]
    if greedy:  # the greedy pass never grows the circuit and keeps it within the target
        assert greedy[0]["nodes"] == len(data["nodes"]) <= min(r["nodes"] for r in data["runs"])
        assert greedy[0]["loss"] <= cfg.target_loss
    names = {n["name"] for n in data["nodes"]}
    sites = set(prunable_sites(model))
    assert all(parse_node(n)[0] in sites for n in names)
    assert all(e["src"] in names and e["dst"] in names for e in data["edges"])
    ks = [p["k"] for p in data["curve"]]
    assert ks == sorted(ks) and ks[0] == 0
    assert Circuit.from_json(data).to_json() == data


def test_shuffled_control_keeps_prompts_but_breaks_labels(loaded):
    *_, task = loaded
    control = shuffled_labels(task, seed=0)
    assert control.test.shape == task.test.shape
    swapped = (control.test[:, 0] != task.test[:, 0]).any(-1)
    assert 0.2 < swapped.float().mean() < 0.8
    assert torch.equal(control.test[swapped].flip(1), task.test[swapped])


def test_prune_cli_writes_json_and_rejects_bad_input(tmp_path, test_model):
    out = tmp_path / "c.json"
    args = [sys.executable, "-m", "backend.cli", "prune", "--model", str(test_model)]
    r = subprocess.run([*args, "--task", "nope", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown task" in r.stderr and not out.exists()
    r = subprocess.run(
        [*args, "--task", "while_return_true", "--target-loss", "-1", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "target_loss" in r.stderr and not out.exists()
    r = subprocess.run(
        [*args, "--task", "while_return_true", "--ablation", "median", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "ablation" in r.stderr and not out.exists()
    r = subprocess.run(
        [*args, "--task", "while_return_true", "--runs", "1", "--steps", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["task"] == "while_return_true"


def test_greedy_pass_leaves_out_only_nodes_the_target_does_not_need(loaded):
    model, _, ablation, task = loaded
    held_out = task.train[:32]
    masks = NodeMasks({s: model.site_dims()[s] for s in prunable_sites(model)}, 0.0, 0.0, torch.Generator())
    order = torch.randperm(masks.tau.numel(), generator=torch.Generator().manual_seed(0)).tolist()
    k = 300
    full = calibrated_fit(model, task, ablation, masks, keep_top(masks, order, k), held_out)[0]
    target = full + 0.05
    new_order, new_k, loss, *_ = drop_unneeded(model, task, ablation, masks, order, k, target, held_out, 16)
    assert sorted(new_order) == sorted(order) and new_k <= k and loss <= target
    assert set(new_order[:new_k]) <= set(order[:k])
    assert set(order[: k - 16]) <= set(new_order[:new_k])  # only the 16 lowest-ranked were tried
    assert loss == pytest.approx(
        calibrated_fit(model, task, ablation, masks, keep_top(masks, new_order, new_k), held_out)[0]
    )


def test_size_comparison_geometric_mean():
    def circuit(n_nodes, n_edges):
        nodes = [Node(f"0.mlp.post_act[{i}]", "0.mlp.post_act", 0, i, 1.0) for i in range(n_nodes)]
        edges = [Edge("0.mlp.act_in[0]", "0.mlp.post_act[0]", 1.0, "weight") for _ in range(n_edges)]
        return Circuit("t", "m", 0.15, nodes, edges, {"circuit": 0.1}, {}, [])

    table = size_comparison({"a": (circuit(2, 4), circuit(8, 64)), "b": (circuit(0, 0), circuit(0, 0))})
    assert [r["edge_ratio"] for r in table["tasks"]] == [16.0, 1.0]
    assert table["geomean_edge_ratio"] == pytest.approx(4.0)
    assert table["geomean_node_ratio"] == pytest.approx(2.0)


def test_held_out_pairs_come_from_files_the_masks_never_see(loaded):
    *_, task = loaded
    held, rest = split_train(task, eval_pairs=16)
    assert 0 < len(held) <= 16 + max(task.files("train").values())
    assert len(held) + len(rest) == len(task.train)
    pairs = zip(task.train, task.sources["train"], strict=True)
    rows = {tuple(p.flatten().tolist()): source_file(s) for p, s in pairs}
    held_files = {rows[tuple(p.flatten().tolist())] for p in held}
    rest_files = {rows[tuple(p.flatten().tolist())] for p in rest}
    assert held_files and rest_files and not held_files & rest_files
    again, _ = split_train(task, eval_pairs=16)
    assert torch.equal(held, again)  # fixed by the seed


def test_runs_are_chosen_on_selection_pairs_from_files_of_their_own(loaded):
    """select_pairs: a third file-disjoint part judges each run, with the calibration that sized it."""
    from worker.engine.tasks.base import pair_labels

    model, _, ablation, task = loaded
    parts = split_files(task, [16, 16])
    assert len(parts) == 3 and sum(len(p) for p in parts) == len(task.train)
    rows = {
        tuple(p.flatten().tolist()): source_file(s)
        for p, s in zip(task.train, task.sources["train"], strict=True)
    }
    files = [{rows[tuple(p.flatten().tolist())] for p in part} for part in parts]
    assert all(files) and not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    assert torch.equal(parts[0], split_train(task, 16)[0])  # the bisection pairs are those of select_pairs=0
    for select_pairs, judged_on in ((0, parts[0]), (16, parts[1])):
        cfg = PruneConfig(
            steps=2, runs=2, eval_pairs=16, batch_pairs=8, refine_nodes=0, select_pairs=select_pairs
        )
        best = prune(model, task, ablation, cfg)
        logits = task_logits(
            model, task, judged_on, keep_top(best.masks, best.order, best.k), best.masks, ablation
        )
        expected = calibrated_loss(logits, pair_labels(len(judged_on)), best.scale, best.shift)
        assert best.selection_loss == pytest.approx(expected, abs=1e-6)


def test_each_ablation_mode_replaces_masked_nodes_by_its_definition(loaded):
    model, _, ablation, task = loaded
    site = prunable_sites(model)[0]  # the first edited site sees the clean activations upstream
    dim = model.site_dims()[site]
    keep = torch.ones(dim)
    keep[::3] = 0
    x = task.test[:4].flatten(0, 1)
    _, clean = model(x, capture=[site])
    clean = clean[site]
    edited = {}
    for mode in ("mean", "zero", "resample"):
        ab = ablation.as_mode(mode)
        _, acts = model(x, edits=ab.edits(model, {site: keep}, *x.shape), capture=[site])
        edited[mode] = acts[site]
        assert torch.equal(edited[mode][..., keep == 1], clean[..., keep == 1])
    off = keep == 0
    assert torch.allclose(edited["mean"][..., off], ablation.means[site][off].expand(*x.shape, -1))
    assert torch.equal(edited["zero"][..., off], torch.zeros_like(clean[..., off]))
    # resample: the value at the same position of the clean model on a window drawn by the Ablation's
    # generator, one window per prompt, drawn afresh for the next pass
    pick = torch.randint(
        len(ablation.windows), (len(x),), generator=torch.Generator().manual_seed(ablation.seed)
    )
    _, source = model(ablation.windows[pick, : x.shape[1]], capture=[site])
    assert torch.allclose(edited["resample"][..., off], source[site][..., off])
    ab = ablation.as_mode("resample")
    first, second = (ab.edits(model, {site: keep}, *x.shape)[site].replace for _ in range(2))
    assert not torch.equal(first, second)
    with pytest.raises(ValueError, match="ablation must be one of"):
        Ablation("median", ablation.means)


def test_faithfulness_areas_match_hand_computed_curves():
    def points(fs, percents=(10, 50, 100)):
        return [{"percent": p, "f": f} for p, f in zip(percents, fs, strict=True)]

    # f = 0.5, 0.5, 1 at 10 %, 50 %, 100 % (and 0 at 0 %), by the trapezoid rule:
    # CPR = 0.1 * 0.25 + 0.4 * 0.5 + 0.5 * 0.75; CMD = 0.1 * 0.75 + 0.4 * 0.5 + 0.5 * 0.25
    assert curve_areas(points([0.5, 0.5, 1.0])) == pytest.approx((0.6, 0.4))
    # f = x is integrated exactly: 1/2 both; a perfect circuit from the first point: CMD = its first half-step
    assert curve_areas(points([0.1, 0.5, 1.0])) == pytest.approx((0.5, 0.5))
    assert curve_areas(points([1.0, 1.0, 1.0])) == pytest.approx((0.95, 0.05))
    # an over-performing circuit (f > 1) raises CPR above 1 and CMD above 0
    assert curve_areas(points([2.0, 2.0, 1.0])) == pytest.approx((0.1 + 0.8 + 0.75, 0.1 + 0.4 + 0.25))


def test_nonsense_task_pairs_real_prompts_at_random(loaded):
    *_, task = loaded
    control = nonsense_task(task, seed=0)
    assert control.train.shape == task.train.shape and control.test.shape == task.test.shape
    rows = {tuple(p.tolist()) for p in task.test.flatten(0, 1)}
    assert all(tuple(p.tolist()) in rows for p in control.test.flatten(0, 1))  # real prompts of the split
    original = {tuple(pair.flatten().tolist()) for pair in task.test}
    kept = sum(tuple(pair.flatten().tolist()) in original for pair in control.test)
    assert kept < len(task.test) / 4  # pairs are broken up, so no feature of a pair decides its label


def test_validate_judges_every_control(loaded):
    model, _, ablation, task = loaded
    cfg = PruneConfig(steps=4, runs=1, eval_pairs=16, batch_pairs=8, faithfulness_pairs=8, curve_points=2)
    circuit = find_circuit(model, task, ablation, cfg, "test-model")
    v = validate(model, task, ablation, circuit, cfg)
    assert circuit.validation is v and v["ablation"] == "mean"
    names = [c["name"] for c in v["checks"]]
    assert names == [
        "sufficiency",
        "necessity",
        "random_circuit",
        "shuffled_labels",
        "nonsense_task",
        "generalisation",
    ]
    checks = {c["name"]: c for c in v["checks"]}
    assert checks["sufficiency"]["passed"] == (circuit.losses["circuit"] <= cfg.target_loss)
    assert checks["nonsense_task"]["passed"] == (not v["nonsense_task"]["reached_target"])
    gap = circuit.losses["circuit"] - circuit.losses["circuit_train_masks"]
    assert checks["generalisation"]["value"] == pytest.approx(gap) == v["generalisation_gap"]
    assert checks["generalisation"]["passed"] == (gap <= 0.05)
    assert all(isinstance(c["criterion"], str) and c["criterion"] for c in v["checks"])
