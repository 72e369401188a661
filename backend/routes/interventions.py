"""Interactive forward passes in the API process (models from the LRU cache): the playground (a prompt
-> per-token activations of chosen nodes), live ablation (a circuit with nodes switched on or off ->
task loss and the two completions' probabilities) and steering (a bridged model's sparse node perturbed,
the change decoded into its dense model -> the dense model's probabilities per strength)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from fastapi import APIRouter, HTTPException, Request

from worker.engine.ablation import Ablation
from worker.engine.prune import calibrated_loss, make_masks, task_logits
from worker.engine.sites import catalog, site_layer
from worker.engine.tasks.base import pair_labels
from worker.engine.transcoders import parse_feature, task_logits_with

from ..auth import WriteKey
from ..db import SessionDep
from ..interactive import ERRORS as INTERACTIVE_ERRORS
from ..interactive import HasKey, work_cap
from ..model_cache import get_model_cache
from ..models import Model, ModelStatus
from ..schemas import (
    AblationRequest,
    AblationResult,
    ErrorBody,
    PlaygroundRequest,
    PlaygroundResult,
    PromptResult,
    SteerRequest,
    SteerResult,
    TokenRead,
)
from .circuits import CircuitId, get_circuit_row
from .models import ModelId, get_model_row, loaded, model_config
from .nodes import check_node
from .tasks import find_task, task_data
from .transcoders import get_transcoder_row, loaded_transcoders

router = APIRouter(tags=["interventions"])
ERRORS = INTERACTIVE_ERRORS | {
    404: {"model": ErrorBody, "description": "no such model, circuit or node"},
    422: {"model": ErrorBody, "description": "invalid input or a work cap exceeded (named)"},
}
TOP_NEXT = 5
SHOWN_TOKENS = 16  # prompt tokens shown per prompt in an ablation result


@router.post("/models/{model_id}/playground", response_model=PlaygroundResult, responses=ERRORS)
async def playground(
    model_id: ModelId, body: PlaygroundRequest, request: Request, session: SessionDep, has_key: HasKey
):
    """Run a prompt through the model; return every token's activation at the chosen nodes."""
    work = request.app.state.interactive
    return await work.run(request, not has_key, run_playground, model_id, body, request, session)


def run_playground(model_id: int, body: PlaygroundRequest, request: Request, session) -> PlaygroundResult:
    model = get_model_row(session, model_id)
    nodes = {n: check_node(model, n) for n in dict.fromkeys(body.nodes)}
    lm = loaded(request, model)
    ids = lm.tok.encode(body.prompt).ids
    if not ids:
        raise HTTPException(422, "prompt: encodes to no tokens")
    n_ctx = lm.model.cfg.n_ctx
    truncated = len(ids) > n_ctx
    ids = ids[-n_ctx:]
    with torch.inference_mode():
        logits, acts = lm.model(torch.tensor([ids]), capture={site for site, _ in nodes.values()})
    probs = logits[0, -1].float().softmax(-1)
    top = probs.topk(TOP_NEXT)
    return PlaygroundResult(
        model_id=model_id,
        tokens=[TokenRead(id=i, text=lm.tok.decode([i])) for i in ids],
        truncated=truncated,
        activations={n: acts[site][0, :, index].tolist() for n, (site, index) in nodes.items()},
        top_next=[TokenRead(id=i, text=lm.tok.decode([i])) for i in top.indices.tolist()],
        top_next_probs=top.values.tolist(),
    )


@router.post("/circuits/{circuit_id}/ablate", response_model=AblationResult, responses=ERRORS)
async def live_ablation(
    circuit_id: CircuitId, body: AblationRequest, request: Request, session: SessionDep, has_key: HasKey
):
    """Evaluate a circuit with nodes switched off (`off`) or added (`on`) on the task's test pairs.
    mode `keep`: only the node set runs, everything else is mean-ablated, as when the circuit was
    pruned; mode `ablate`: the node set is mean-ablated inside the full model. The nodes of a transcoder
    circuit are features: switched off (zero) rather than mean-ablated, in the replacement model (every
    MLP replaced by its transcoder), and `full` is the original model."""
    work = request.app.state.interactive
    return await work.run(request, not has_key, run_ablation, circuit_id, body, request, session)


