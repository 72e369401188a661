"""Model folders: config.json + tokenizer.json + model.safetensors, and a resumable checkpoint."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch
from pydantic import BaseModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from .config import DenseFingerprint, RunConfig
from .errors import UserError
from .model import SparseGPT

B = TypeVar("B", bound=BaseModel)
CONFIG, TOKENIZER, WEIGHTS, CHECKPOINT, METRICS = (
    "config.json",
    "tokenizer.json",
    "model.safetensors",
    "checkpoint.safetensors",
    "metrics.jsonl",
)


class CheckpointError(UserError):
    pass


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().contiguous().cpu()
        if v.data_ptr() in seen:  # a tied weight: safetensors stores each tensor once, so copy it
            v = v.clone()
        seen.add(v.data_ptr())
        out[k] = v
    save_file(out, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt or unreadable checkpoint file {path}: {e}") from None
    return tensors, meta


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_config(folder: Path, schema: type[B], what: str = "model") -> B:
    """The folder's config.json validated as `schema`; a clear CheckpointError if missing or invalid."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder} holds no {CONFIG}; is it a {what} folder?")
    try:
        return schema.model_validate_json(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"invalid {path}: {e}") from None


def read_run_config(folder: Path) -> RunConfig:
    return read_config(folder, RunConfig)


def fingerprint(folder: Path, error: type[ValueError] = CheckpointError) -> DenseFingerprint:
    """The identity of a trained model folder: its shape and the SHA-256 of its weights and tokenizer."""
    folder = Path(folder)
    m = read_run_config(folder).model
    for name in (WEIGHTS, TOKENIZER):
        if not (folder / name).is_file():
            raise error(f"dense model {folder} holds no {name}: it has not finished training")
    return DenseFingerprint(
        path=str(folder.resolve()),
        d_model=m.d_model,
        n_layer=m.n_layer,
        n_ctx=m.n_ctx,
        vocab_size=m.vocab_size,
        tokenizer_sha256=file_sha256(folder / TOKENIZER),
        weights_sha256=file_sha256(folder / WEIGHTS),
    )


def check_dense(
    expected: DenseFingerprint, folder: Path, what: str, error: type[ValueError] = CheckpointError
) -> None:
    """Refuse a dense model other than the one `what` (e.g. "the bridges") were trained against, naming
    the difference; fields the fingerprint did not record (None) are not compared."""
    given = fingerprint(folder, error)
    recorded = {k: v for k, v in expected.model_dump(exclude={"path"}).items() if v is not None}
    diffs = [
        f"{name} differs" if "sha256" in name else f"{name} {want} (trained) vs {got} (given)"
        for name, want in recorded.items()
        if (got := getattr(given, name)) != want
    ]
    if diffs:
        raise error(
            f"dense model {folder} does not match {what}: {'; '.join(diffs)} (it is not the one {what} "
            f"were trained on, recorded from {expected.path})"
        )


def load_tokenizer(folder: Path) -> Tokenizer:
    path = Path(folder) / TOKENIZER
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise CheckpointError(f"unreadable tokenizer {path}: {e}") from None


def save_model(folder: Path, model: SparseGPT) -> None:
    _atomic_save_tensors(Path(folder) / WEIGHTS, model.state_dict(), {"format": "sparse-circuits/1"})


def _load_state(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"{path} lacks weights {missing[:3]} for this config")
    for name, t in expected.items():
        if tensors[name].shape != t.shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(tensors[name].shape)}, expected {tuple(t.shape)}"
            )
    model.load_state_dict({k: tensors[k] for k in expected})


def load_model(folder: Path, device: str | torch.device = "cpu") -> tuple[SparseGPT, Tokenizer, RunConfig]:
    """A trained model folder -> (model in eval mode, tokenizer, config)."""
    folder = Path(folder)
    run = read_run_config(folder)
    if not (folder / WEIGHTS).is_file():
        raise CheckpointError(
            f"{folder} holds no {WEIGHTS}: training did not finish (resume it with --resume)"
        )
    tok = load_tokenizer(folder)
    model = SparseGPT(run.model)
    tensors, _ = _load_tensors(folder / WEIGHTS)
    _load_state(model, tensors, folder / WEIGHTS)
    return model.to(device).eval(), tok, run


PACKED = "model.packed.safetensors"


