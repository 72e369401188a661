import subprocess
import sys
from pathlib import Path

import pytest
import torch

from worker.engine.config import ModelConfig
from worker.engine.model import SiteEdit, SparseGPT, abs_topk
from worker.engine.sites import LAYER_SITES, parse_node

CFG = ModelConfig(vocab_size=64, n_ctx=16, d_model=32, n_layer=2, d_head=8)


def make_model(**overrides):
    torch.manual_seed(0)
    return SparseGPT(CFG.model_copy(update=overrides)).eval()


def test_abs_topk_keeps_k_largest_magnitudes():
    x = torch.tensor([[0.5, -3.0, 1.0, 2.0, -0.1, 0.2, -2.5, 0.0]])
    y = abs_topk(x, 2)
    assert torch.equal(y, torch.tensor([[0.0, -3.0, 0.0, 0.0, 0.0, 0.0, -2.5, 0.0]]))
    torch.manual_seed(0)
    x = torch.randn(4, 7, 40)
    y = abs_topk(x, 10)
    assert ((y != 0).sum(-1) == 10).all()
    kept_min = torch.where(y != 0, x.abs(), torch.inf).amin(-1)
    dropped_max = torch.where(y == 0, x.abs(), -torch.inf).amax(-1)
    assert (kept_min > dropped_max).all()


def test_abs_topk_kernel_matches_torch_topk_forward_and_backward():
    """The CPU kernel (values and mask in one pass) against torch.topk, on a non-contiguous input."""
    torch.manual_seed(0)
    x = torch.randn(6, 48, 5).transpose(1, 2).requires_grad_()  # (6, 5, 48), last axis strided
    y = abs_topk(x, 12)
    kept = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, x.abs().topk(12, dim=-1).indices, True)
    assert torch.equal(y, torch.where(kept, x, 0.0))
    grad = torch.randn_like(y)
    y.backward(grad)
    assert torch.equal(x.grad, torch.where(kept, grad, 0.0))


def test_sink_attention_from_the_kernels_log_sum_exp_matches_the_padded_key():
    """A trained sink in CPU float32 takes the flash kernel's log-sum-exp; float64 (and a frozen sink)
    take the padded extra key: same outputs and gradients for q, k, v and the sink."""
    from worker.engine.model import causal_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 9, 4, 8).transpose(1, 2) for _ in range(3))  # the model's layout
    sink, grad = torch.randn(4), torch.randn(3, 4, 9, 8)
    results = []
    for dtype in (torch.float32, torch.float64):
        inputs = [t.to(dtype).detach().requires_grad_() for t in (q, k, v, sink)]
        out = causal_attention(*inputs)
        out.backward(grad.to(dtype))
        results.append([out.double(), *(t.grad.double() for t in inputs)])
    for fast, padded in zip(*results, strict=True):
        torch.testing.assert_close(fast, padded, atol=1e-5, rtol=1e-5)
    frozen = causal_attention(q, k, v, sink)  # no gradient for the sink: the padded kernel
    assert frozen.grad_fn is None and (frozen - results[1][0]).abs().max() < 1e-5


def test_bigram_rows_are_added_in_one_pass_as_torch_adds_them():
    from worker.engine.kernels import add_table_rows

    torch.manual_seed(0)
    table = torch.randn(50, 50, requires_grad=True)
    logits = torch.randn(3, 7, 50, requires_grad=True)
    idx = torch.randint(0, 50, (3, 7))
    grad = torch.randn(3, 7, 50)
    fast = add_table_rows(logits, table, idx)
    slow = logits + torch.nn.functional.embedding(idx, table)
    assert torch.equal(fast, slow)
    fast_grads = torch.autograd.grad(fast, [logits, table], grad)
    slow_grads = torch.autograd.grad(slow, [logits, table], grad)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(IndexError, match="token ids"):
        add_table_rows(logits, table, torch.full((3, 7), 50))


def test_every_site_is_sparse_at_a_quarter():
    model = make_model()
    x = torch.randint(0, 64, (3, 16))
    _, acts = model(x, capture=model.site_dims())
    assert set(acts) == set(model.site_dims())
    for i in range(CFG.n_layer):
        for s in LAYER_SITES:
            a = acts[f"{i}.{s}"]
            assert a.shape[-1] == model.site_dims()[f"{i}.{s}"]
            assert int((a != 0).sum(-1).max()) <= a.shape[-1] // 4


