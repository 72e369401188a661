"""train(run, out) -> model folder. Sparse (PAPERS.md section 2) or dense with the same code."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from . import checkpoints as ck
from .config import RunConfig, TrainConfig
from .data import encode_documents, fixed_batches, load_corpus, sample_batch, split_corpus, train_tokenizer
from .errors import UserError
from .model import SparseGPT
from .progress import Progress as ProgressFn
from .progress import training_reporter
from .sites import layer_site
from .sparsity import SparseParam, density_at, l0_fraction, lr_at, project_model_, sparse_params


class TrainError(UserError):
    pass


def autocast(enabled: bool, device: torch.device):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate_loss(model: SparseGPT, batches, bf16: bool) -> tuple[float, float]:
    """Mean next-token loss over fixed batches, and the fraction of MLP neurons that never fired."""
    model.eval()
    device = next(model.parameters()).device
    sites = [layer_site(i, "mlp.post_act") for i in range(model.cfg.n_layer)]
    fired = {s: torch.zeros(model.cfg.d_mlp, dtype=torch.bool, device=device) for s in sites}
    losses = []
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(bf16, device):
            logits, acts = model(x, capture=sites)
        losses.append(F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).item())
        for s in sites:
            fired[s] |= (acts[s] != 0).flatten(0, 1).any(0)
    model.train()
    dead = sum(int((~f).sum()) for f in fired.values()) / (len(sites) * model.cfg.d_mlp)
    return sum(losses) / len(losses), dead


class Objective:
    """What a training step minimises: next-token cross-entropy. A subclass (bridges.py) adds loss terms,
    extra trainable `modules` (optimised, checkpointed and resumed together with the model), figures at
    evaluation steps, and the files of its modules once training finished."""

    modules: nn.Module | None = None

    def loss(
        self, model: SparseGPT, x: torch.Tensor, y: torch.Tensor, step: int, bf16: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss to minimise, extra per-step figures for metrics.jsonl)."""
        with autocast(bf16, x.device):
            logits, _ = model(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten()), {}

    def evaluate(self, model: SparseGPT, batches, bf16: bool) -> dict[str, float]:
        return {}

    def finish(self, out: Path) -> None:
        """Write the extra modules' files (called before model.safetensors marks the run finished)."""