def run_ablation(circuit_id: int, body: AblationRequest, request: Request, session) -> AblationResult:
    t0 = time.perf_counter()
    circuit = get_circuit_row(session, circuit_id, graph=True)
    model = get_model_row(session, circuit.model_id)
    work_cap(
        request.app.state.settings,
        2 * 2 * body.pairs * model_config(model).n_ctx,
        "tokens of the ablation (2 passes x 2 prompts x pairs x n_ctx)",
    )
    features = None
    if circuit.transcoder_id is not None:
        features = get_transcoder_row(session, circuit.transcoder_id)
        dims = {s.name: s.dim for s in catalog(model_config(model), features.width) if s.is_feature_site}
    for name in body.off + body.on:
        site, _ = check_node(model, name, None if features is None else dims)
        if site_layer(site) is None:
            raise HTTPException(422, f"{name}: only nodes of the layers' 8 sites can be switched, not {site}")
    kept = ({n.name for n in circuit.nodes} | set(body.on)) - set(body.off)
    lm = loaded(request, model)
    data = task_data(request, model, circuit.task.name, circuit.task)
    prompts = data.test[: body.pairs]
    labels = pair_labels(len(prompts))
    if features is None and circuit.params.get("unit") == "edges":
        on = set(body.on) - set(body.off)
        logits2, full = edge_ablation(
            lm, circuit, data, prompts, kept, on, body.mode, lm.ablation(body.ablation)
        )
    elif features is None:
        logits2, full = node_ablation(lm, model, data, prompts, kept, body.mode, lm.ablation(body.ablation))
    else:
        tr = loaded_transcoders(request, features, model)
        logits2, full = feature_ablation(lm, tr.selected, data, prompts, kept, body.mode)
    probs = logits2.softmax(-1)
    p_correct = probs[torch.arange(len(labels)), labels]
    scale, shift = circuit.calibration.get("scale", 1.0), circuit.calibration.get("shift", 0.0)
    flat = prompts.flatten(0, 1)
    shown = [
        PromptResult(
            prompt=lm.tok.decode(flat[i, -SHOWN_TOKENS:].tolist()),
            expected="ab"[int(labels[i])],
            p_a=float(probs[i, 0]),
            p_b=float(probs[i, 1]),
        )
        for i in range(min(2 * body.show, len(flat)))
    ]
    return AblationResult(
        circuit_id=circuit_id,
        mode=body.mode,
        ablation=body.ablation if features is None else "zero",
        n_nodes=len(kept),
        pairs=len(prompts),
        loss=F.cross_entropy(logits2, labels).item(),
        loss_calibrated=calibrated_loss(logits2, labels, scale, shift),
        accuracy=(logits2.argmax(-1) == labels).float().mean().item(),
        p_correct=p_correct.mean().item(),
        p_a=probs[labels == 0, 0].mean().item(),
        p_b=probs[labels == 1, 1].mean().item(),
        full_loss=F.cross_entropy(full, labels).item(),
        prompts=shown,
        seconds=time.perf_counter() - t0,
    )


def full_logits(lm, data, prompts, masks, ablation: Ablation):
    """The full model's two-class logits on the prompts, computed once per task and count."""
    key = ("full", data.name, len(prompts))
    return lm.memo(key, lambda: task_logits(lm.model, data, prompts, None, masks, ablation))


def node_ablation(lm, model: Model, data, prompts, kept: set[str], mode: str, ablation: Ablation):
    """(two-class logits with the node set kept or ablated, those of the full model)."""
    masks = make_masks(lm.model, "nodes", 0.0, 0.0, torch.Generator())
    chosen = torch.zeros(masks.tau.numel())
    for name in kept:
        site, index = check_node(model, name)
        chosen[masks.slices[site][0] + index] = 1
    keep = chosen if mode == "keep" else 1 - chosen
    return task_logits(lm.model, data, prompts, keep, masks, ablation), full_logits(
        lm, data, prompts, masks, ablation
    )


def edge_ablation(lm, circuit, data, prompts, kept: set[str], on: set[str], mode: str, ablation: Ablation):
    """An edge circuit (pruned with edge masks): its edges between kept nodes, and every edge between
    kept nodes that touches a node switched on, are kept (mode keep) or ablated (mode ablate)."""
    masks = lm.edge_masks()
    chosen = masks.circuit_keep(circuit, kept, frozenset(on))
    keep = chosen if mode == "keep" else 1 - chosen
    return task_logits(lm.model, data, prompts, keep, masks, ablation), full_logits(
        lm, data, prompts, masks, ablation
    )


