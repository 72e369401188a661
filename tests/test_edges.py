"""Edge masks (worker/engine/masks.py): an ablated edge carries its source's replacement to its
destination only; pruning on edges gives a circuit whose size in edges is what the masks kept."""

import json

import pytest
import torch

from worker.engine import checkpoints as ck
from worker.engine.ablation import Ablation, load_or_compute_means, load_or_make_windows
from worker.engine.circuit import Circuit, edges_from_weights
from worker.engine.config import ModelConfig
from worker.engine.masks import EdgeMasks
from worker.engine.model import SiteEdit, SparseGPT
from worker.engine.prune import PruneConfig, find_circuit, random_control
from worker.engine.tasks import build_task, get_task


@pytest.fixture(scope="module")
def tiny():
    """A random sparse model with dense activations (no AbsTopK), so that edits compare exactly."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=50, n_ctx=12, d_model=8, n_layer=2, d_head=2, act_frac=None, bigram_table=False
    )
    model = SparseGPT(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2 and "wte" not in name:
                p.mul_((torch.rand_like(p) < 0.5).float())
    means = {s: torch.randn(d) for s, d in model.site_dims().items()}
    x = torch.randint(0, 50, (3, 10))
    return model, means, x


def keep_all(masks: EdgeMasks) -> torch.Tensor:
    return torch.ones(masks.tau.numel())


def without(masks: EdgeMasks, group: str, which=None) -> torch.Tensor:
    """keep 1 everywhere but the group's edges (or the given ones of it)."""
    keep = keep_all(masks)
    a, b = masks.slices[group]
    if which is None:
        keep[a:b] = 0
    else:
        keep[a + torch.as_tensor(which)] = 0
    return keep


def run(model, x, edits: dict, sites):
    logits, acts = model(x, capture=sites, **edits)
    return logits, acts


def test_candidates_are_the_edges_a_full_node_circuit_counts(tiny):
    model, _, _ = tiny
    masks = EdgeMasks(model, 0.0, 0.0, torch.Generator())
    everything = [f"{s}[{i}]" for s, d in model.site_dims().items() if s[0].isdigit() for i in range(d)]
    counted = [e for e in edges_from_weights(model, everything) if e.kind != "qk"]
    candidates = [masks.edge(i) for i in range(masks.tau.numel())]
    assert {(e.src, e.dst, e.kind) for e in candidates} == {(e.src, e.dst, e.kind) for e in counted}
    assert len(candidates) == len(counted)


def test_keeping_every_edge_is_the_clean_model(tiny):
    model, means, x = tiny
    masks = EdgeMasks(model, 0.0, 0.0, torch.Generator())
    clean, _ = model(x)
    edited, _ = model(x, **masks.edit(model, Ablation("mean", means), keep_all(masks), *x.shape))
    torch.testing.assert_close(edited, clean)


def test_a_masked_weight_carries_its_sources_mean_to_its_destination_only(tiny):
    model, means, x = tiny
    masks = EdgeMasks(model, 0.0, 0.0, torch.Generator())
    group = "0.mlp.post_act->0.mlp.resid_delta"
    g = next(g for g in masks.groups if g.key == group)
    i, j, w = int(g.src_index[0]), int(g.dst_index[0]), float(g.weight[0])
    sites = ["0.mlp.post_act", "0.mlp.resid_delta"]
    _, clean = run(model, x, {}, sites)
    _, cut = run(
        model, x, masks.edit(model, Ablation("mean", means), without(masks, group, [0]), *x.shape), sites
    )
    expected = clean["0.mlp.resid_delta"].clone()
    expected[..., j] += w * (means["0.mlp.post_act"][i] - clean["0.mlp.post_act"][..., i])
    torch.testing.assert_close(cut["0.mlp.resid_delta"], expected)
    torch.testing.assert_close(cut["0.mlp.post_act"], clean["0.mlp.post_act"])  # the source is untouched


@pytest.mark.parametrize("mode", ["mean", "zero"])
def test_all_edges_out_of_a_site_ablated_equal_the_sites_nodes_ablated_as_their_readers_see_them(tiny, mode):
    """Every matrix reading 0.attn.act_in masked == the node site ablated (its only readers are q, k, v);
    the output projection masked == every v node ablated (through the same attention)."""
    model, means, x = tiny
    masks = EdgeMasks(model, 0.0, 0.0, torch.Generator())
    ablation = Ablation(mode, means)
    keep = keep_all(masks)
    for group in ("0.attn.act_in->0.attn.q", "0.attn.act_in->0.attn.k", "0.attn.act_in->0.attn.v"):
        keep *= without(masks, group)
    site = ["0.attn.resid_delta"]
    by_edges = run(model, x, masks.edit(model, ablation, keep, *x.shape), site)[1][site[0]]
    node_edit = ablation.edits(model, {"0.attn.act_in": torch.zeros(8)}, *x.shape)
    by_nodes = run(model, x, {"edits": node_edit}, site)[1][site[0]]
    torch.testing.assert_close(by_edges, by_nodes)

    keep = without(masks, "0.attn.v->0.attn.resid_delta")
    by_edges = run(model, x, masks.edit(model, ablation, keep, *x.shape), site)[1][site[0]]
    node_edit = ablation.edits(model, {"0.attn.v": torch.zeros(model.cfg.d_attn)}, *x.shape)
    by_nodes = run(model, x, {"edits": node_edit}, site)[1][site[0]]
    torch.testing.assert_close(by_edges, by_nodes)


