"""What job bodies share with the database: the model a job reads, task rows, and the node profiles and
circuits jobs write (also used by the test fixtures and the e2e seed)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from ..models import (
    ActivationExample,
    Circuit,
    CircuitEdge,
    CircuitNode,
    CorpusDocument,
    Model,
    ModelStatus,
    NodeStat,
    Task,
)
from .lifecycle import JobContext


def model_folder(ctx: JobContext, model_id: int) -> tuple[Model, Path]:
    """(Model row, its folder) for a trained model, or a clear error."""
    with ctx.db.session() as s:
        model = s.get(Model, model_id)
        if model is None:
            raise ValueError(f"model {model_id} does not exist")
        if model.status != ModelStatus.ready:
            raise ValueError(f"model {model_id} is {model.status}, not ready")
        return model, ctx.settings.artifact(model.artifact_path)


def _finite(x: float) -> float | None:
    """JSON (and PostgreSQL) has no NaN or infinity: store None."""
    return x if math.isfinite(x) else None


def bin_label(side: str, fraction: float) -> str:
    """`top_0.1`, `top_1`, `top_10`, `top_50`, `bottom_...`: the bin as a percentage."""
    return f"{side}_{fraction * 100:g}"


def delete_node_rows(s: Session, model_id: int, sites: list[str]) -> None:
    """A model's node statistics and activation examples at these sites."""
    s.execute(
        delete(ActivationExample).where(
            ActivationExample.model_id == model_id, ActivationExample.site.in_(sites)
        )
    )
    s.execute(delete(NodeStat).where(NodeStat.model_id == model_id, NodeStat.site.in_(sites)))


def write_profile(s: Session, model_id: int, profile, corpus: str, progress=lambda f: None) -> dict:
    """Replace a model's node statistics and examples at the profiled sites (other sites, e.g. the
    transcoder features of a model profiled separately, keep theirs). Example windows are token ids
    (int32) and the node's activations (float16) as bytes; the corpus text is stored once per document
    and referenced by character offsets."""
    import numpy as np

    from worker.engine.activations import BIN_FRACTIONS, QUANTILE_LEVELS, SIDES
    from worker.engine.sites import parse_node, site_layer

    sites = list(profile.sites)
    delete_node_rows(s, model_id, sites)
    docs = profile.windows.docs
    doc_ids: dict[int, int] = {}

    def document_id(i: int) -> int:
        if i not in doc_ids:
            text = docs[i].text
            digest = hashlib.sha256(text.encode()).hexdigest()
            found = s.scalar(select(CorpusDocument.id).where(CorpusDocument.sha256 == digest))
            if found is None:
                row = CorpusDocument(corpus=corpus[:512], path=docs[i].path[:512], sha256=digest, text=text)
                s.add(row)
                s.flush()
                found = row.id
            doc_ids[i] = found
        return doc_ids[i]

    levels = [f"{q:g}" for q in QUANTILE_LEVELS]
    labels = [(side, [bin_label(side, f) for f in BIN_FRACTIONS]) for side in SIDES]
    stats, examples, total = [], [], sum(len(p.mean) for p in profile.sites.values())
    for i, node in enumerate(profile.nodes()):
        site, index = parse_node(node.node)
        thresholds = {}
        for (_, names), values in zip(labels, (node.top_thresholds, node.bottom_thresholds), strict=True):
            thresholds.update({n: _finite(v) for n, v in zip(names, values, strict=True)})
        stats.append(
            {
                "model_id": model_id,
                "name": node.node,
                "site": site,
                "layer": site_layer(site),
                "index": index,
                "mean": node.mean,
                "frequency": node.frequency,
                "quantiles": {lv: _finite(v) for lv, v in zip(levels, node.quantiles, strict=True)},
                "thresholds": thresholds,
            }
        )
        for ex in node.examples:
            examples.append(
                {
                    "model_id": model_id,
                    "node": node.node,
                    "site": site,
                    "bin": bin_label(ex.side, ex.fraction),
                    "rank": ex.slot,
                    "activation": ex.value,
                    "center": ex.center,
                    "token_ids": np.asarray(ex.tokens, dtype="<i4").tobytes(),
                    "values": np.asarray(ex.values, dtype="<f2").tobytes(),
                    "document_id": document_id(ex.doc),
                    "offset": ex.char_start,
                    "end": ex.char_end,
                }
            )
        if len(examples) >= 20_000 or i + 1 == total:
            s.execute(insert(NodeStat), stats)
            if examples:
                s.execute(insert(ActivationExample), examples)
            stats, examples = [], []
            progress((i + 1) / total)
    s.execute(  # documents no example refers to any more (this or an earlier profile's)
        delete(CorpusDocument).where(
            ~select(ActivationExample.id).where(ActivationExample.document_id == CorpusDocument.id).exists()
        )
    )
    return {
        "nodes": total,
        "examples": s.scalar(
            select(func.count())
            .select_from(ActivationExample)
            .where(ActivationExample.model_id == model_id, ActivationExample.site.in_(sites))
        ),
        "documents": len(doc_ids),
    }


def task_row(s: Session, name: str) -> Task:
    """The tasks-table row of a task: custom tasks are created through the API; a built-in task's row
    is made from the engine registry the first time a job uses it."""
    from worker.engine.tasks import REGISTRY, TaskError

    row = s.scalar(select(Task).where(Task.name == name))
    if row is None and name in REGISTRY:
        spec = REGISTRY[name]
        row = Task(
            name=name,
            builtin=True,
            completion_a=spec.completion_a,
            completion_b=spec.completion_b,
            description=spec.description,
        )
        s.add(row)
        s.flush()
    if row is None:
        raise TaskError(f"unknown task {name!r}; known: {', '.join(sorted(REGISTRY))} and custom tasks")
    return row


def task_data(name: str, spec: dict, builtin: bool, tok):
    """Tokenise a task for a model: built-in tasks mine the corpus, custom ones use their pairs."""
    from worker.engine.tasks import build_custom_task, build_task, get_task, parse_custom_task

    if builtin:
        return build_task(get_task(name), tok)
    return build_custom_task(parse_custom_task(spec), tok)[0]


def write_circuit(
    s: Session, model_id: int, task_id: int, circuit, cfg, job_id: str, transcoder_id: int | None = None
) -> int:
    row = Circuit(
        transcoder_id=transcoder_id,
        model_id=model_id,
        task_id=task_id,
        target_loss=circuit.target_loss,
        n_nodes=len(circuit.nodes),
        n_edges=len(circuit.edges),
        losses=circuit.losses,
        calibration=circuit.calibration,
        curve=circuit.curve,
        runs=circuit.runs,
        validation=circuit.validation,
        faithfulness=circuit.faithfulness,
        params=cfg.model_dump(mode="json"),
        job_id=job_id,
    )
    s.add(row)
    s.flush()
    if circuit.nodes:
        s.execute(
            insert(CircuitNode),
            [
                {
                    "circuit_id": row.id,
                    "name": n.name,
                    "site": n.site,
                    "layer": n.layer,
                    "index": n.index,
                    "tau": n.tau,
                }
                for n in circuit.nodes
            ],
        )
    if circuit.edges:
        s.execute(
            insert(CircuitEdge),
            [
                {
                    "circuit_id": row.id,
                    "src": e.src,
                    "dst": e.dst,
                    "weight": e.weight,
                    "kind": e.kind,
                    "activation": e.activation,
                    "weight_product": e.weight_product,
                }
                for e in circuit.edges
            ],
        )
    return row.id
