"""Node masks vs edge masks on one model: every task pruned twice with the default PruneConfig, once with
`unit="nodes"` (the paper's) and once with `unit="edges"`; per task the nodes, edges, test losses
(circuit calibrated on train pairs, its edges or nodes ablated), the held-out train loss that chose the
size and the wall time of each; then the geometric mean of edges(node masks) / edges(edge masks) over
the tasks both prunes meet the target on held-out train pairs.

    python bench/units.py --model runs/src/sparse --tasks while_return_true,single_double_quote \
        [--out runs/units]"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from worker.engine.ablation import load_ablation
from worker.engine.checkpoints import load_model
from worker.engine.prune import PruneConfig, find_circuit
from worker.engine.tasks import build_task, get_task

UNITS = ("nodes", "edges")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tasks", default="while_return_true,single_double_quote")
    ap.add_argument("--out", type=Path, default=None, help="folder for every circuit's JSON")
    args = ap.parse_args()
    model, tok, run = load_model(args.model)
    ablation = load_ablation(args.model, model, tok, run)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    print("| task | masks on | nodes | edges | circuit, test | held-out train | ablated, test | full | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for name in [t for t in args.tasks.split(",") if t]:
        task = build_task(get_task(name), tok)
        found = {}
        for unit in UNITS:
            cfg = PruneConfig(unit=unit)
            t0 = time.perf_counter()
            c = find_circuit(model, task, ablation, cfg, args.model)
            found[unit] = c
            L = c.losses
            if args.out:
                (args.out / f"{name}.{unit}.json").write_text(json.dumps(c.to_json()))
            print(
                f"| `{name}` | {unit} | {len(c.nodes)} | {len(c.edges)} | {L['circuit']:.3f} | "
                f"{L['circuit_train_heldout']:.3f} | {L['ablated']:.3f} | {L['full']:.3f} | "
                f"{time.perf_counter() - t0:.0f} |",
                flush=True,
            )
        if all(found[u].losses["circuit_train_heldout"] <= found[u].target_loss for u in UNITS):
            ratios.append(max(1, len(found["nodes"].edges)) / max(1, len(found["edges"].edges)))
    if ratios:
        geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(
            f"\nedges with node masks / edges with edge masks, geometric mean over {len(ratios)} tasks: "
            f"{geomean:.2f}"
        )
    else:
        print("\nno task met the target with both units")


if __name__ == "__main__":
    main()