def _prepare_folder(run: RunConfig, out: Path, resume: bool) -> RunConfig:
    if resume:
        saved = ck.read_run_config(out)
        if (out / ck.WEIGHTS).exists():
            raise TrainError(f"{out} already holds a finished model; nothing to resume")
        if not (out / ck.CHECKPOINT).exists():
            raise TrainError(f"{out} holds no checkpoint yet; start again without --resume")
        return saved
    if (out / ck.CONFIG).exists():
        raise TrainError(f"{out} already holds a training run; use --resume or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return run


def train(
    run: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    on_progress: ProgressFn | None = None,
    stop_after: int | None = None,
    device: str = "cpu",
    objective: Objective | None = None,
    tokenizer: Tokenizer | None = None,
) -> Path:
    """Train into `out`. With resume, continue bit for bit from out's checkpoint (its config wins).
    `stop_after` ends the run early after that many steps (an interruption, for tests and jobs).
    `objective` replaces plain next-token CE (bridges); `tokenizer` is used instead of training one."""
    out = Path(out)
    fresh = not resume and not (out / ck.CONFIG).exists()
    run = _prepare_folder(run, out, resume)
    objective = objective or Objective()
    try:
        return _train(run, out, resume, on_progress, stop_after, torch.device(device), objective, tokenizer)
    except BaseException:
        if fresh and not (out / ck.CHECKPOINT).exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing resumable: leave nothing behind
        raise


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint a resumed run starts from."""
    lines = path.read_text().splitlines() if path.exists() else []
    ck.atomic_write_text(path, "".join(ln + "\n" for ln in lines if json.loads(ln)["step"] <= step))


BIGRAM, BIGRAM_ADAM_EPS = "bigram.weight", 1e-8


def make_optimizer(model: SparseGPT, extra: nn.Module | None, tc: TrainConfig) -> torch.optim.Adam:
    """Adam over the model (and any extra modules). With `bigram_own_scale` the bigram table is a
    param group of its own with a plain Adam epsilon: its gradient is left out of the RMS
    normalisation, where its 4 M mostly-zero entries would make every update vanish under eps 0.1.
    The fused kernel (CPU and CUDA) makes the dense update of the table cheap."""
    named = [
        *model.named_parameters(),
        *(extra.named_parameters(prefix="extra") if extra is not None else ()),
    ]
    own = tc.bigram_own_scale and model.bigram is not None
    groups = [{"params": [p for n, p in named if not (own and n == BIGRAM)]}]
    if own:
        groups.append({"params": [model.bigram.weight], "eps": BIGRAM_ADAM_EPS, "normalised": False})
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for _, p in named)
    return torch.optim.Adam(
        groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.adam_eps, weight_decay=0.0, fused=fused
    )


def _grad_rms_normalise_(params) -> None:
    """Scale the whole gradient (all parameters together) to RMS 1."""
    grads = [p.grad for p in params if p.grad is not None]
    rms = torch.sqrt(sum(g.pow(2).sum() for g in grads) / sum(g.numel() for g in grads))
    torch._foreach_div_(grads, rms.clamp_min(1e-12))


def optimizer_step(
    model: SparseGPT,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    tc: TrainConfig,
    sparse: list[SparseParam],
    density: float = 1.0,
    embed_density: float = 1.0,
    objective: Objective | None = None,
    step: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One step: loss, gradient RMS normalisation, Adam, top-k projection, decoupled weight decay.
    Returns the loss and the objective's extra figures."""
    loss, terms = (objective or Objective()).loss(model, x, y, step, tc.bf16)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if tc.grad_rms_norm:
        _grad_rms_normalise_([p for g in opt.param_groups if g.get("normalised", True) for p in g["params"]])
    opt.step()
    with torch.no_grad():
        if sparse:
            project_model_(sparse, density, embed_density, tc.min_per_neuron)
        decayed = [p for n, p in model.named_parameters() if _decays(n)]
        torch._foreach_mul_(decayed, 1.0 - opt.param_groups[0]["lr"] * tc.weight_decay)
    return loss.detach(), terms


def _densities(tc: TrainConfig, done: int) -> tuple[float, float]:
    """Kept fraction of matrices and of embeddings/biases after `done` steps."""
    if tc.dense:
        return 1.0, 1.0
    return tuple(
        density_at(done, tc.steps, d, tc.anneal_start, tc.anneal_end)
        for d in (tc.weight_density, tc.embed_density)
    )


def _decays(name: str) -> bool:
    """Weight decay on matrices and embeddings; not on biases, norm gains, sinks or the bigram table."""
    return name.endswith(".weight") and "norm" not in name and name != BIGRAM


def _train(
    run: RunConfig, out: Path, resume: bool, on_progress, stop_after, device, objective: Objective, tokenizer
) -> Path:
    mc, tc = run.model, run.train
    report = training_reporter(on_progress)
    torch.manual_seed(tc.seed)
    model = SparseGPT(mc).to(device)
    extra = objective.modules.to(device) if objective.modules is not None else None
    opt = make_optimizer(model, extra, tc)
    sparse = [] if tc.dense else sparse_params(model)
    start = ck.load_checkpoint(out, model, opt, extra) if resume else 0

    report({"stage": "corpus", "step": start, "total": tc.steps})
    train_docs, val_docs = split_corpus(load_corpus(tc.corpus, tc.max_corpus_bytes), tc.val_percent)
    if resume:
        tok = ck.load_tokenizer(out)
    else:
        report({"stage": "tokenizer", "step": 0, "total": tc.steps})
        tok = tokenizer or train_tokenizer(train_docs, mc.vocab_size)
        tok.save(str(out / ck.TOKENIZER))
        ck.atomic_write_text(out / ck.CONFIG, run.model_dump_json(indent=2))
    report({"stage": "encode", "step": start, "total": tc.steps})
    train_stream, val_stream = encode_documents(tok, train_docs), encode_documents(tok, val_docs)
    val_batches = fixed_batches(val_stream, tc.eval_batches, tc.batch_size, mc.n_ctx, seed=tc.seed + 1)
    train_eval_batches = fixed_batches(
        train_stream, tc.eval_batches, tc.batch_size, mc.n_ctx, seed=tc.seed + 2
    )

    metrics_path = out / ck.METRICS
    if resume:
        _truncate_metrics(metrics_path, start)
    end = tc.steps if stop_after is None else min(tc.steps, stop_after)
    target = 1.0 if tc.dense else tc.weight_density
    tokens_per_step = tc.batch_size * mc.n_ctx
    report({"stage": "train", "step": start, "total": tc.steps})
    t0 = time.perf_counter()
    with metrics_path.open("a") as metrics:
        for step in range(start, end):
            done = step + 1
            density, embed_density = _densities(tc, done)
            lr = lr_at(step, tc.steps, tc.lr, tc.warmup_frac, density, target)
            for group in opt.param_groups:
                group["lr"] = lr
            # The batch depends only on (seed, step), so a resumed run sees the same data.
            g = torch.Generator().manual_seed(tc.seed * 1_000_003 + step)
            x, y = (t.to(device) for t in sample_batch(train_stream, tc.batch_size, mc.n_ctx, g))
            loss, terms = optimizer_step(
                model, opt, x, y, tc, sparse, density, embed_density, objective, step
            )

            rec = {
                "step": done,
                "loss": loss.item(),
                **terms,
                "lr": lr,
                "density": density,
                "tokens_per_s": tokens_per_step * (done - start) / max(time.perf_counter() - t0, 1e-9),
            }
            if done % tc.eval_every == 0 or done == tc.steps:
                rec["val_loss"], rec["dead_neurons"] = evaluate_loss(model, val_batches, tc.bf16)
                rec["train_eval_loss"], _ = evaluate_loss(model, train_eval_batches, tc.bf16)
                rec["l0"] = l0_fraction(sparse) if sparse else 1.0
                rec.update(objective.evaluate(model, val_batches, tc.bf16))
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
            if done % tc.checkpoint_every == 0 or done == end:
                ck.save_checkpoint(out, model, opt, done, extra)
            report({"stage": "train", "total": tc.steps, **rec})
    if end == tc.steps:
        objective.finish(out)
        ck.save_model(out, model)
        report({"stage": "done", "step": tc.steps, "total": tc.steps})
    return out
