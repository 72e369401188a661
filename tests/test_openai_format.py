"""The released openai/circuit_sparsity format: parity with the reference on a fixture, bad inputs."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from worker.engine import openai_format as of
from worker.engine.checkpoints import load_model

FIXTURE = Path(__file__).parent / "fixtures" / "openai_format"


def test_fixture_parity_logits_and_every_hook():
    model, cfg, _ = of.load_released(FIXTURE)
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    hooks = {k[len("hook.") :]: v for k, v in expected.items() if k.startswith("hook.")}
    assert len(hooks) == 2 * 11 + 1
    ours = {of.our_hook_name(h): h for h in hooks}
    with torch.no_grad():
        logits, acts = model(expected["input_ids"], capture=ours)
    assert (logits - expected["logits"]).abs().max().item() <= 1e-5
    worst = {h: (acts[o] - hooks[h]).abs().max().item() for o, h in ours.items()}
    assert max(worst.values()) <= 1e-5, worst
    # the sparsity is real: AbsTopK keeps a quarter of each activation
    assert (acts["0.attn.q"] != 0).sum(-1).max().item() == cfg.d_attn // 4


def bpe_pair(folder: Path, tok) -> None:
    """Write a tokenizers BPE model as a GPT-2 style encoder.json + vocab.bpe pair."""
    model = json.loads(tok.to_str())["model"]
    (folder / of.ENCODER_FILE).write_text(json.dumps(model["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / of.MERGES_FILE).write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


@pytest.fixture
def released(tmp_path):
    """A copy of the fixture folder with a byte-level tokenizer pair (vocab 96 < 256 bytes cannot hold
    one, so the pair here only has to load: its size is checked against the model's)."""
    from tokenizers import Tokenizer, models

    src = tmp_path / "released"
    shutil.copytree(FIXTURE, src)
    tok = Tokenizer(models.BPE(vocab={chr(33 + i): i for i in range(90)}, merges=[]))
    bpe_pair(src, tok)
    return src


def test_import_writes_a_model_folder_the_engine_loads(released, tmp_path):
    run = of.import_released(released, tmp_path / "model")
    assert run.imported_from.startswith("openai/circuit_sparsity")
    model, tok, loaded = load_model(tmp_path / "model")
    assert loaded.model == run.model and tok.token_to_id(of.EOT) == 90
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    with torch.no_grad():
        logits, _ = model(expected["input_ids"])
    assert (logits - expected["logits"]).abs().max().item() <= 1e-5


def edit_config(folder: Path, **changes):
    raw = json.loads((folder / of.CONFIG_FILE).read_text())
    raw.update(changes)
    (folder / of.CONFIG_FILE).write_text(json.dumps(raw))


def edit_state(folder: Path, edit):
    sd = torch.load(folder / of.WEIGHTS_FILE, weights_only=True)
    torch.save(edit(sd), folder / of.WEIGHTS_FILE)


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda f: edit_config(f, d_pos_emb=8), "d_pos_emb=8 is not supported"),
        (lambda f: edit_config(f, shiny_new_switch=True), "unknown architecture switch(es) shiny_new_switch"),
        (lambda f: edit_config(f, activation_type="silu"), "activation_type='silu' is not supported"),
        (lambda f: edit_config(f, afrac_loctypes="attn_in,everywhere"), "unknown location(s) everywhere"),
        (
            lambda f: edit_state(f, lambda sd: {k: v for k, v in sd.items() if "h.1.mlp.c_fc.w" not in k}),
            "lacks tensor transformer.h.1.mlp.c_fc.weight",
        ),
        (
            lambda f: edit_state(f, lambda sd: {**sd, "lm_head.weight": torch.zeros(96, 31)}),
            "lm_head.weight has shape [96, 31], expected [96, 32]",
        ),
        (lambda f: edit_state(f, lambda sd: {**sd, "stray": torch.zeros(1)}), "does not use: stray"),
        (lambda f: edit_state(f, lambda sd: {"model": sd, "step": 3}), "not a plain state dict"),
        (
            lambda f: torch.save({"config": of.ModelConfig()}, f / of.WEIGHTS_FILE),
            "not a plain state dict (weights_only load refused it",
        ),
        (lambda f: (f / of.ENCODER_FILE).unlink(), "encoder.json not found"),
    ],
)
def test_bad_inputs_leave_nothing_behind(released, tmp_path, spoil, message):
    spoil(released)
    with pytest.raises(of.ReleaseFormatError) as e:
        of.import_released(released, tmp_path / "out" / "model")
    assert message in str(e.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_variant_switches_import(tmp_path):
    """LayerNorm with bias, ReLU MLP and residual, tied unembedding, 3 heads x 8 on d_model 16 (q/k/v wider
    than the residual), AbsTopK on q/k/v and the residual only, no bias file: the release's other switches."""
    raw = {
        "block_size": 8,
        "vocab_size": 40,
        "n_layer": 1,
        "n_head": 3,
        "d_head": 8,
        "d_model": 16,
        "d_mlp": 24,
        "bias": False,
        "ln_bias": True,
        "rms_norm": False,
        "residual_activation_type": "relu",
        "activation_type": "relu",
        "afrac": 0.5,
        "afrac_loctypes": "attn_q,attn_k,attn_v,resid_post_mlp",
        "tied_unembed": True,
        "enable_bigram_table": False,
        "sink": False,
    }
    cfg = of.model_config(raw)
    assert (cfg.d_attn, cfg.norm, cfg.norm_eps, cfg.tied_unembed) == (24, "layer", 1e-5, True)
    g = torch.Generator().manual_seed(0)
    shapes = {
        "transformer.wte.weight": (40, 16),
        "transformer.wpe.weight": (8, 16),
        "transformer.h.0.ln_1.weight": (16,),
        "transformer.h.0.ln_1.bias": (16,),
        "transformer.h.0.attn.c_attn.weight": (72, 16),
        "transformer.h.0.attn.c_proj.weight": (16, 24),
        "transformer.h.0.ln_2.weight": (16,),
        "transformer.h.0.ln_2.bias": (16,),
        "transformer.h.0.mlp.c_fc.weight": (24, 16),
        "transformer.h.0.mlp.c_proj.weight": (16, 24),
        "transformer.ln_f.weight": (16,),
        "transformer.ln_f.bias": (16,),
    }
    sd = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # a tied state dict holds both names
    src = tmp_path / "variant"
    src.mkdir()
    (src / of.CONFIG_FILE).write_text(json.dumps(raw))
    torch.save(sd, src / of.WEIGHTS_FILE)
    model, _, _ = of.load_released(src)
    assert model.lm_head.weight is model.wte.weight
    assert torch.equal(model.blocks[0].attn.q_proj.weight, sd["transformer.h.0.attn.c_attn.weight"][:24])
    ids = torch.randint(0, 40, (2, 8), generator=g)
    with torch.no_grad():
        logits, acts = model(ids, capture=["0.attn.q", "0.attn.act_in", "final_resid"])
    assert (acts["0.attn.q"] != 0).sum(-1).max() == 12 and (acts["0.attn.act_in"] != 0).all()
    assert (acts["final_resid"] >= 0).all() and (acts["final_resid"] != 0).sum(-1).max() == 8
    ln = torch.nn.functional.layer_norm(
        acts["final_resid"], (16,), sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"]
    )
    assert torch.allclose(logits, ln @ sd["transformer.wte.weight"].T, atol=1e-5)
    # the tie survives our folder format (safetensors stores one copy each)
    from worker.engine.checkpoints import save_model

    out = tmp_path / "ours"
    out.mkdir()
    save_model(out, model)
    from safetensors.torch import load_file as load

    assert torch.equal(load(str(out / "model.safetensors"))["lm_head.weight"], sd["transformer.wte.weight"])