def feature_ablation(lm, coders, data, prompts, kept: set[str], mode: str):
    """(two-class logits of the replacement model with the feature set kept or switched off, those of
    the original model)."""
    widths = [c.width for c in coders]
    chosen = [torch.zeros(w) for w in widths]
    for name in kept:
        layer, index = parse_feature(name, widths)
        chosen[layer][index] = 1
    keep = chosen if mode == "keep" else [1 - c for c in chosen]
    full = lm.memo(
        ("full", data.name, len(prompts)), lambda: task_logits_with(lm.model, coders, data, prompts, "clean")
    )
    return task_logits_with(lm.model, coders, data, prompts, keep), full


def dense_for(request: Request, session, model: Model):
    """(dense model id or None, its loaded entry) of a bridged model: the row named in the summary of the
    bridge job, else the folder recorded in the bridge config; 409 if it is missing or does not match."""
    from worker.engine.checkpoints import check_dense
    from worker.engine.config import BridgeConfig

    bridge = BridgeConfig.model_validate(model.config["bridge"])
    dense_id = model.summary.get("dense_model_id") if model.summary else None
    row = session.get(Model, dense_id) if dense_id is not None else None
    if dense_id is not None and (row is None or row.status != ModelStatus.ready):
        raise HTTPException(
            409, f"the dense model {dense_id} of bridged model {model.id} is gone or not ready"
        )
    settings = request.app.state.settings
    folder = settings.artifact(row.artifact_path) if row is not None else Path(bridge.dense.path)
    lm = loaded(request, model)
    try:
        lm.memo(
            ("dense-checked", str(folder)),
            lambda: check_dense(bridge.dense, folder, "the bridges") or True,
        )
    except ValueError as e:
        raise HTTPException(409, str(e).splitlines()[0]) from None
    return dense_id, get_model_cache(request).get(row.id if row is not None else 0, folder)


@router.post("/models/{model_id}/steer", response_model=SteerResult, responses=ERRORS)
async def steer_sweep(
    model_id: ModelId, body: SteerRequest, request: Request, session: SessionDep, key: WriteKey
):
    """Steer a bridged model's dense model through one sparse node: on the task's test prompts of one
    class, set the node to (or add) each strength, decode the change of the sparse residual at the next
    bridge location into the dense residual there, and report per strength the mean probabilities of
    the two completions under the dense model and under the edited sparse model; the same for a random
    node of the same site (the control). Needs an x-api-key (a sweep is many forward passes)."""
    work = request.app.state.interactive
    return await work.run(request, False, run_steer, model_id, body, request, session)


def run_steer(model_id: int, body: SteerRequest, request: Request, session) -> SteerResult:
    from worker.engine.bridges import BRIDGES, DEFAULT_STEPS, Bridged, BridgeError, load_bridges, steer

    t0 = time.perf_counter()
    model = get_model_row(session, model_id)
    if not model.bridged:
        raise HTTPException(422, f"model {model_id} has no bridges; train one with a `bridge` job")
    check_node(model, body.node)
    strengths = len(body.strengths) if body.strengths else len(DEFAULT_STEPS)
    work_cap(
        request.app.state.settings,
        body.pairs * model_config(model).n_ctx * (2 * strengths + 1) * 2,
        "tokens of the sweep (pairs x n_ctx x (2 x strengths + 1) x 2 models)",
    )
    task = task_data(request, model, body.task, find_task(session, body.task))
    lm = loaded(request, model)
    dense_id, dense = dense_for(request, session, model)
    bridges = lm.memo(("bridges",), lambda: load_bridges(lm.folder / BRIDGES, dense.model.cfg, lm.run))
    b = Bridged(lm.model, dense.model, bridges, lm.tok, lm.run)
    try:
        options = body.model_dump(exclude={"task", "node"})
        out = steer(b, task, body.node, **options)
    except BridgeError as e:
        raise HTTPException(422, str(e)) from None
    return SteerResult(model_id=model_id, dense_model_id=dense_id, **out, seconds=time.perf_counter() - t0)
