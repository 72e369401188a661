"""Recipe study: train a grid of configurations for the same wall-clock budget each, then print one table
(configuration, tokens seen, validation loss, and each of the 20 tasks' test accuracy and loss).

    python bench/recipes.py --out runs/recipes [--budget-min 6] [--jobs 2] [--configs a,b] [--seeds 0,1]
    python bench/recipes.py --out runs/recipes --table          # print the table of finished runs

Runs go `--jobs` at a time, each in its own process with one thread (two torch processes with two
threads each thrash on two cores). Each run times a few steps of its configuration first and trains for
as many steps as the budget allows, so every configuration gets the same time, not the same steps.
Every configuration starts from the `small` preset; `--base` picks another."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from worker.engine.config import RunConfig, preset

# name -> (model overrides, train overrides) on top of the base preset
CONFIGS: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),
    "bigram-paper": ({}, {"bigram_own_scale": False}),
    "no-bigram": ({"bigram_table": False}, {}),
    "wide-256": ({"d_model": 256}, {"weight_density": 1 / 32}),
    "deep-4": ({"n_layer": 4}, {}),
    "dense-1/4": ({}, {"weight_density": 1 / 4}),
    "afrac-1/2": ({"act_frac": 0.5}, {}),
    "pos-emb": ({"pos_emb": True}, {}),
    "lr-2e-2": ({}, {"lr": 2e-2}),
    "dense-twin": ({}, {"dense": True, "lr": 4e-3}),
}
RESULT, TASKS = "recipe.json", "tasks.pt"


def run_config(base: str, name: str, seed: int) -> RunConfig:
    model_over, train_over = CONFIGS[name]
    run = preset(base)
    run.model = run.model.model_validate({**run.model.model_dump(), **model_over})
    run.train = run.train.model_validate({**run.train.model_dump(), **train_over, "seed": seed})
    return run


def seconds_per_step(run: RunConfig, steps: int = 4) -> float:
    """Median time of a few optimizer steps of this configuration on random tokens."""
    from worker.engine.model import SparseGPT
    from worker.engine.sparsity import sparse_params
    from worker.engine.train import make_optimizer, optimizer_step

    model = SparseGPT(run.model)
    tc = run.train
    opt = make_optimizer(model, None, tc)
    sparse = [] if tc.dense else sparse_params(model)
    x = torch.randint(0, run.model.vocab_size, (tc.batch_size, run.model.n_ctx))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        optimizer_step(model, opt, x, x, tc, sparse, tc.weight_density, tc.embed_density)
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def train_one(out: Path, base: str, name: str, seed: int, budget_s: float, tokenizer: Path) -> None:
    """Train one configuration for the budget, evaluate it on every task, write recipe.json."""
    from tokenizers import Tokenizer
    from tqdm import tqdm

    from worker.engine.checkpoints import load_model
    from worker.engine.tasks import evaluate_task
    from worker.engine.train import train

    run = run_config(base, name, seed)
    per_step = seconds_per_step(run)
    steps = max(20, int(budget_s / per_step))
    run.train = run.train.model_copy(
        update={"steps": steps, "eval_every": max(1, steps // 4), "checkpoint_every": max(1, steps // 4)}
    )
    folder = out / f"{name}-s{seed}"
    bar = tqdm(total=steps, desc=folder.name, dynamic_ncols=True, mininterval=5)
    t0 = time.perf_counter()

    def progress(fraction: float, message: str, **p) -> None:
        if p.get("stage") == "train" and "loss" in p:
            bar.update(p["step"] - bar.n)
            bar.set_postfix(loss=f"{p['loss']:.3f}", val=p.get("val_loss", ""))

    train(run, folder, on_progress=progress, tokenizer=Tokenizer.from_file(str(tokenizer)))
    bar.close()
    train_s = time.perf_counter() - t0
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in metrics if "val_loss" in m][-1]
    net, _, _ = load_model(folder)
    tasks = {
        name: evaluate_task(net, data) for name, data in torch.load(out / TASKS, weights_only=False).items()
    }
    result = {
        "config": name,
        "seed": seed,
        "model": run.model.model_dump(),
        "train": run.train.model_dump(),
        "steps": steps,
        "tokens": steps * run.train.batch_size * run.model.n_ctx,
        "train_s": train_s,
        "val_loss": val["val_loss"],
        "dead_neurons": val["dead_neurons"],
        "tasks": tasks,
    }
    (folder / RESULT).write_text(json.dumps(result, indent=2))


def table(out: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted(out.glob(f"*/{RESULT}"))]
    if not results:
        return f"no finished runs under {out}"
    names = [f"{r['config']} s{r['seed']}" for r in results]
    rows = [
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(results),
        "| tokens seen (M) | " + " | ".join(f"{r['tokens'] / 1e6:.1f}" for r in results) + " |",
        "| train minutes | " + " | ".join(f"{r['train_s'] / 60:.1f}" for r in results) + " |",
        "| val loss | " + " | ".join(f"{r['val_loss']:.3f}" for r in results) + " |",
        "| tasks with loss <= 0.10 | "
        + " | ".join(str(sum(t["loss"] <= 0.10 for t in r["tasks"].values())) for r in results)
        + " |",
    ]
    for task in results[0]["tasks"]:
        cells = [f"{r['tasks'][task]['accuracy']:.2f} / {r['tasks'][task]['loss']:.2f}" for r in results]
        rows.append(f"| {task} (acc / loss) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/recipes"))
    ap.add_argument("--base", default="small")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--budget-min", type=float, default=6.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="only print the table of finished runs")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: NAME:SEED, run in a child process
    args = ap.parse_args()
    tokenizer = args.out / "tokenizer.json"
    if args.one:
        name, seed = args.one.split(":")
        train_one(args.out, args.base, name, int(seed), args.budget_min * 60, tokenizer)
        return
    if not args.table:
        unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
        if unknown:
            sys.exit(f"error: unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
        args.out.mkdir(parents=True, exist_ok=True)
        if not tokenizer.exists():  # one tokenizer for every run (same vocabulary, same training files)
            from worker.engine.data import load_corpus, split_corpus, train_tokenizer

            base = preset(args.base)
            docs = split_corpus(load_corpus(base.train.corpus), base.train.val_percent)[0]
            train_tokenizer(docs, base.model.vocab_size).save(str(tokenizer))
        if not (args.out / TASKS).exists():  # the 20 tasks tokenised once, for every run
            from tokenizers import Tokenizer

            from worker.engine.data import load_corpus
            from worker.engine.tasks import REGISTRY, build_task, get_task

            tok, docs = Tokenizer.from_file(str(tokenizer)), load_corpus(None)
            torch.save({t: build_task(get_task(t), tok, docs) for t in sorted(REGISTRY)}, args.out / TASKS)
        todo = [
            (c, s)
            for s in args.seeds.split(",")
            for c in args.configs.split(",")
            if not (args.out / f"{c}-s{s}" / RESULT).exists()
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
        running: list[subprocess.Popen] = []
        for c, s in todo:
            while len(running) >= args.jobs:
                running = [p for p in running if p.poll() is None]
                time.sleep(2)
            cmd = [sys.executable, __file__, "--out", str(args.out), "--base", args.base]
            cmd += ["--budget-min", str(args.budget_min), "--one", f"{c}:{s}"]
            log = (args.out / f"{c}-s{s}.log").open("w")
            running.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        for p in running:
            p.wait()
    print(table(args.out))


if __name__ == "__main__":
    main()
