"""The circuit view's trace: per-position activations of a circuit's nodes, its logit difference, the
attention of its heads, and the numbers behind its node labels."""

import pytest
import torch

from worker.engine.ablation import Ablation, prunable_sites
from worker.engine.checkpoints import load_model
from worker.engine.model import causal_attention
from worker.engine.sites import node_name
from worker.engine.trace import class_means, head_of, logit_weights, trace


@pytest.fixture(scope="module")
def loaded(test_model):
    model, tok, _ = load_model(test_model)
    ids = tok.encode("def f(x):\n    return x + 'a'\n").ids
    dims = model.site_dims()
    means = {s: torch.randn(d, generator=torch.Generator().manual_seed(1)) for s, d in dims.items()}
    mean = Ablation("mean", means)
    every = [node_name(s, i) for s in prunable_sites(model) for i in range(dims[s])]
    return model, ids, mean, every


def test_head_of_groups_qkv_channels_by_d_head():
    assert head_of("1.attn.k[91]", 16) == (1, 5)
    assert head_of("0.attn.q[15]", 16) == (0, 0) and head_of("0.attn.v[16]", 16) == (0, 1)
    assert head_of("0.mlp.post_act[91]", 16) is None and head_of("1.attn.resid_delta[3]", 16) is None


def test_a_circuit_of_every_node_traces_the_full_model(loaded):
    model, ids, ablation, every = loaded
    t = trace(model, ids, every, ablation, 5, 7)
    with torch.no_grad():
        logits, acts = model(torch.tensor([ids]), capture={"0.mlp.post_act", "1.attn.v"})
    for node, site, i in [("0.mlp.post_act[3]", "0.mlp.post_act", 3), ("1.attn.v[9]", "1.attn.v", 9)]:
        assert t.activations[node] == pytest.approx(acts[site][0, :, i].tolist(), abs=1e-5)
    expected = float(logits[0, -1, 5] - logits[0, -1, 7])
    assert t.logit_diff == pytest.approx(expected, abs=1e-4)
    assert t.full_logit_diff == pytest.approx(expected, abs=1e-4)
    assert len(t.heads) == model.cfg.n_layer * model.cfg.n_head


def test_nodes_off_and_outside_the_circuit_are_their_means(loaded):
    model, ids, ablation, _ = loaded
    nodes = ["0.mlp.post_act[3]", "0.mlp.post_act[4]", "1.mlp.resid_delta[2]"]
    t = trace(model, ids, nodes, ablation, 5, 7, off={"0.mlp.post_act[4]"})
    mean = float(ablation.means["0.mlp.post_act"][4])
    assert t.activations["0.mlp.post_act[4]"] == pytest.approx([mean] * len(ids))
    # The MLP input of layer 0 is its mean at every position, so post_act[3] is the same everywhere.
    assert len(set(round(v, 5) for v in t.activations["0.mlp.post_act[3]"])) == 1
    assert t.logit_diff != pytest.approx(t.full_logit_diff, abs=1e-3)
    assert t.heads == []


def test_head_pattern_is_the_attention_of_the_last_position(loaded):
    model, ids, ablation, every = loaded
    nodes = [n for n in every if n.startswith(("1.attn.", "0."))]
    t = trace(model, ids, nodes, ablation, 5, 7)
    head = next(h for h in t.heads if h.layer == 1 and h.head == 1)
    assert head.nodes and all(head_of(n, model.cfg.d_head) == (1, 1) for n in head.nodes)
    with torch.no_grad():
        _, acts = model(torch.tensor([ids]), capture={"1.attn.q", "1.attn.k"})
    T, Dh = len(ids), model.cfg.d_head
    q, k = (acts[f"1.attn.{x}"][:, :, Dh : 2 * Dh].view(1, 1, T, Dh) for x in "qk")
    sink = model.blocks[1].attn.sink
    # Attention to one-hot values is the attention pattern itself (the sink's value is zero).
    assert T <= Dh
    onehot = torch.eye(T, Dh).view(1, 1, T, Dh)
    with torch.no_grad():
        pattern = causal_attention(q, k, onehot, None if sink is None else sink[1:2])[0, 0, -1, :T]
    assert head.pattern == pytest.approx(pattern.tolist(), abs=1e-5)
    assert sum(head.pattern) + (head.sink or 0.0) == pytest.approx(1.0, abs=1e-5)


def test_class_means_and_logit_weights(loaded):
    model, ids, ablation, every = loaded
    prompts = torch.tensor([ids, ids[:-1] + [ids[0]]] * 3).view(3, 2, len(ids))
    nodes = ["0.mlp.post_act[3]", "1.mlp.resid_delta[2]"]
    sides = class_means(model, prompts, every, ablation, chunk=2)
    with torch.no_grad():
        _, acts = model(prompts.flatten(0, 1), capture={"0.mlp.post_act"})
    last = acts["0.mlp.post_act"][:, -1, 3].view(3, 2)
    assert sides[nodes[0]] == pytest.approx((float(last[:, 0].mean()), float(last[:, 1].mean())), abs=1e-5)
    w = logit_weights(model, nodes, 5, 7)
    g, u = model.final_norm.weight[2].detach(), model.lm_head.weight.detach()
    assert set(w) == {"1.mlp.resid_delta[2]"} and w[nodes[1]] == pytest.approx(float(g * (u[5, 2] - u[7, 2])))
