"""Faithfulness of a model's circuits: for every task, the circuit pruned with mean ablation and
validated (sufficiency, necessity, random circuit, shuffled labels, nonsense task, generalisation gap),
its CPR / CMD under mean, zero and resample ablation; the nonsense control pruned under each of the
three ablations for the --nonsense tasks; and the two adversarial probes.

    python bench/faithfulness.py --model runs/small-long-s0 --tasks while_return_true,single_double_quote \
        --nonsense single_double_quote --out runs/faithfulness"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from worker.engine.ablation import ABLATION_MODES, load_ablation, nonsense_task
from worker.engine.checkpoints import load_model
from worker.engine.probes import PROBES, run_probe
from worker.engine.prune import PruneConfig, find_circuit, validate
from worker.engine.tasks import build_task, get_task


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tasks", default="single_double_quote")
    ap.add_argument("--nonsense", default="", help="tasks whose nonsense control is pruned under every mode")
    ap.add_argument("--probes", default="quote_distance,bracket_dilution")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model, tok, run = load_model(args.model)
    ablation = load_ablation(args.model, model, tok, run)
    cfg = PruneConfig()
    circuits = {}
    print(
        "| task | nodes | edges | full | circuit test | masks' own pairs | gap | CPR / CMD mean | zero "
        "| resample | nonsense (mean) | shuffled | random | checks failed |"
    )
    print("|---|" + "---|" * 13)
    for name in [t for t in args.tasks.split(",") if t]:
        t0 = time.perf_counter()
        task = build_task(get_task(name), tok)
        c = find_circuit(model, task, ablation, cfg, args.model)
        v = validate(model, task, ablation, c, cfg)
        circuits[name] = c
        (args.out / f"{name}.json").write_text(json.dumps(c.to_json(), indent=1))
        L, F = c.losses, c.faithfulness["modes"]
        scores = " | ".join(f"{F[m]['cpr']:.2f} / {F[m]['cmd']:.2f}" for m in ABLATION_MODES)
        failed = ", ".join(k["name"] for k in v["checks"] if not k["passed"]) or "none"
        print(
            f"| `{name}` | {len(c.nodes)} | {len(c.edges)} | {L['full']:.3f} | {L['circuit']:.3f} | "
            f"{L['circuit_train_masks']:.3f} | {v['generalisation_gap']:+.3f} | {scores} | "
            f"{v['nonsense_task']['circuit_loss']:.3f} ({v['nonsense_task']['nodes']} nodes) | "
            f"{v['shuffled_labels']['circuit_loss']:.3f} | {v['random_circuit']['mean_loss']:.3f} | "
            f"{failed} |"
            f"  <!-- {time.perf_counter() - t0:.0f} s -->",
            flush=True,
        )
    for name in [t for t in args.nonsense.split(",") if t]:
        task = nonsense_task(build_task(get_task(name), tok), cfg.seed)
        for mode in ABLATION_MODES:
            c = find_circuit(
                model, task, ablation.as_mode(mode), cfg.model_copy(update={"ablation": mode}), args.model
            )
            reached = c.losses["circuit"] <= cfg.target_loss
            print(
                f"nonsense {name} under {mode} ablation: {len(c.nodes)} nodes, held-out train "
                f"{c.losses['circuit_train_heldout']:.3f}, test {c.losses['circuit']:.3f}, "
                f"reaches the target on held-out pairs: {reached}",
                flush=True,
            )
    for probe in [p for p in args.probes.split(",") if p]:
        spec = PROBES[probe]
        task = build_task(get_task(spec.task), tok)
        c = circuits.get(spec.task) or find_circuit(model, task, ablation, cfg, args.model)
        nodes = [n.name for n in c.nodes] or ["0.attn.act_in[0]"]
        result = run_probe(model, tok, task, spec, ablation, nodes, nodes[0], c.calibration, 128)
        (args.out / f"probe-{probe}.json").write_text(json.dumps(result, indent=1))
        print(f"\n{probe} on {spec.task} (circuit of {len(c.nodes)} nodes, node {nodes[0]}):")
        print(f"| {spec.knob} | full acc. | circuit acc. | node on A | node on B |\n|---|---|---|---|---|")
        for p in result["points"]:
            print(
                f"| {p['value']} | {p['full_accuracy']:.3f} | {p['circuit_accuracy']:.3f} | "
                f"{p['node_a']:.3f} | {p['node_b']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
