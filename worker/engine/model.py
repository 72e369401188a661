"""The weight-sparse GPT (PAPERS.md section 1) with named sites.

Every activation the rest of the project talks about passes through `Pass.site(name, x)`, which is the
one place where activations are captured and edited. A node is `site[index]`, e.g. `1.mlp.post_act[7]`.
Edges (a weight between two nodes, a residual link from a write channel to a later read channel) are
edited through `Pass.linear` and `Pass.read` (`EdgeEdit`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .kernels import abs_topk, add_table_rows, cpu_float32
from .sites import LAYER_SITES, resid_locations, site_dims


@dataclass
class SiteEdit:
    """x -> keep * x + (1 - keep) * replace + add, broadcast over (batch, position, channel).

    Mean ablation: keep = node mask, replace = node means. Setting a node to v: keep 0, replace v.
    A differentiable `keep` (e.g. a pruning mask) passes gradients through. The tensors follow x's
    device and dtype, so masks and means may live on the CPU beside a model on a GPU."""

    keep: torch.Tensor | None = None
    replace: torch.Tensor | None = None
    add: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.keep is not None:
            keep = self.keep.to(x)
            replaced = 0.0 if self.replace is None else (1 - keep) * self.replace.to(x)
            x = keep * x + replaced
        elif self.replace is not None:
            x = self.replace.to(x).expand_as(x)
        if self.add is not None:
            x = x + self.add.to(x)
        return x


@dataclass
class EdgeEdit:
    """Edge ablation: a masked edge carries what its source node would be replaced by (its mean, 0 or a
    resampled value), while the source's other edges carry its value.

    matrices[dst] = (keep, replace): keep (out, in) over the entries of the weight matrix into site dst,
    replace = the replacement of the matrix's source site, None for zero.
    reads[reader] = [(writer, keep, replace)]: the reader (an `{l}.attn.act_in` or `{l}.mlp.act_in`) sees
    the residual stream with the delta of an earlier writer (`{l}.*.resid_delta`) replaced where keep
    (d_model,) is 0. keep may be fractional and carry gradients (pruning masks)."""

    matrices: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)
    reads: dict[str, list[tuple[str, torch.Tensor, torch.Tensor | None]]] = field(default_factory=dict)

    def writers(self) -> set[str]:
        return {w for links in self.reads.values() for w, _, _ in links}


class Pass:
    """State of one forward pass: which sites and edges to edit and which sites to record."""

    def __init__(
        self,
        edits: dict[str, SiteEdit] | None,
        capture: Iterable[str],
        edge_edit: EdgeEdit | None = None,
    ):
        self.edits = edits or {}
        self.capture = set(capture)
        self.acts: dict[str, torch.Tensor] = {}
        self.edge_edit = edge_edit
        self.writers = edge_edit.writers() if edge_edit else set()
        self.writes: dict[str, torch.Tensor] = {}

    def site(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name in self.edits:
            x = self.edits[name](x)
        if name in self.capture:
            self.acts[name] = x
        if name in self.writers:
            self.writes[name] = x
        return x

    def linear(self, dst: str, layer: nn.Linear, x: torch.Tensor, through=None) -> torch.Tensor:
        """layer(x) into site dst; with the matrix's entries masked (EdgeEdit), a masked entry reads the
        replacement of its source instead of x, passed `through` what lies between the source site and
        the matrix (the attention mixing, for the heads' outputs)."""
        edit = self.edge_edit.matrices.get(dst) if self.edge_edit else None
        if edit is None:
            return layer(x)
        keep, replace = edit
        w = layer.weight
        keep = keep.to(w)
        out = F.linear(x, w * keep, layer.bias)
        if replace is None:  # zero ablation
            return out
        replace = replace.to(x).expand(*x.shape[:-1], replace.shape[-1])
        return out + F.linear(replace if through is None else through(replace), w * (1 - keep))

    def read(self, reader: str, x: torch.Tensor) -> torch.Tensor:
        """The residual stream x as the reader site sees it (EdgeEdit.reads)."""
        links = self.edge_edit.reads.get(reader, ()) if self.edge_edit else ()
        for writer, keep, replace in links:
            delta = self.writes[writer]
            swapped = delta if replace is None else delta - replace.to(x)
            x = x - (1 - keep.to(x)) * swapped
        return x


class _SinkAttentionCPU(torch.autograd.Function):
    """Causal attention with a sink from the CPU flash kernel's own outputs, with no padded copies.
    Without the sink the kernel gives out0 and the log-sum-exp L of each query's scores; the sink adds
    exp(sink) to the softmax's denominator and nothing to its numerator, so out = r * out0 with
    r = sigmoid(L - sink). Backward: with the sink the score gradients are P'(dO.v - dO.out), P' = r * p;
    the kernel's backward computes p(g.v - g.o) from the g and o it is given, so g = r * dO and o = out give
    exactly that (and dV = P'^T dO). d sink = -(1 - r) dO.out."""

    @staticmethod
    def forward(ctx, q, k, v, sink, scale: float):
        out0, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, True, scale=scale
        )
        r = torch.sigmoid(lse - sink.view(1, -1, 1)).unsqueeze(-1)
        out = out0 * r
        ctx.save_for_backward(q, k, v, out, lse, r)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, r = ctx.saved_tensors
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            (grad * r).contiguous(), q, k, v, out, lse, 0.0, True, scale=ctx.scale
        )
        dsink = -((1 - r.squeeze(-1)) * (grad * out).sum(-1)).sum((0, 2))
        return dq, dk, dv, dsink, None


