"""The demo bundle: the default model, its dense twin, their node profiles and the circuits of every task
the model does, built by one command from the project's own recipe and loaded into a data dir.

Bundle layout (BUNDLE, installed with the package):
  manifest.json        the recipe's commands, the two models, every task's full-model test loss and
                       accuracy on both models, the prune settings and the circuits
  sparse/, dense/      config.json, tokenizer.json, metrics.jsonl (thinned), model.packed.safetensors,
                       means.safetensors, resample_windows.safetensors (ablation statistics),
                       profile.safetensors.gz + profile.json (the profile job's output)
  circuits/            KIND.TASK.json (worker/engine/circuit.py's JSON form)
Weights are packed (checkpoints.pack_weights): the sparse model's sparse matrices exactly (float32
values under a bit mask of the nonzeros) and its whole tensors (the bigram table, norm gains) in
float16; the dense twin's weights all in float16. Everything in the bundle is computed from the
weights as shipped, so `verify` reproduces the circuits from them. Profiles, prunes and checks run with
one torch thread each, which makes their floating-point sums, and so the circuits, reproducible.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

BUNDLE = Path(__file__).with_name("demo_bundle")
MANIFEST = "manifest.json"
KINDS = ("sparse", "dense")
RECIPE = {
    "sparse": "circuits train --preset small-long --seed 0 --out {folder}",
    "dense": "circuits train --preset small-long --seed 0 --dense --out {folder}",
}
NAMES = {"sparse": "demo-small-long", "dense": "demo-small-long-dense"}
# float16 where exact bits do not matter: the sparse model's whole tensors (its dense bigram table, norm
# gains) and every weight of the dense twin; the sparse model's sparse weights, the circuits' edges, stay
# exact.
HALF = {"sparse": "whole", "dense": "all"}
STATS = ("means.safetensors", "resample_windows.safetensors")  # ablation statistics


class BundleError(ValueError):
    pass


def read_manifest(bundle: Path = BUNDLE) -> dict:
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise BundleError(
            f"{bundle} holds no demo bundle ({MANIFEST} is missing; build one: circuits demo build)"
        )
    return json.loads(path.read_text())


def _unpack(packed: Path, out: Path) -> None:
    """A shipped model folder -> a model folder with its ablation statistics, as the build pruned it."""
    from worker.engine.checkpoints import unpack_model

    unpack_model(packed, out)
    for name in STATS:
        shutil.copy2(packed / name, out / name)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


# --- building -----------------------------------------------------------------------------------


def _prepare(folder: str, tasks: list[str]) -> dict:
    """Ablation statistics of the unpacked model (cached in its folder) and its full-model test loss and
    accuracy on the tasks."""
    from worker.engine.ablation import load_ablation
    from worker.engine.checkpoints import load_model
    from worker.engine.data import load_corpus
    from worker.engine.tasks import evaluate_task, load_task

    net, tok, run = load_model(Path(folder))
    load_ablation(Path(folder), net, tok, run)
    docs = load_corpus(None)
    return {name: evaluate_task(net, load_task(name, tok, docs)) for name in tasks}


def _profile(folder: str, out: str) -> None:
    from worker.engine.activations import ProfileConfig, profile_folder, save_profile

    save_profile(profile_folder(Path(folder), ProfileConfig()), Path(out))


def _prune(folder: str, task: str, cfg_json: str, validate: bool) -> dict:
    from worker.engine.ablation import load_ablation
    from worker.engine.checkpoints import load_model
    from worker.engine.prune import PruneConfig, find_circuit
    from worker.engine.prune import validate as validate_circuit
    from worker.engine.tasks import load_task

    cfg = PruneConfig.model_validate_json(cfg_json)
    net, tok, run = load_model(Path(folder))
    data = load_task(task, tok)
    ablation = load_ablation(Path(folder), net, tok, run, cfg.ablation, cfg.seed)
    circuit = find_circuit(net, data, ablation, cfg, Path(folder).name)
    if validate:
        validate_circuit(net, data, ablation, circuit, cfg)
    return circuit.to_json()


def _pack(kind: str, source: Path, out: Path, work: Path) -> None:
    """Pack a trained folder into the bundle and unpack it into the work folder the later steps read."""
    from worker.engine.checkpoints import METRICS, atomic_write_text, save_packed_model, unpack_model

    from .jobs.training import read_metrics, thin

    save_packed_model(source, out / kind, half=HALF[kind])
    metrics = thin(read_metrics(source))
    atomic_write_text(out / kind / METRICS, "".join(json.dumps(r) + "\n" for r in metrics))
    unpack_model(out / kind, work / kind)


def _reset_if_stale(work: Path, sources: dict[str, Path], cfg) -> None:
    """Empty `work` when what it holds came from other weights or other prune settings."""
    from worker.engine.checkpoints import WEIGHTS, atomic_write_text, file_sha256

    inputs = {k: file_sha256(folder / WEIGHTS) for k, folder in sources.items()}
    inputs["prune"] = cfg.model_dump(mode="json")
    record = work / "inputs.json"
    if not record.is_file() or json.loads(record.read_text()) != inputs:
        shutil.rmtree(work, ignore_errors=True)
        (work / "circuits").mkdir(parents=True)
        atomic_write_text(record, json.dumps(inputs))


def build(
    sparse: Path,
    dense: Path,
    out: Path = BUNDLE,
    work: Path = Path("runs/demo-work"),
    jobs: int = 2,
    prune_cfg=None,
    tasks: list[str] | None = None,
    progress: Callable[[str], None] = print,
) -> dict:
    """Build the bundle from two trained folders (the recipe's output): every task is evaluated and
    those the sparse model does (full-model test loss <= the target) are pruned on both models (on the
    dense twin where it does them too); or only `tasks`, all pruned on both. Results already in `work`
    (from the same weights and prune settings) are not redone, so a build continues where an
    interrupted one stopped."""
    from worker.engine.activations import PROFILE, PROFILE_INDEX
    from worker.engine.checkpoints import WEIGHTS, atomic_write_text
    from worker.engine.prune import PruneConfig
    from worker.engine.tasks import REGISTRY

    cfg = prune_cfg or PruneConfig()
    out, work = Path(out), Path(work)
    sources = {"sparse": Path(sparse), "dense": Path(dense)}
    for kind, folder in sources.items():
        if not (folder / WEIGHTS).is_file():
            raise BundleError(
                f"{folder} is not a trained model folder; train it: {RECIPE[kind].format(folder=folder)}"
            )
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise BundleError(f"{out} is not empty and holds no demo bundle: choose another --out")
    _reset_if_stale(work, sources, cfg)
    shutil.rmtree(out, ignore_errors=True)
    (out / "circuits").mkdir(parents=True)
    for kind, folder in sources.items():
        progress(f"pack {kind} model from {folder}")
        _pack(kind, folder, out, work)
    names = tasks or sorted(REGISTRY)
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_one_thread)
    with pool:
        progress("ablation statistics, task losses and profiles of both models")
        evals = {}
        for kind in KINDS:
            cached = work / kind / "tasks.json"
            found = json.loads(cached.read_text()) if cached.is_file() else {}
            evals[kind] = (
                found if set(names) <= set(found) else pool.submit(_prepare, str(work / kind), names)
            )
        profiles = [
            pool.submit(_profile, str(work / k), str(work / k))
            for k in KINDS
            if not (work / k / PROFILE_INDEX).is_file()
        ]
        for kind in KINDS:
            if not isinstance(evals[kind], dict):
                evals[kind] = evals[kind].result()
                atomic_write_text(work / kind / "tasks.json", json.dumps(evals[kind]))
        if tasks:
            chosen = {k: list(tasks) for k in KINDS}
        else:
            does = {k: [t for t in names if evals[k][t]["loss"] <= cfg.target_loss] for k in KINDS}
            chosen = {"sparse": does["sparse"], "dense": [t for t in does["sparse"] if t in does["dense"]]}
        circuit_file = {(k, t): work / "circuits" / f"{k}.{t}.json" for k in KINDS for t in chosen[k]}
        prunes = {
            (k, t): pool.submit(_prune, str(work / k), t, cfg.model_dump_json(), k == "sparse")
            for (k, t), path in circuit_file.items()
            if not path.is_file()
        }
        for f in profiles:
            f.result()
        for i, ((kind, task), f) in enumerate(prunes.items()):
            atomic_write_text(circuit_file[kind, task], json.dumps(f.result()))
            progress(f"prune {i + 1}/{len(prunes)}: {kind} {task}")
    for kind in KINDS:
        for name in (*STATS, PROFILE, PROFILE_INDEX):
            shutil.copy2(work / kind / name, out / kind / name)
    circuits = []
    for (kind, task), path in circuit_file.items():
        shutil.copy2(path, out / "circuits" / path.name)
        c = json.loads(path.read_text())
        circuits.append(
            {
                "kind": kind,
                "task": task,
                "file": f"circuits/{path.name}",
                "nodes": len(c["nodes"]),
                "edges": len(c["edges"]),
                "validated": kind == "sparse",
            }
        )
    manifest = {
        "version": 1,
        "recipe": {k: RECIPE[k].format(folder=sources[k]) for k in KINDS},
        "models": {k: {"name": NAMES[k], "folder": k, "float16": HALF[k]} for k in KINDS},
        "tasks": {t: {k: evals[k][t] for k in KINDS} for t in names},
        "prune": cfg.model_dump(mode="json"),
        "threads": 1,
        "circuits": circuits,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def bundle_bytes(bundle: Path = BUNDLE) -> int:
    return sum(p.stat().st_size for p in Path(bundle).rglob("*") if p.is_file())


def table(bundle: Path = BUNDLE) -> dict:
    """Per task of the bundle: both models' full-model test loss and, where pruned, their circuit's size
    and test losses; and the geometric mean of the dense/sparse edge ratio over the tasks where both
    circuits meet their target (worker/engine/circuit.py:size_comparison)."""
    from worker.engine.circuit import Circuit, size_comparison

    manifest = read_manifest(bundle)
    circuits = {
        (e["kind"], e["task"]): Circuit.from_json(json.loads((Path(bundle) / e["file"]).read_text()))
        for e in manifest["circuits"]
    }
    rows = []
    for task, full in manifest["tasks"].items():
        row = {"task": task}
        for kind in KINDS:
            row[kind] = {"full": full[kind]["loss"], "accuracy": full[kind]["accuracy"]}
            c = circuits.get((kind, task))
            if c is not None:
                row[kind].update(
                    nodes=len(c.nodes),
                    edges=len(c.edges),
                    circuit=c.losses["circuit"],
                    circuit_train_heldout=c.losses["circuit_train_heldout"],
                    ablated=c.losses["ablated"],
                    meets_target=c.losses["circuit"] <= c.target_loss,
                )
        rows.append(row)
    both = {
        t: (circuits["sparse", t], circuits["dense", t])
        for (kind, t) in circuits
        if kind == "sparse"
        and ("dense", t) in circuits
        and all(c.losses["circuit"] <= c.target_loss for c in (circuits["sparse", t], circuits["dense", t]))
    }
    return {
        "tasks": rows,
        "comparison": size_comparison(both),
        "target_loss": manifest["prune"]["target_loss"],
    }


# --- checking -----------------------------------------------------------------------------------


def verify(
    bundle: Path = BUNDLE, tasks: list[str] | None = None, progress: Callable[[str], None] = print
) -> list[dict]:
    """Prune the shipped models again on the shipped circuits' tasks, with the shipped settings, and
    compare node sets: one row per circuit with `same` true when they are identical."""
    from worker.engine.prune import PruneConfig

    _one_thread()
    manifest = read_manifest(bundle)
    cfg = PruneConfig.model_validate(manifest["prune"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            _unpack(Path(bundle) / kind, Path(tmp) / kind)
        for entry in manifest["circuits"]:
            if tasks and entry["task"] not in tasks:
                continue
            shipped = json.loads((Path(bundle) / entry["file"]).read_text())
            again = _prune(str(Path(tmp) / entry["kind"]), entry["task"], cfg.model_dump_json(), False)
            want, got = {n["name"] for n in shipped["nodes"]}, {n["name"] for n in again["nodes"]}
            rows.append(
                {
                    "kind": entry["kind"],
                    "task": entry["task"],
                    "nodes": len(want),
                    "same": want == got,
                    "missing": sorted(want - got),
                    "extra": sorted(got - want),
                }
            )
            progress(f"{entry['kind']} {entry['task']}: {'same' if want == got else 'DIFFERENT'} node set")
    return rows


# --- loading ------------------------------------------------------------------------------------


def demo_loaded(session) -> bool:
    from sqlalchemy import select

    from .models import Model

    return session.scalar(select(Model.id).where(Model.demo.is_(True)).limit(1)) is not None


def free_name(session, name: str) -> str:
    """`name`, or name-2, name-3, ... when a user's model holds it (demo rows never replace theirs)."""
    from sqlalchemy import select

    from .models import Model

    taken = set(session.scalars(select(Model.name).where(Model.name.like(f"{name}%"))))
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{name}-{i}"
    return candidate


def load(db, settings, bundle: Path = BUNDLE, progress: Callable[[str], None] = print) -> dict[str, int]:
    """Put the bundle's models, profiles and circuits into the database beside whatever is there, as
    demo rows, in one transaction (on any error nothing is left). Returns {kind: model id}; loads nothing
    when a demo is in the database already."""
    from sqlalchemy import update

    from worker.engine.activations import load_profile
    from worker.engine.circuit import Circuit
    from worker.engine.prune import PruneConfig

    from .jobs.kinds.imports import register
    from .jobs.store import task_row, write_circuit, write_profile
    from .models import Model

    manifest = read_manifest(bundle)
    cfg = PruneConfig.model_validate(manifest["prune"])
    bundle = Path(bundle)
    placed: list[Path] = []
    try:
        with db.session() as s:
            if demo_loaded(s):
                return {}
            ids = {}
            for kind in KINDS:
                progress(f"demo: {kind} model")
                staged = settings.models_dir / f".demo-{kind}"
                shutil.rmtree(staged, ignore_errors=True)
                placed.append(staged)
                _unpack(bundle / kind, staged)
                target = register(s, settings, staged, free_name(s, manifest["models"][kind]["name"]), None)
                placed.append(target)
                ids[kind] = int(target.name)
                progress(f"demo: {kind} profile")
                write_profile(s, ids[kind], load_profile(bundle / kind), "stdlib")
                s.execute(update(Model).where(Model.id == ids[kind]).values(demo=True, profiled=True))
            for entry in manifest["circuits"]:
                circuit = Circuit.from_json(json.loads((bundle / entry["file"]).read_text()))
                write_circuit(s, ids[entry["kind"]], task_row(s, entry["task"]).id, circuit, cfg, None)
            progress(f"demo: {len(manifest['circuits'])} circuits")
            return ids
    except BaseException:
        for folder in placed:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def load_if_fresh(db, settings, bundle: Path = BUNDLE, progress: Callable[[str], None] = print) -> dict:
    """The first start: on a database without any model, load the demo. An installation without a
    bundle, or another process loading it at the same moment, is no error."""
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from .models import Model

    with db.session() as s:
        if s.scalar(select(Model.id).limit(1)) is not None:
            return {}
    if not (Path(bundle) / MANIFEST).is_file():
        progress(f"no demo bundle at {bundle}; build one with `circuits demo build`")
        return {}
    try:
        return load(db, settings, bundle, progress)
    except IntegrityError:
        return {}
