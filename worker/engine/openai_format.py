"""The released openai/circuit_sparsity format (PAPERS.md section 7): `beeg_config.json` +
`final_model.pt` (+ the tokenizer's `encoder.json` + `vocab.bpe`) -> one of our model folders.

The released GPT maps onto SparseGPT switch by switch; what it has and we do not is refused by name.
Hook names: theirs `{l}.resid_in` / `{l}.resid_mid` are our `{l}.attn.resid_in` / `{l}.mlp.resid_in`,
every other hook point has our name already.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .checkpoints import CONFIG, TOKENIZER, CheckpointError, atomic_write_text, save_model
from .config import ModelConfig, RunConfig, TrainConfig
from .model import SparseGPT

CONFIG_FILE, WEIGHTS_FILE, ENCODER_FILE, MERGES_FILE = (
    "beeg_config.json",
    "final_model.pt",
    "encoder.json",
    "vocab.bpe",
)
# The released tokenizer's pre-tokenizer (tinypython_2k) and its end-of-text token.
PATTERN = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
EOT = "<|endoftext|>"
# afrac_loctypes -> where our model applies AbsTopK (config.TopkLocation)
LOCTYPES = {
    "attn_in": "attn.act_in",
    "attn_q": "attn.q",
    "attn_k": "attn.k",
    "attn_v": "attn.v",
    "attn_out": "attn.resid_delta",
    "mlp_in": "mlp.act_in",
    "mlp_neuron": "mlp.post_act",
    "mlp_out": "mlp.resid_delta",
    "resid_post_attn": "resid_post_attn",
    "resid_post_mlp": "resid_post_mlp",
}
MASK_BUFFER = re.compile(r"^transformer\.h\.\d+\.attn\.bias$")
# Their hook names that differ from our site names.
HOOK_RENAMES = {"resid_in": "attn.resid_in", "resid_mid": "mlp.resid_in"}
# Keys that change nothing at inference (training settings, legacy switches).
IGNORED_KEYS = {
    "pfrac",
    "rtopk",
    "grad_checkpointing",
    "debug_nans",
    "dropout",
    "enable_sparse_kernels",
    "learnable_bigram_table",
    "tokenizer_name",
    "bigram_table_rank",
}
# Switches we cannot reproduce: refused when set.
UNSUPPORTED = ("d_pos_emb", "dropout_cat_pos_emb", "sinusoidal_cat_pos_emb", "use_tied_aux_matrix")
KNOWN_KEYS = {
    "block_size",
    "vocab_size",
    "n_layer",
    "n_head",
    "d_head",
    "d_model",
    "d_mlp",
    "n_mlp",
    "bias",
    "ln_bias",
    "rms_norm",
    "residual_activation_type",
    "activation_type",
    "afrac",
    "afrac_loctypes",
    "tied_unembed",
    "enable_bigram_table",
    "sink",
    "flash",
}


class ReleaseFormatError(CheckpointError):
    """A released file this importer cannot turn into a model (the message names the file and key)."""


def _choice(raw: dict, key: str, default, allowed: tuple):
    value = raw.get(key, default)
    if value not in allowed:
        raise ReleaseFormatError(
            f"{CONFIG_FILE}: {key}={value!r} is not supported (one of {', '.join(map(repr, allowed))})"
        )
    return value


def model_config(raw: dict) -> ModelConfig:
    """Our ModelConfig for a released `beeg_config.json` dict."""
    if not isinstance(raw, dict):
        raise ReleaseFormatError(f"{CONFIG_FILE} is not a JSON object")
    for key in UNSUPPORTED:
        if raw.get(key):
            raise ReleaseFormatError(
                f"{CONFIG_FILE}: {key}={raw[key]!r} is not supported (of the positional embeddings, only "
                "learned ones added to the token embedding import)"
                if "pos_emb" in key
                else f"{CONFIG_FILE}: {key}={raw[key]!r} is not supported"
            )
    unknown = sorted(k for k in set(raw) - KNOWN_KEYS - IGNORED_KEYS - set(UNSUPPORTED) if raw[k])
    if unknown:
        raise ReleaseFormatError(
            f"{CONFIG_FILE}: unknown architecture switch(es) {', '.join(unknown)}: the importer does not "
            "know what they change (remove them from a copy of the file if they are training-only)"
        )
    missing = [k for k in ("block_size", "vocab_size", "n_layer", "n_head", "d_model") if k not in raw]
    if missing:
        raise ReleaseFormatError(f"{CONFIG_FILE} lacks {', '.join(missing)}")
    rms = _choice(raw, "rms_norm", False, (True, False))
    afrac = raw.get("afrac")
    loctypes = [t for t in str(raw.get("afrac_loctypes", "attn_in,attn_out,mlp_in,mlp_out")).split(",") if t]
    bad = [t for t in loctypes if t not in LOCTYPES]
    if bad:
        raise ReleaseFormatError(f"{CONFIG_FILE}: afrac_loctypes has unknown location(s) {', '.join(bad)}")
    d_model, n_head = raw["d_model"], raw["n_head"]
    try:
        return ModelConfig(
            vocab_size=raw["vocab_size"],
            n_ctx=raw["block_size"],
            d_model=d_model,
            n_layer=raw["n_layer"],
            d_head=raw.get("d_head") or d_model // n_head,
            head_count=n_head,
            mlp_width=raw.get("d_mlp") or raw.get("n_mlp") or 4 * d_model,
            act_frac=afrac,
            topk_at=[LOCTYPES[t] for t in loctypes],
            attn_sink=bool(raw.get("sink", False) and raw.get("flash", True)),  # the slow path has no sink
            bigram_table=bool(raw.get("enable_bigram_table", False)),
            pos_emb=True,  # the released GPT always adds its learned positions
            bias=_choice(raw, "bias", True, (True, False)),
            norm="rms" if rms else "layer",
            norm_bias=not rms and _choice(raw, "ln_bias", True, (True, False)),
            norm_eps=None if rms else 1e-5,
            activation=_choice(raw, "activation_type", "gelu", ("gelu", "relu")),
            resid_activation=_choice(raw, "residual_activation_type", "identity", ("identity", "relu")),
            tied_unembed=_choice(raw, "tied_unembed", True, (True, False)),
            logits_bias=True,  # final_logits_bias
        )
    except ValueError as e:
        raise ReleaseFormatError(f"{CONFIG_FILE}: {e}") from None


def read_config(folder: Path) -> tuple[ModelConfig, dict]:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ReleaseFormatError(f"{folder} holds no {CONFIG_FILE}; is it a released model folder?")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ReleaseFormatError(f"{path} is not JSON: {e}") from None
    return model_config(raw), raw


def load_state_dict(path: Path, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """A plain state dict (str -> tensor), unpickled with weights_only=True: nothing else loads."""
    path = Path(path)
    if not path.is_file():
        raise ReleaseFormatError(f"{path.parent} holds no {path.name}")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise ReleaseFormatError(
            f"{path} has {path.stat().st_size:,} bytes, more than its config's weights can take "
            f"({max_bytes:,} in float32)"
        )
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReleaseFormatError(
            f"{path} is not a plain state dict (weights_only load refused it: {first})"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise ReleaseFormatError(f"{path} is not a plain state dict of named tensors")
    return sd


def _layer_map(i: int, cfg: ModelConfig) -> dict[str, str]:
    """Our name -> theirs for layer i (q/k/v come from the fused c_attn, see convert_state)."""
    ours, theirs = f"blocks.{i}", f"transformer.h.{i}"
    out = {
        f"{ours}.attn.norm.weight": f"{theirs}.ln_1.weight",
        f"{ours}.attn.o_proj.weight": f"{theirs}.attn.c_proj.weight",
        f"{ours}.attn.sink": f"{theirs}.attn.attn_imp.sink_logit",
        f"{ours}.mlp.norm.weight": f"{theirs}.ln_2.weight",
        f"{ours}.mlp.fc_in.weight": f"{theirs}.mlp.c_fc.weight",
        f"{ours}.mlp.fc_out.weight": f"{theirs}.mlp.c_proj.weight",
    }
    for ln, ours_norm in (("ln_1", "attn"), ("ln_2", "mlp")):
        out[f"{ours}.{ours_norm}.norm.bias"] = f"{theirs}.{ln}.bias"
    for a, b in (("attn.o_proj", "attn.c_proj"), ("mlp.fc_in", "mlp.c_fc"), ("mlp.fc_out", "mlp.c_proj")):
        out[f"{ours}.{a}.bias"] = f"{theirs}.{b}.bias"
    return out


def name_map(cfg: ModelConfig) -> dict[str, str]:
    """Our state-dict name -> the released one (for the names that are one tensor each)."""
    out = {
        "wte.weight": "transformer.wte.weight",
        "wpe.weight": "transformer.wpe.weight",
        "final_norm.weight": "transformer.ln_f.weight",
        "final_norm.bias": "transformer.ln_f.bias",
        "lm_head.weight": "lm_head.weight",
        "lm_head.bias": "final_logits_bias",
        "bigram.weight": "bigram_table",
    }
    for i in range(cfg.n_layer):
        out.update(_layer_map(i, cfg))
    return out


def convert_state(sd: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    """The released tensors under our names, in float32, every shape checked against `cfg`."""
    expected = state_shapes(cfg)
    names = name_map(cfg)
    used = set()
    out: dict[str, torch.Tensor] = {}

    def take(theirs: str, shape: tuple[int, ...]) -> torch.Tensor:
        if theirs not in sd:
            raise ReleaseFormatError(f"{source} lacks tensor {theirs} (expected shape {list(shape)})")
        t = sd[theirs]
        if tuple(t.shape) != shape:
            raise ReleaseFormatError(f"{source}: {theirs} has shape {list(t.shape)}, expected {list(shape)}")
        used.add(theirs)
        return t.detach().to(torch.float32)

    for i in range(cfg.n_layer):
        a, d = cfg.d_attn, cfg.d_model
        w = take(f"transformer.h.{i}.attn.c_attn.weight", (3 * a, d))
        parts = {"q": w[:a], "k": w[a : 2 * a], "v": w[2 * a :]}
        if cfg.bias:
            b = take(f"transformer.h.{i}.attn.c_attn.bias", (3 * a,))
            parts_b = {"q": b[:a], "k": b[a : 2 * a], "v": b[2 * a :]}
        for n in "qkv":
            out[f"blocks.{i}.attn.{n}_proj.weight"] = parts[n].clone()
            if cfg.bias:
                out[f"blocks.{i}.attn.{n}_proj.bias"] = parts_b[n].clone()
    for ours, shape in expected.items():
        if ours in out:
            continue
        theirs = names[ours]
        if ours == "lm_head.bias" and theirs not in sd:
            out[ours] = torch.zeros(shape)  # some released files lack it
        elif ours == "lm_head.weight" and cfg.tied_unembed:
            out[ours] = take("transformer.wte.weight", shape)  # one tensor: lm_head.weight is its alias
            used.add(theirs)
        else:
            out[ours] = take(theirs, shape)
    # The slow path's causal-mask buffers (`transformer.h.{i}.attn.bias`) hold no weights.
    extra = sorted(k for k in set(sd) - used if not MASK_BUFFER.match(k))
    if extra:
        raise ReleaseFormatError(
            f"{source} has tensors this config does not use: {', '.join(extra[:4])}"
            f"{' ...' if len(extra) > 4 else ''} (does {CONFIG_FILE} belong to it?)"
        )
    return out


def state_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in SparseGPT(cfg).state_dict().items()}


def n_weights(cfg: ModelConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in SparseGPT(cfg).parameters())


def weight_density(model: SparseGPT) -> float:
    """Nonzero fraction of the weight matrices of the blocks (what weight sparsity prunes)."""
    mats = [p for n, p in model.blocks.named_parameters() if p.ndim == 2]
    return sum(int((p != 0).sum()) for p in mats) / sum(p.numel() for p in mats)


def load_released(folder: Path, max_params: int | None = None) -> tuple[SparseGPT, ModelConfig, dict]:
    """A released model folder -> (our model in eval mode, its config, the raw beeg_config)."""
    folder = Path(folder)
    cfg, raw = read_config(folder)
    n = n_weights(cfg)
    if max_params is not None and n > max_params:
        raise ReleaseFormatError(f"{folder}: the model has {n:,} weights, more than the limit {max_params:,}")
    # float32 weights plus the bigram table and pickle overhead; a larger file is not this model's
    sd = load_state_dict(folder / WEIGHTS_FILE, max_bytes=4 * n + 4 * cfg.vocab_size**2 + (1 << 20))
    tensors = convert_state(sd, cfg, str(folder / WEIGHTS_FILE))
    model = SparseGPT(cfg)
    model.load_state_dict(tensors)
    return model.eval(), cfg, raw


# --- tokenizer ------------------------------------------------------------------------------------


def load_bpe_pair(encoder_json: Path, vocab_bpe: Path):
    """A GPT-2-style `encoder.json` + `vocab.bpe` pair with the released pre-tokenizer pattern as our
    tokenizer type (tokenizers.Tokenizer); `<|endoftext|>` is a special token (its id in the encoder, or
    the next free one)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    for p in (encoder_json, vocab_bpe):
        if not Path(p).is_file():
            raise ReleaseFormatError(
                f"tokenizer file {p} not found (the release's {ENCODER_FILE} + {MERGES_FILE})"
            )
    try:
        vocab = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        lines = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
        merges = [tuple(ln.split(" ")) for ln in lines[1:] if ln.strip()]
        if not isinstance(vocab, dict) or any(len(m) != 2 for m in merges):
            raise ValueError("not a GPT-2 style encoder/merges pair")
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise ReleaseFormatError(f"unreadable tokenizer pair {encoder_json} + {vocab_bpe}: {e}") from None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return tok


