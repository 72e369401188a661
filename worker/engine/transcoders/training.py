"""Training a sweep: every lambda x layer x {transcoder, SAE} together on the same stream of training
tokens (one batched matmul, `CoderBank`), then its validation figures. (The model's own training loop,
train.train, does not fit: it steps the model's weights under a sparsity schedule, checkpoints and
resumes; here the model is frozen and a bank of small coders learns from its activations.)
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..checkpoints import fingerprint
from ..data import encode_documents, fixed_batches, load_corpus, sample_batch, split_corpus
from ..model import SparseGPT
from ..search import ProgressFn
from .coders import CoderBank, SparseCoder, TranscoderConfig, TranscoderRun, Transcoders
from .evaluation import evaluate_coders, matched_comparison
from .replacement import mlp_io
from .storage import save_transcoders


def _lr_factor(step: int, steps: int) -> float:
    decay_from = int(0.8 * steps)
    return 1.0 if step < decay_from else max(0.0, (steps - step) / max(1, steps - decay_from))


def _streams(run, tok):
    tc = run.train
    train_docs, val_docs = split_corpus(load_corpus(tc.corpus, tc.max_corpus_bytes), tc.val_percent)
    return encode_documents(tok, train_docs), encode_documents(tok, val_docs)


def train_transcoders(
    model: SparseGPT,
    tok,
    run,
    cfg: TranscoderConfig,
    dense_folder: Path,
    out: Path | None = None,
    on_progress: ProgressFn | None = None,
) -> Transcoders:
    """Train the sweep on the model's training split, evaluate it on its validation split, and save it to
    `out` (config.json, transcoders.safetensors, sweep.json) when given."""
    report = on_progress or (lambda f, m: None)
    cfg.selected_index()  # fail early on a bad index
    model.eval().requires_grad_(False)
    device = next(model.parameters()).device
    mc = model.cfg
    L, d = mc.n_layer, mc.d_model
    width = cfg.expansion * mc.d_mlp
    kinds = ["transcoder"] + (["sae"] if cfg.sae else [])
    slots = [(k, i, layer) for k in kinds for i in range(len(cfg.l1)) for layer in range(L)]
    report(0.0, "encoding the corpus")
    train_stream, val_stream = _streams(run, tok)
    g = torch.Generator().manual_seed(cfg.seed)
    val_batches = [
        (x.to(device), y.to(device))
        for x, y in fixed_batches(val_stream, cfg.eval_batches, cfg.batch_size, mc.n_ctx, seed=cfg.seed + 1)
    ]

    def batch_io():
        x, _ = sample_batch(train_stream, cfg.batch_size, mc.n_ctx, g)
        with torch.no_grad():
            return [(a.flatten(0, 1), b.flatten(0, 1)) for a, b in mlp_io(model, x.to(device))]

    # Normalising scales (E||v||^2 = 1) and the MLP-output means (for mean ablation and b_dec's init).
    first = batch_io()
    in_scale = [float(x.pow(2).sum(-1).mean().sqrt()) for x, _ in first]
    out_scale = [float(y.pow(2).sum(-1).mean().sqrt()) for _, y in first]
    bank = CoderBank(len(slots), d, width, d, g).to(device)
    with torch.no_grad():
        for m, (_, _, layer) in enumerate(slots):
            bank.b_dec[m] = first[layer][1].mean(0) / out_scale[layer]
    lam = torch.tensor([cfg.l1[i] for _, i, _ in slots], device=device)
    opt = torch.optim.Adam(bank.parameters(), lr=cfg.lr)
    mean_sum = [torch.zeros(d, dtype=torch.float64, device=device) for _ in range(L)]
    n_mean = 0
    t0 = time.monotonic()
    history = []  # per logged step: normalised MSE and L0 of every coder (slot order)
    io = first
    for step in range(cfg.steps):
        if step:
            io = batch_io()
        xs = [x / in_scale[i] for i, (x, _) in enumerate(io)]
        ys = [y / out_scale[i] for i, (_, y) in enumerate(io)]
        for i, (_, y) in enumerate(io):
            mean_sum[i] += y.double().sum(0)
        n_mean += io[0][1].shape[0]
        inputs = torch.stack([xs[layer] if k == "transcoder" else ys[layer] for k, _, layer in slots])
        target = torch.stack([ys[layer] for _, _, layer in slots])
        recon, z = bank(inputs)
        mse = (recon - target).pow(2).sum(-1).mean(-1)
        l1 = (z * bank.W_dec.norm(dim=-1)[:, None, :]).sum(-1).mean(-1)
        ramp = min(1.0, (step + 1) / max(1.0, cfg.l1_warmup * cfg.steps))
        loss = (mse + ramp * lam * l1).sum()
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg.steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == 0 or (step + 1) % 25 == 0 or step + 1 == cfg.steps:
            l0 = float((z > 0).float().sum(-1).mean())
            history.append(
                {"step": step + 1, "mse": mse.tolist(), "l0": (z > 0).float().sum(-1).mean(-1).tolist()}
            )
            report(
                0.9 * (step + 1) / cfg.steps,
                f"step {step + 1}/{cfg.steps} mse {mse.mean().item():.3f} L0 {l0:.1f} "
                f"({(step + 1) * cfg.batch_size * mc.n_ctx / (time.monotonic() - t0):.0f} tok/s)",
            )
    coders: dict[str, list[list[SparseCoder]]] = {k: [[None] * L for _ in cfg.l1] for k in kinds}
    for m, (kind, i, layer) in enumerate(slots):
        src = in_scale[layer] if kind == "transcoder" else out_scale[layer]
        coders[kind][i][layer] = bank.export(m, src, out_scale[layer])
    means = [(s / n_mean).float() for s in mean_sum]
    figures = evaluate_coders(
        model, coders, val_batches, means, cfg.l1, lambda f, m: report(0.9 + 0.1 * f, m)
    )
    figures["matched"] = matched_comparison(figures["points"])
    figures["train_tokens"] = cfg.steps * cfg.batch_size * mc.n_ctx
    figures["slots"] = [{"kind": k, "l1_index": i, "layer": layer} for k, i, layer in slots]
    figures["history"] = history
    figures["seconds"] = time.monotonic() - t0
    tr = Transcoders(
        TranscoderRun(config=cfg, dense=fingerprint(dense_folder), d_model=d, width=width),
        coders,
        figures,
        means,
    )
    if out is not None:
        save_transcoders(out, tr)
    return tr


@torch.no_grad()
def evaluate_transcoders(
    tr: Transcoders, model: SparseGPT, tok, run, eval_batches: int | None = None, on_progress=None
) -> dict:
    """The validation figures of a trained sweep again (e.g. on more batches): replaces tr.sweep's
    reference, points and matched comparison and returns the sweep. MLP means (for the mean-ablation
    reference) come from the folder, or from 16 training batches for folders saved without them."""
    cfg = tr.run.config
    n = eval_batches or cfg.eval_batches
    train_stream, val_stream = _streams(run, tok)
    batches = fixed_batches(val_stream, n, cfg.batch_size, model.cfg.n_ctx, seed=cfg.seed + 1)
    means = tr.mlp_means
    if means is None:
        sums = [torch.zeros(model.cfg.d_model, dtype=torch.float64) for _ in range(model.cfg.n_layer)]
        count = 0
        for x, _ in fixed_batches(train_stream, 16, cfg.batch_size, model.cfg.n_ctx, seed=cfg.seed + 2):
            for i, (_, y) in enumerate(mlp_io(model, x)):
                sums[i] += y.double().sum((0, 1))
            count += x.numel()
        means = [(v / count).float() for v in sums]
    figures = evaluate_coders(model, tr.coders, batches, means, cfg.l1, on_progress)
    tr.sweep |= figures | {"matched": matched_comparison(figures["points"]), "eval_batches": n}
    return tr.sweep