def pack_weights(
    tensors: dict[str, torch.Tensor], half: Literal["none", "whole", "all"] = "none"
) -> tuple[dict[str, torch.Tensor], dict]:
    """A state dict in few bytes: a tensor that is mostly zeros becomes a bit mask of its nonzeros
    (`name.mask`, 1 bit per entry) and their values (`name.values`); the others stay whole. `half`
    rounds to float16 the tensors kept whole ("whole": e.g. a sparse model's dense bigram table, while
    its sparse weights stay exact) or every tensor ("all"); "none" keeps float32 throughout."""
    packed, shapes = {}, {}
    for name, t in tensors.items():
        t = t.detach().cpu().float()
        shapes[name] = list(t.shape)
        nonzero = t != 0
        if nonzero.float().mean() < 0.5:
            packed[name + ".mask"] = torch.from_numpy(np.packbits(nonzero.flatten().numpy()))
            packed[name + ".values"] = t[nonzero].half() if half == "all" else t[nonzero]
        else:
            packed[name] = t.half() if half != "none" else t
    return packed, shapes


def unpack_weights(packed: dict[str, torch.Tensor], shapes: dict) -> dict[str, torch.Tensor]:
    """pack_weights' inverse (float32 tensors; half-packed values come back as their float16 values)."""
    out = {}
    for name, shape in shapes.items():
        if name in packed:
            out[name] = packed[name].float().reshape(shape)
            continue
        n = math.prod(shape)
        bits = np.unpackbits(packed[name + ".mask"].numpy(), count=n).astype(bool)
        t = torch.zeros(n)
        t[torch.from_numpy(bits)] = packed[name + ".values"].float()
        out[name] = t.reshape(shape)
    return out


def save_packed_model(folder: Path, out: Path, half: Literal["none", "whole", "all"] = "none") -> None:
    """A trained model folder -> a folder of config, tokenizer, metrics and packed weights (no optimizer
    state): what a shipped bundle holds."""
    folder, out = Path(folder), Path(out)
    load_model(folder)  # a clear error for an unfinished or corrupt folder
    out.mkdir(parents=True, exist_ok=True)
    tensors, _ = _load_tensors(folder / WEIGHTS)
    packed, shapes = pack_weights(tensors, half)
    meta = {"format": "sparse-circuits-packed/1", "shapes": json.dumps(shapes), "half": half}
    _atomic_save_tensors(out / PACKED, packed, meta)
    for name in (CONFIG, TOKENIZER, METRICS):
        if (folder / name).is_file():
            atomic_write_text(out / name, (folder / name).read_text())


def unpack_model(packed_folder: Path, out: Path) -> None:
    """A packed folder -> a model folder load_model reads (model.safetensors written last)."""
    packed_folder, out = Path(packed_folder), Path(out)
    tensors, meta = _load_tensors(packed_folder / PACKED)
    if meta.get("format") != "sparse-circuits-packed/1":
        raise CheckpointError(f"{packed_folder / PACKED} is not a packed model")
    out.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, TOKENIZER, METRICS):
        if (packed_folder / name).is_file():
            atomic_write_text(out / name, (packed_folder / name).read_text())
    weights = unpack_weights(tensors, json.loads(meta["shapes"]))
    _atomic_save_tensors(out / WEIGHTS, weights, {"format": "sparse-circuits/1"})


def save_module(path: Path, module: nn.Module, metadata: dict[str, str] | None = None) -> None:
    """Any module's weights as one safetensors file (e.g. bridges.safetensors)."""
    _atomic_save_tensors(Path(path), module.state_dict(), metadata or {})


def load_module(path: Path, module: nn.Module) -> dict[str, str]:
    """Weights saved by save_module into `module` (shapes checked); returns the file's metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.parent} holds no {path.name}")
    tensors, meta = _load_tensors(path)
    _load_state(module, tensors, path)
    return meta


def save_checkpoint(
    folder: Path, model: SparseGPT, opt: torch.optim.Optimizer, step: int, extra: nn.Module | None = None
) -> None:
    """Weights (+ extra trained modules, e.g. bridges) + Adam moments + step, in one file renamed into
    place (never half-written)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if extra is not None:
        tensors.update({f"extra.{k}": v for k, v in extra.state_dict().items()})
    state = opt.state_dict()
    for i, s in state["state"].items():
        for key, v in s.items():
            tensors[f"opt.{i}.{key}"] = v if torch.is_tensor(v) else torch.tensor(v)
    meta = {"step": str(step), "param_groups": json.dumps(state["param_groups"])}
    _atomic_save_tensors(Path(folder) / CHECKPOINT, tensors, meta)


def load_checkpoint(
    folder: Path, model: SparseGPT, opt: torch.optim.Optimizer, extra: nn.Module | None = None
) -> int:
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{folder} holds no {CHECKPOINT} to resume from")
    tensors, meta = _load_tensors(path)
    if "step" not in meta or "param_groups" not in meta:
        raise CheckpointError(f"corrupt checkpoint file {path}: metadata lacks step/param_groups")
    _load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    if extra is not None:
        _load_state(extra, {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}, path)
    opt_state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, key = k.split(".", 2)
            opt_state.setdefault(int(i), {})[key] = v
    opt.load_state_dict({"state": opt_state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["step"])