def causal_attention(q, k, v, sink: torch.Tensor | None) -> torch.Tensor:
    """Causal softmax attention over (batch, head, position, d_head). The sink is an extra key slot
    with logit `sink[h]` and zero value, visible to every query. It is written as one more key (first)
    and one more dimension: queries get a 1 there, real keys a 0, the sink key sink * sqrt(d_head), so the
    fused causal kernel applies (a dummy first query keeps the causal mask aligned). While the sink is
    being trained on CPU in float32 it comes from the flash kernel's log-sum-exp instead
    (`_SinkAttentionCPU`, a quarter of the attention's cost); the two agree to float rounding (~1e-7),
    and every other pass (inference, pruning, evaluation) keeps the padded kernel, so the shipped demo
    circuits reproduce bit for bit."""
    scale = 1 / math.sqrt(q.shape[-1])
    if sink is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    trained = torch.is_grad_enabled() and sink.requires_grad
    if trained and cpu_float32(q) and cpu_float32(sink) and not torch.is_autocast_enabled("cpu"):
        return _SinkAttentionCPU.apply(q, k, v, sink, scale)
    B, H, T, D = q.shape
    sink_key = torch.cat([q.new_zeros(H, D), (sink.to(q.dtype) / scale).view(H, 1)], -1)
    q = F.pad(F.pad(q, (0, 1), value=1.0), (0, 0, 1, 0))
    k = torch.cat([sink_key.view(1, H, 1, D + 1).expand(B, H, 1, D + 1), F.pad(k, (0, 1))], 2)
    v = F.pad(v, (0, 1, 1, 0))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)[:, :, 1:, :D]


class Norm(nn.Module):
    """Pre-norm: RMSNorm (the default) or LayerNorm, with a learnt gain (and optionally a bias).
    eps None is the activation dtype's machine epsilon (torch's RMSNorm default)."""

    def __init__(self, dim: int, kind: str = "rms", bias: bool = False, eps: float | None = 1e-6):
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def eps_for(self, dtype: torch.dtype) -> float:
        return torch.finfo(dtype).eps if self.eps is None else self.eps

    def forward(self, x):
        eps = self.eps_for(x.dtype)
        if self.kind == "layer":
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, eps)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.weight
        return x if self.bias is None else x + self.bias


def make_norm(cfg: ModelConfig) -> Norm:
    return Norm(cfg.d_model, cfg.norm, cfg.norm_bias, cfg.norm_eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        d, a = cfg.d_model, cfg.d_attn
        self.norm = make_norm(cfg)
        self.q_proj = nn.Linear(d, a, bias=cfg.bias)
        self.k_proj = nn.Linear(d, a, bias=cfg.bias)
        self.v_proj = nn.Linear(d, a, bias=cfg.bias)
        self.o_proj = nn.Linear(a, d, bias=cfg.bias)
        # The sink is an extra always-visible slot with zero key and value: only its logit is learnt.
        self.sink = nn.Parameter(torch.zeros(cfg.n_head)) if cfg.attn_sink else None

    def forward(self, x: torch.Tensor, p: Pass, topk) -> torch.Tensor:
        B, T, _ = x.shape
        H, Dh = self.cfg.n_head, self.cfg.d_head
        s = f"{self.layer}.attn"
        h = p.site(f"{s}.act_in", topk(self.norm(p.read(f"{s}.act_in", x)), "attn.act_in"))
        q = p.site(f"{s}.q", topk(p.linear(f"{s}.q", self.q_proj, h), "attn.q"))
        k = p.site(f"{s}.k", topk(p.linear(f"{s}.k", self.k_proj, h), "attn.k"))
        v = p.site(f"{s}.v", topk(p.linear(f"{s}.v", self.v_proj, h), "attn.v"))
        q, k = (t.view(B, T, H, Dh).transpose(1, 2) for t in (q, k))

        def mix(v):  # the heads' outputs side by side: (B, T, H * Dh)
            v = v.reshape(B, T, H, Dh).transpose(1, 2)
            return causal_attention(q, k, v, self.sink).transpose(1, 2).reshape(B, T, H * Dh)

        y = p.site(f"{s}.y", mix(v))  # a capture point, not a node site
        out = p.linear(f"{s}.resid_delta", self.o_proj, y, through=mix)
        return p.site(f"{s}.resid_delta", topk(out, "attn.resid_delta"))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.norm = make_norm(cfg)
        self.act = F.gelu if cfg.activation == "gelu" else F.relu
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor, p: Pass, topk) -> torch.Tensor:
        s = f"{self.layer}.mlp"
        h = p.site(f"{s}.act_in", topk(self.norm(p.read(f"{s}.act_in", x)), "mlp.act_in"))
        h = p.site(f"{s}.post_act", topk(self.act(p.linear(f"{s}.post_act", self.fc_in, h)), "mlp.post_act"))
        return p.site(
            f"{s}.resid_delta", topk(p.linear(f"{s}.resid_delta", self.fc_out, h), "mlp.resid_delta")
        )


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.attn = Attention(cfg, layer)
        self.mlp = MLP(cfg, layer)
        self.resid_relu = cfg.resid_activation == "relu"

    def _after_write(self, x, topk, location: str):
        return topk(torch.relu(x) if self.resid_relu else x, location)

    def forward(self, x, p: Pass, topk, from_mlp: bool = False):
        """`from_mlp`: x is the MLP's input (a pass started at `{layer}.mlp.resid_in`)."""
        if not from_mlp:
            x = p.site(f"{self.layer}.attn.resid_in", x)
            x = self._after_write(x + self.attn(x, p, topk), topk, "resid_post_attn")
        x = p.site(f"{self.layer}.mlp.resid_in", x)
        return self._after_write(x + self.mlp(x, p, topk), topk, "resid_post_mlp")


class SparseGPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.d_model) if cfg.pos_emb else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.final_norm = make_norm(cfg)
        logits_bias = cfg.bias if cfg.logits_bias is None else cfg.logits_bias
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=logits_bias)
        self.bigram = nn.Embedding(cfg.vocab_size, cfg.vocab_size) if cfg.bigram_table else None
        self._init_weights()
        if cfg.tied_unembed:
            self.lm_head.weight = self.wte.weight
        self.topk_at = set(LAYER_SITES if cfg.topk_at is None else cfg.topk_at)

    def _init_weights(self):
        out_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                continue
            if name.endswith(".bias") or name.endswith("sink") or name.startswith("bigram"):
                nn.init.zeros_(p)
            elif name.endswith(("o_proj.weight", "fc_out.weight")):
                nn.init.normal_(p, std=out_std)
            else:
                nn.init.normal_(p, std=0.02)

    def site_dims(self) -> dict[str, int]:
        return site_dims(self.cfg)

    def _start_block(self, location: str) -> tuple[int, bool]:
        """(first block to run, whether it starts at its MLP) for a pass starting at `location`."""
        if location == "final_resid":
            return self.cfg.n_layer, False
        if location not in resid_locations(self.cfg):
            raise ValueError(
                f"cannot start at {location!r}; use one of {', '.join(resid_locations(self.cfg))}"
            )
        layer, kind, _ = location.split(".")
        return int(layer), kind == "mlp"

    def _topk(self, x: torch.Tensor, location: str) -> torch.Tensor:
        if self.cfg.act_frac is None or location not in self.topk_at:
            return x
        return abs_topk(x, int(self.cfg.act_frac * x.shape[-1]))

    def forward(
        self,
        idx: torch.Tensor,
        edits: dict[str, SiteEdit] | None = None,
        capture: Iterable[str] = (),
        last_only: bool = False,
        start: tuple[str, torch.Tensor] | None = None,
        edge_edit: EdgeEdit | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (batch, position, vocab) and the captured site activations. `last_only` computes the
        logits of the last position only (batch, 1, vocab): all that next-token tasks need.
        `start=(location, residual)` skips everything before a `resid_locations` site and continues
        from the given residual stream there (idx still feeds the bigram table)."""
        T = idx.shape[1]
        if T > self.cfg.n_ctx:
            raise ValueError(f"sequence of {T} tokens exceeds the context of {self.cfg.n_ctx}")
        p = Pass(edits, capture, edge_edit)
        if start is None:
            first, from_mlp = 0, False
            x = self.wte(idx)
            if self.wpe is not None:
                x = x + self.wpe(torch.arange(T, device=idx.device))
            x = p.site("embed", x)
        else:
            location, x = start
            first, from_mlp = self._start_block(location)
        for block in self.blocks[first:]:
            x = block(x, p, self._topk, from_mlp)
            from_mlp = False
        x = p.site("final_resid", x)
        if last_only:
            x, idx = x[:, -1:], idx[:, -1:]
        logits = self.lm_head(self.final_norm(x))
        if self.bigram is not None:
            logits = add_table_rows(logits, self.bigram.weight, idx)
        return logits, p.acts
