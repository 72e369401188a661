"""Training-step cost of each paper feature: step time of the sparse model against its dense twin (same
features, no weight sparsity) and against a plain dense GPT (no attention sink, bigram table or AbsTopK),
plus the sparse model without one feature at a time.

    python bench/train_step.py [--preset small] [--steps 8] [--bf16]

Every figure is measured in this run (the machine is shared and noisy): steps of the compared variants
are interleaved so that background load hits all alike, and the ratios are of medians."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from worker.engine.config import preset
from worker.engine.model import SparseGPT
from worker.engine.sparsity import sparse_params
from worker.engine.train import make_optimizer, optimizer_step

PLAIN = {"attn_sink": False, "bigram_table": False, "act_frac": None}
VARIANTS = {
    "sparse": ({}, False),
    "dense": ({}, True),
    "plain GPT": (PLAIN, True),
    "sparse, no AbsTopK": ({"act_frac": None}, False),
    "sparse, no bigram table": ({"bigram_table": False}, False),
}


def make(run, model_overrides: dict, dense: bool, bf16: bool):
    torch.manual_seed(0)
    model = SparseGPT(run.model.model_copy(update=model_overrides))
    tc = run.train.model_copy(update={"dense": dense, "bf16": bf16})
    opt = make_optimizer(model, None, tc)
    sparse = [] if dense else sparse_params(model)
    density = 1.0 if dense else tc.weight_density
    embed = 1.0 if dense else tc.embed_density
    return lambda x, y: optimizer_step(model, opt, x, y, tc, sparse, density, embed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (for GPUs; slow without bf16 units)")
    args = ap.parse_args()
    run = preset(args.preset)
    B, T, V = run.train.batch_size, run.model.n_ctx, run.model.vocab_size
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    steps = {name: make(run, over, dense, args.bf16) for name, (over, dense) in VARIANTS.items()}
    times = {k: [] for k in steps}
    for step in steps.values():
        step(x, y)  # warm-up
    for _ in range(args.steps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step(x, y)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    m = run.model
    print(
        f"preset {args.preset}: d_model={m.d_model} n_layer={m.n_layer} ctx={T} batch={B} vocab={V}, "
        f"{torch.get_num_threads()} threads, {args.steps} interleaved steps per variant"
    )
    for k, t in med.items():
        print(f"  {k:24s} {t * 1000:8.1f} ms/step  {B * T / t:8.0f} tokens/s  x{t / med['plain GPT']:.2f}")
    print(f"sparse / dense      {med['sparse'] / med['dense']:.3f}  (goal <= 1.03)")
    print(f"sparse / plain GPT  {med['sparse'] / med['plain GPT']:.3f}  (goal <= 1.3)")


if __name__ == "__main__":
    main()