# --- the import -----------------------------------------------------------------------------------


def import_released(
    src: Path, out: Path, tokenizer_dir: Path | None = None, max_params: int | None = None
) -> RunConfig:
    """Write our model folder `out` (config.json, tokenizer.json, model.safetensors) for the released
    model in `src`; its tokenizer pair is in `tokenizer_dir` (default: `src`). The folder appears whole or
    not at all."""
    src, out = Path(src), Path(out)
    if out.exists():
        raise ReleaseFormatError(f"{out} already exists; choose a new folder")
    tdir = Path(tokenizer_dir) if tokenizer_dir is not None else src
    model, cfg, raw = load_released(src, max_params)
    tok = load_bpe_pair(tdir / ENCODER_FILE, tdir / MERGES_FILE)
    if tok.get_vocab_size() > cfg.vocab_size:
        raise ReleaseFormatError(
            f"the tokenizer has {tok.get_vocab_size()} tokens, the model only {cfg.vocab_size} "
            f"({raw.get('tokenizer_name', 'its tokenizer')} is the one it was trained with)"
        )
    run = RunConfig(
        model=cfg,
        train=TrainConfig(dense=weight_density(model) > 0.5),  # the release has dense baselines too
        imported_from=f"openai/circuit_sparsity: {src.resolve()}",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_model(tmp, model)
        tok.save(str(tmp / TOKENIZER))
        atomic_write_text(tmp / CONFIG, run.model_dump_json(indent=1))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run


def our_hook_name(name: str) -> str:
    """A released hook point's name as our site name (`0.resid_mid` -> `0.mlp.resid_in`)."""
    layer, _, rest = name.partition(".")
    return f"{layer}.{HOOK_RENAMES[rest]}" if rest in HOOK_RENAMES else name
