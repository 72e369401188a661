"""Training-step throughput: sparse vs dense step time (same shape), and bf16 vs fp32 tokens/s.

    python bench/train_step.py [--preset small] [--steps 8]

Every figure is a ratio measured in this run (the machine is shared and noisy); steps of the compared
variants are interleaved so that background load hits both alike."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from worker.engine.config import preset
from worker.engine.model import SparseGPT
from worker.engine.sparsity import sparse_params
from worker.engine.train import optimizer_step


def make(run, dense: bool, bf16: bool):
    torch.manual_seed(0)
    model = SparseGPT(run.model)
    tc = run.train.model_copy(update={"dense": dense, "bf16": bf16})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=0.1)
    sparse = [] if dense else sparse_params(model)
    density = 1.0 if dense else tc.weight_density
    embed = 1.0 if dense else tc.embed_density
    return lambda x, y: optimizer_step(model, opt, x, y, tc, sparse, density, embed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    run = preset(args.preset)
    B, T, V = run.train.batch_size, run.model.n_ctx, run.model.vocab_size
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    variants = {
        "sparse fp32": make(run, dense=False, bf16=False),
        "dense fp32": make(run, dense=True, bf16=False),
        "sparse bf16": make(run, dense=False, bf16=True),
    }
    times = {k: [] for k in variants}
    for step in variants.values():
        step(x, y)  # warm-up
    for _ in range(args.steps):
        for name, step in variants.items():
            t0 = time.perf_counter()
            step(x, y)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    m = run.model
    print(
        f"shape d_model={m.d_model} n_layer={m.n_layer} ctx={T} batch={B}, {torch.get_num_threads()} threads"
    )
    for k, t in med.items():
        print(f"  {k:12s} {t * 1000:8.1f} ms/step  {B * T / t:8.0f} tokens/s")
    print(
        f"sparse/dense step time ratio (fp32): {med['sparse fp32'] / med['dense fp32']:.3f}  (goal <= 1.05)"
    )
    print(f"bf16/fp32 tokens/s ratio (sparse):   {med['sparse fp32'] / med['sparse bf16']:.3f}")


if __name__ == "__main__":
    main()
