"""A transcoder folder: config.json (TranscoderRun: the sweep's settings and the dense model's
fingerprint), transcoders.safetensors (every coder, and the MLP output means) and sweep.json (figures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..checkpoints import (
    CheckpointError,
    _atomic_save_tensors,
    _load_tensors,
    atomic_write_text,
    check_dense,
    load_model,
    read_config,
)
from .coders import SparseCoder, TranscoderRun, Transcoders

CONFIG, CODERS, SWEEP = "config.json", "transcoders.safetensors", "sweep.json"


def save_transcoders(folder: Path, tr: Transcoders) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for kind, per_l1 in tr.coders.items():
        for i, per_layer in enumerate(per_l1):
            for layer, c in enumerate(per_layer):
                tensors |= c.tensors(f"{kind}.{i}.{layer}")
    for layer, m in enumerate(tr.mlp_means or []):
        tensors[f"mlp_mean.{layer}"] = m
    _atomic_save_tensors(folder / CODERS, tensors, {"format": "sparse-circuits-transcoders/1"})
    atomic_write_text(folder / SWEEP, json.dumps(tr.sweep, indent=1))
    atomic_write_text(folder / CONFIG, tr.run.model_dump_json(indent=2))


def read_transcoder_run(folder: Path) -> TranscoderRun:
    return read_config(folder, TranscoderRun, "transcoder")


def read_transcoders(folder: Path, device="cpu") -> Transcoders:
    """A transcoder folder's coders, configuration and figures (without its dense model)."""
    folder = Path(folder)
    run = read_transcoder_run(folder)
    tensors, _ = _load_tensors(folder / CODERS)
    kinds = ["transcoder"] + (["sae"] if run.config.sae else [])
    parts = ("W_enc", "b_enc", "W_dec", "b_dec")
    try:
        coders = {
            kind: [
                [
                    SparseCoder(*(tensors[f"{kind}.{i}.{layer}.{p}"].to(device) for p in parts))
                    for layer in range(run.dense.n_layer)
                ]
                for i in range(len(run.config.l1))
            ]
            for kind in kinds
        }
    except KeyError as e:
        raise CheckpointError(f"{folder / CODERS} lacks {e.args[0]}") from None
    sweep_path = folder / SWEEP
    sweep = json.loads(sweep_path.read_text()) if sweep_path.is_file() else {}
    means = [tensors[f"mlp_mean.{i}"] for i in range(run.dense.n_layer) if f"mlp_mean.{i}" in tensors]
    return Transcoders(run, coders, sweep, means if len(means) == run.dense.n_layer else None)


def load_transcoders(folder: Path, dense_folder: Path | None = None, device="cpu"):
    """A transcoder folder -> (Transcoders, dense model, tokenizer, its RunConfig). The dense model is
    read from `dense_folder` (default: where it was at training time) and must match the fingerprint."""
    tr = read_transcoders(folder, device)
    dense_folder = Path(dense_folder or tr.run.dense.path)
    check_dense(tr.run.dense, dense_folder, "the transcoders")
    model, tok, model_run = load_model(dense_folder, device)
    return tr, model, tok, model_run


def remove_folder(folder: Path) -> None:
    if Path(folder).exists():
        shutil.rmtree(folder)