def test_a_masked_residual_link_replaces_the_writers_channel_for_that_reader_only(tiny):
    model, means, x = tiny
    masks = EdgeMasks(model, 0.0, 0.0, torch.Generator())
    c = 3
    keep = without(masks, "0.attn.resid_delta->0.mlp.act_in", [c])
    sites = ["0.attn.resid_delta", "0.mlp.resid_in", "0.mlp.act_in", "1.attn.act_in"]
    _, clean = run(model, x, {}, sites)
    _, cut = run(model, x, masks.edit(model, Ablation("mean", means), keep, *x.shape), sites)
    seen = clean["0.mlp.resid_in"].clone()
    seen[..., c] += means["0.attn.resid_delta"][c] - clean["0.attn.resid_delta"][..., c]
    torch.testing.assert_close(cut["0.mlp.act_in"], model.blocks[0].mlp.norm(seen))
    torch.testing.assert_close(cut["1.attn.act_in"].shape, clean["1.attn.act_in"].shape)
    assert not torch.allclose(cut["0.mlp.act_in"], clean["0.mlp.act_in"])


def test_resample_replaces_an_edge_with_the_clean_value_on_another_window(tiny):
    model, means, x = tiny
    masks = EdgeMasks(model, 0.0, 0.0, torch.Generator())
    windows = torch.randint(0, 50, (4, 12))
    group = "1.mlp.post_act->1.mlp.resid_delta"
    edit = masks.edit(model, Ablation("resample", means, windows, seed=1), without(masks, group), *x.shape)
    matrix_keep, replace = edit["edge_edit"].matrices["1.mlp.resid_delta"]
    assert replace.shape == (3, 10, model.cfg.d_mlp) and float(
        matrix_keep.sum()
    ) == matrix_keep.numel() - len(masks.groups[[g.key for g in masks.groups].index(group)].weight)
    pick = torch.randint(4, (3,), generator=torch.Generator().manual_seed(1))
    _, acts = model(windows[pick, :10], capture=["1.mlp.post_act"])
    torch.testing.assert_close(replace, acts["1.mlp.post_act"])


def test_edge_masks_pass_gradients_to_every_kind_of_edge(tiny):
    model, means, x = tiny
    masks = EdgeMasks(model, 0.5, 0.0, torch.Generator())
    keep = masks.keep(1.0)
    logits, _ = model(x, **masks.edit(model, Ablation("mean", means), keep, *x.shape))
    logits.square().mean().backward()
    for g in masks.groups:
        a, b = masks.slices[g.key]
        assert masks.tau.grad[a:b].abs().sum() > 0, g.key


def test_site_edits_still_work_beside_edge_edits(tiny):
    model, means, x = tiny
    masks = EdgeMasks(model, 0.0, 0.0, torch.Generator())
    edits = {"edits": {"0.mlp.post_act": SiteEdit(keep=torch.zeros(model.cfg.d_mlp))}}
    plain, _ = model(x, **edits)
    both, _ = model(x, **edits, **masks.edit(model, Ablation("mean", means), keep_all(masks), *x.shape))
    torch.testing.assert_close(both, plain)


def test_pruning_on_edges_gives_a_circuit_of_the_kept_edges(test_model):
    model, tok, run_cfg = ck.load_model(test_model)
    means = load_or_compute_means(test_model, model, tok, run_cfg, n_batches=2)
    windows = load_or_make_windows(test_model, model, tok, run_cfg, n_batches=2)
    ablation = Ablation("mean", means, windows)
    task = build_task(get_task("while_return_true"), tok, max_pairs=64)
    cfg = PruneConfig(steps=4, runs=1, eval_pairs=32, batch_pairs=16, unit="edges", refine_nodes=4)
    circuit = find_circuit(model, task, ablation, cfg, "test-model")
    assert circuit.unit == "edges" and circuit.faithfulness["unit"] == "edges"
    masked = [e for e in circuit.edges if e.kind != "qk"]
    assert len(masked) == circuit.runs[-1]["nodes"]  # the search counts kept units: edges here
    ends = {n for e in masked for n in (e.src, e.dst)}
    assert {n.name for n in circuit.nodes} == ends
    assert all(e.dst in ends and e.src in ends for e in circuit.edges)
    for curve in circuit.faithfulness["modes"].values():
        assert curve["points"][-1]["edges"] == EdgeMasks(model, 0, 0, torch.Generator()).tau.numel()
        assert curve["points"][-1]["f"] == pytest.approx(1.0, abs=1e-4)
    assert all(torch.isfinite(torch.tensor(v)) for v in circuit.losses.values())
    again = Circuit.from_json(json.loads(json.dumps(circuit.to_json())))
    assert again.unit == "edges" and len(again.edges) == len(circuit.edges)
    control = random_control(model, task, ablation, circuit, draws=1)
    assert control["edges"] == len(masked) and len(control["losses"]) == 1
