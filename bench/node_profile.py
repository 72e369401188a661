"""Profile throughput: tokens/s of the node profile (activations.py) over tokens/s of a plain forward
pass on the same windows, measured in one run, batch by batch interleaved (goal >= 0.7).

    python bench/node_profile.py --model data/models/small [--tokens 65536] [--threads 1] [--repeats 3]
    python bench/node_profile.py --preset small            # untrained weights of a preset: same cost"""

from __future__ import annotations

import argparse
import time

import torch

from worker.engine.activations import ProfileConfig, batch_windows, corpus_windows, profile_windows
from worker.engine.checkpoints import load_model
from worker.engine.config import preset
from worker.engine.data import load_corpus, split_corpus, train_tokenizer
from worker.engine.model import SparseGPT


@torch.inference_mode()
def forward_seconds(model: SparseGPT, tokens: torch.Tensor, batch_size: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(tokens), batch_size):
        model(tokens[i : i + batch_size])
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a trained model folder")
    source.add_argument("--preset", help="a preset's shape with untrained weights")
    ap.add_argument("--tokens", type=int, default=ProfileConfig().tokens)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        model, tok, run = load_model(args.model)
        corpus, max_bytes = run.train.corpus, run.train.max_corpus_bytes
    else:
        run = preset(args.preset)
        model = SparseGPT(run.model).eval()
        corpus, max_bytes = run.train.corpus, 4_000_000
    docs, _ = split_corpus(load_corpus(corpus, max_bytes), run.train.val_percent)
    if not args.model:
        tok = train_tokenizer(docs[:200], run.model.vocab_size)
    cfg = ProfileConfig(tokens=args.tokens)
    n_ctx = model.cfg.n_ctx
    windows = corpus_windows(tok, docs, cfg.tokens // n_ctx, n_ctx, cfg.seed)
    n = windows.tokens.numel()
    per_batch = batch_windows(cfg, n_ctx)
    batches = [windows.tokens[i : i + per_batch] for i in range(0, len(windows.tokens), per_batch)]
    forward_seconds(model, batches[0], per_batch)  # warm-up
    ratios, plains, profiles = [], [], []
    for _ in range(args.repeats):
        # After each profiled batch, the same batch through a plain forward pass: both see the same
        # load on a busy machine. Profile time = wall time minus those interleaved forward passes.
        plain = {"batches": 0, "seconds": 0.0}

        def interleave(fraction, message, plain=plain):
            if plain["batches"] < len(batches):
                plain["seconds"] += forward_seconds(model, batches[plain["batches"]], per_batch)
                plain["batches"] += 1

        t0 = time.perf_counter()
        profile_windows(model, windows, cfg, on_progress=interleave)
        profiled = time.perf_counter() - t0 - plain["seconds"]
        ratios.append(plain["seconds"] / profiled)
        plains.append(n / plain["seconds"])
        profiles.append(n / profiled)
    ratios.sort()
    plain, profiled = sorted(plains)[len(plains) // 2], sorted(profiles)[len(profiles) // 2]
    nodes = sum(model.site_dims().values())
    print(f"model {args.model or args.preset}: {nodes} nodes, {n} tokens, {torch.get_num_threads()} threads")
    print(f"plain forward  {plain:10.0f} tokens/s (median)")
    print(f"profile        {profiled:10.0f} tokens/s (median)")
    shown = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"ratio          {ratios[len(ratios) // 2]:10.2f}  (median of {shown}; goal >= 0.7)")


if __name__ == "__main__":
    main()
