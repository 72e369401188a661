"""Pruning cost and quality: seconds per task and runs used with the default budget, and the circuit
size it reaches against a wider search (ratio), measured in one run. Losses are the circuit's
calibrated loss on the held-out train pairs that chose its size, and on the test split.

    python bench/prune.py --model data/models/small [--tasks a,b] [--wide-runs 32] [--select-pairs 256]"""

from __future__ import annotations

import argparse
import time

from worker.engine.ablation import load_ablation
from worker.engine.checkpoints import load_model
from worker.engine.prune import PruneConfig, find_circuit
from worker.engine.tasks import build_task, get_task


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tasks", default="single_double_quote")
    ap.add_argument("--wide-runs", type=int, default=32)
    ap.add_argument("--select-pairs", type=int, default=0, help="the wide search chooses its run on these")
    args = ap.parse_args()
    model, tok, run = load_model(args.model)
    ablation = load_ablation(args.model, model, tok, run)
    for name in args.tasks.split(","):
        task = build_task(get_task(name), tok)
        rows = {}
        wide = PruneConfig(runs=args.wide_runs, select_pairs=args.select_pairs)
        for label, cfg in (("default", PruneConfig()), ("wide", wide)):
            t0 = time.perf_counter()
            c = find_circuit(model, task, ablation, cfg, args.model)
            rows[label] = (time.perf_counter() - t0, cfg.runs, len(c.nodes), len(c.edges))
            s, r, n, e = rows[label]
            held, test, ablated = (c.losses[k] for k in ("circuit_train_heldout", "circuit", "ablated"))
            print(
                f"{name:22s} {label:8s} {s:7.1f} s  {r:3d} runs  {n:5d} nodes  {e:6d} edges  "
                f"loss held-out train {held:.3f}  test {test:.3f}  ablated {ablated:.3f}",
                flush=True,
            )
        ratio = rows["default"][2] / max(1, rows["wide"][2])
        print(f"{name:22s} default/wide node ratio {ratio:.2f} (goal <= 1.25)")


if __name__ == "__main__":
    main()
