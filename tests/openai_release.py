"""Test support: a model folder of ours written in the released openai/circuit_sparsity format
(beeg_config.json, final_model.pt, encoder.json + vocab.bpe), to import back; and a viz_data.pt."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from worker.engine import openai_format as of
from worker.engine.checkpoints import load_model

ALL_LOCTYPES = "attn_in,attn_out,mlp_in,mlp_out,mlp_neuron,attn_q,attn_k,attn_v"


def write_bpe_pair(folder: Path, tok) -> None:
    """A tokenizers BPE model's vocab and merges as a GPT-2 style encoder.json + vocab.bpe pair."""
    model = json.loads(tok.to_str())["model"]
    (folder / of.ENCODER_FILE).write_text(json.dumps(model["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / of.MERGES_FILE).write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def write_release(model_folder: Path, out: Path) -> Path:
    """Our trained model as the release stores one (the inverse of openai_format's name map)."""
    model, tok, run = load_model(model_folder)
    c = run.model
    out.mkdir(parents=True)
    beeg = {
        "block_size": c.n_ctx,
        "vocab_size": c.vocab_size,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "d_head": c.d_head,
        "d_model": c.d_model,
        "d_mlp": c.d_mlp,
        "bias": c.bias,
        "ln_bias": False,
        "rms_norm": True,
        "residual_activation_type": "identity",
        "activation_type": "gelu",
        "afrac": c.act_frac,
        "afrac_loctypes": ALL_LOCTYPES,
        "tied_unembed": False,
        "enable_bigram_table": c.bigram_table,
        "learnable_bigram_table": True,
        "sink": c.attn_sink,
        "flash": True,
        "tokenizer_name": "test",
        "pfrac": 0.001,
    }
    (out / of.CONFIG_FILE).write_text(json.dumps(beeg))
    ours = model.state_dict()
    names = of.name_map(of.model_config(beeg))
    sd = {names[k]: v.clone() for k, v in ours.items() if k in names}
    if "wpe.weight" not in ours:  # the release always has (and adds) learned positions
        sd["transformer.wpe.weight"] = torch.zeros(c.n_ctx, c.d_model)
    for i in range(c.n_layer):
        qkv = [ours[f"blocks.{i}.attn.{n}_proj.weight"] for n in "qkv"]
        sd[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat(qkv)
        if c.bias:
            sd[f"transformer.h.{i}.attn.c_attn.bias"] = torch.cat(
                [ours[f"blocks.{i}.attn.{n}_proj.bias"] for n in "qkv"]
            )
    torch.save(sd, out / of.WEIGHTS_FILE)
    write_bpe_pair(out, tok)
    return out


def write_viz_data(path: Path, nodes: dict[str, list[int]], pairs: list, loss: float, interv: float) -> Path:
    """A viz_data.pt in the released layout (losses stored x2, task samples padded with 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0], [5, 7, 9, 4, 0], [6, 6, 0, 0, 0]])
    importances = {
        "loss": 2 * loss,
        "interv_loss": 2 * interv,
        "ch_interv_losses": {loc: [2.0 * (k + 1) for k in range(len(idx))] for loc, idx in nodes.items()},
        "layer_interv_losses": {"0.attn": 1.0, "0.mlp": 3.0},
        "pair_data": pairs,
        "task_samples": [tokens, {}],
    }
    torch.save(
        {
            "circuit_data": {k: torch.tensor(v) for k, v in nodes.items()},
            "importances": importances,
            "samples": {},
        },
        path,
    )
    return path