def attention_reference(model, layer, x):
    """Attention written out with the sink as an explicit extra slot of zero key and value."""
    attn = model.blocks[layer].attn
    _, acts = model(x, capture=[f"{layer}.attn.q", f"{layer}.attn.k", f"{layer}.attn.v"])
    B, T, _ = x.shape[0], x.shape[1], None
    H, Dh = model.cfg.n_head, model.cfg.d_head
    q, k, v = (acts[f"{layer}.attn.{n}"].view(B, T, H, Dh).transpose(1, 2) for n in "qkv")
    k = torch.cat([k, torch.zeros(B, H, 1, Dh)], dim=2)
    v = torch.cat([v, torch.zeros(B, H, 1, Dh)], dim=2)
    scores = q @ k.transpose(-1, -2) / Dh**0.5
    scores[..., -1] = attn.sink.view(1, H, 1)
    causal = torch.ones(T, T + 1, dtype=torch.bool).tril()
    causal[:, -1] = True
    p = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    y = (p @ v).transpose(1, 2).reshape(B, T, H * Dh)
    return abs_topk(attn.o_proj(y), model.cfg.d_model // 4)


def test_attention_sink_matches_explicit_extra_slot():
    model = make_model()
    with torch.no_grad():
        model.blocks[0].attn.sink.copy_(torch.linspace(-2, 3, model.cfg.n_head))
    x = torch.randint(0, 64, (2, 16))
    _, acts = model(x, capture=["0.attn.resid_delta"])
    torch.testing.assert_close(acts["0.attn.resid_delta"], attention_reference(model, 0, x))


def test_huge_sink_logit_lets_a_head_attend_nowhere():
    model = make_model()
    with torch.no_grad():
        model.blocks[0].attn.sink.fill_(1e4)
    x = torch.randint(0, 64, (2, 16))
    _, acts = model(x, capture=["0.attn.resid_delta"])
    bias = model.blocks[0].attn.o_proj.bias
    torch.testing.assert_close(acts["0.attn.resid_delta"], abs_topk(bias.expand(2, 16, -1), 8))


def test_bigram_table_adds_to_logits():
    model = make_model()
    x = torch.randint(0, 64, (1, 16))
    base, _ = model(x)
    with torch.no_grad():
        model.bigram.weight[x[0, 3], 7] += 5.0
    bumped, _ = model(x)
    diff = bumped - base
    assert diff[0, 3, 7].item() == pytest.approx(5.0, abs=1e-5)
    assert diff.abs().sum().item() == pytest.approx(5.0 * int((x[0] == x[0, 3]).sum()), abs=1e-4)


def test_feature_switches_change_parameters():
    plain = make_model(attn_sink=False, bigram_table=False, pos_emb=False, act_frac=None)
    names = dict(plain.named_parameters())
    assert "bigram.weight" not in names and "wpe.weight" not in names
    assert not any(n.endswith("sink") for n in names)
    with_pos = make_model(pos_emb=True)
    assert "wpe.weight" in dict(with_pos.named_parameters())
    x = torch.randint(0, 64, (2, 16))
    _, acts = plain(x, capture=["0.mlp.post_act"])
    assert int((acts["0.mlp.post_act"] != 0).sum(-1).min()) > CFG.d_model  # no AbsTopK


def test_edits_mean_ablate_set_and_add_through_one_mechanism():
    model = make_model()
    x = torch.randint(0, 64, (2, 16))
    site = "1.mlp.post_act"
    _, clean = model(x, capture=[site])
    keep = torch.ones(CFG.d_mlp)
    keep[[3, 5]] = 0
    means = torch.full((CFG.d_mlp,), 0.25)
    _, edited = model(x, edits={site: SiteEdit(keep=keep, replace=means)}, capture=[site])
    a = edited[site]
    assert torch.all(a[..., [3, 5]] == 0.25)
    others = keep.bool()
    torch.testing.assert_close(a[..., others], clean[site][..., others])
    add = torch.zeros(CFG.d_mlp)
    add[7] = 1.5
    _, added = model(x, edits={site: SiteEdit(add=add)}, capture=[site])
    torch.testing.assert_close(added[site][..., 7], clean[site][..., 7] + 1.5)
    # an edit changes everything downstream, nothing upstream
    _, down = model(
        x, edits={site: SiteEdit(keep=keep, replace=means)}, capture=["final_resid", "1.mlp.act_in"]
    )
    _, ref = model(x, capture=["final_resid", "1.mlp.act_in"])
    assert not torch.allclose(down["final_resid"], ref["final_resid"])
    torch.testing.assert_close(down["1.mlp.act_in"], ref["1.mlp.act_in"])


def test_differentiable_mask_gets_gradients():
    model = make_model()
    x = torch.randint(0, 64, (2, 16))
    keep = torch.ones(CFG.d_model, requires_grad=True)
    logits, _ = model(x, edits={"0.attn.resid_delta": SiteEdit(keep=keep, replace=torch.zeros(CFG.d_model))})
    logits.logsumexp(-1).sum().backward()
    assert keep.grad is not None and keep.grad.abs().sum() > 0


def test_node_names_parse():
    assert parse_node("10.attn.v[460]") == ("10.attn.v", 460)
    assert parse_node("embed[3]") == ("embed", 3)
    with pytest.raises(ValueError):
        parse_node("10.attn.v")


def test_engine_imports_no_web_db_or_queue_code():
    """Every engine module (tests/test_layout.py checks the import statements too)."""
    root = Path(__file__).resolve().parent.parent
    modules = [
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for p in sorted((root / "worker" / "engine").rglob("*.py"))
    ]
    code = (
        f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}];"
        "bad = [m for m in ('fastapi', 'sqlalchemy', 'celery', 'starlette', 'backend') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
