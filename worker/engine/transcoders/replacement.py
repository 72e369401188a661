"""What a transcoder reads and where it writes, and replacing MLPs inside the forward pass.

What x is. Site `{l}.mlp.act_in` is the MLP's input *after* the model's AbsTopK. A transcoder reads the
residual stream after the MLP's RMSNorm but before that AbsTopK, i.e. it replaces the whole sublayer,
AbsTopK included. With a frozen RMSNorm scale a feature's effect on a later feature is then linear, and an
edge factors into activation x weight; through the AbsTopK the "weight" would depend on the input. Its
target is `{l}.mlp.resid_delta`, the sublayer's output.

`Replacement` gives the model site edits (model.Pass runs them in forward order) that record the residual
stream at `{l}.mlp.resid_in` and replace `{l}.mlp.resid_delta` by a function of the MLP's live input: a
transcoder's output, an SAE's reconstruction of the true output, zeros or the mean. One pass, exact for
any set of layers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..model import SparseGPT
from ..sites import layer_site
from .coders import SparseCoder


def mlp_io(model: SparseGPT, idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (the MLP's input as a transcoder reads it, the MLP's output), from one clean pass."""
    L = model.cfg.n_layer
    resid_in, out = ([layer_site(i, kind) for i in range(L)] for kind in ("mlp.resid_in", "mlp.resid_delta"))
    _, acts = model(idx, capture=resid_in + out)
    return [(model.blocks[i].mlp.norm(acts[resid_in[i]]), acts[out[i]]) for i in range(L)]


def norm_scale(norm: nn.Module, resid: torch.Tensor) -> torch.Tensor:
    """The input-dependent factor of RMSNorm: norm(r) = r * scale(r) * weight."""
    return torch.rsqrt(resid.pow(2).mean(-1, keepdim=True) + norm.eps_for(resid.dtype))


ReplaceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (MLP input, true MLP output) -> output


class Replacement:
    """Site edits replacing the MLP output of some layers by a function of the MLP's live input (the
    norm of the residual stream at `{l}.mlp.resid_in`, recorded as the pass goes by) and its true output.
    Keeps each replaced layer's residual stream and MLP input of the last pass (for attribution)."""

    def __init__(self, model: SparseGPT, replace: dict[int, ReplaceFn]):
        self.model, self.replace = model, replace
        self.inputs: dict[int, torch.Tensor] = {}
        self.resid_in: dict[int, torch.Tensor] = {}

    def edits(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        out = {}
        for i in self.replace:
            out[layer_site(i, "mlp.resid_in")] = self._record(i)
            out[layer_site(i, "mlp.resid_delta")] = self._mlp(i)
        return out

    def _record(self, layer: int):
        def edit(resid):
            self.resid_in[layer] = resid
            self.inputs[layer] = self.model.blocks[layer].mlp.norm(resid)
            return resid

        return edit

    def _mlp(self, layer: int):
        return lambda y: self.replace[layer](self.inputs[layer], y)

    def __call__(self, idx: torch.Tensor, **kwargs):
        return self.model(idx, edits=self.edits(), **kwargs)


def coder_fn(kind: str, coder: SparseCoder) -> ReplaceFn:
    if kind == "transcoder":
        return lambda x, y: coder(x)
    return lambda x, y: coder(y)


def coder_times(c: SparseCoder, mult: torch.Tensor) -> ReplaceFn:
    """The transcoder with every feature scaled by `mult` (width,) at every position (1 = untouched,
    0 = switched off)."""
    return lambda x, y: c.decode(c.encode(x) * mult)


def replacement_model(model: SparseGPT, coders: list[SparseCoder], keep: list[torch.Tensor] | None = None):
    """Every MLP replaced by its transcoder; `keep`: per layer the features left on (0/1 or a scale per
    feature, None: all on)."""
    mults = keep or [torch.ones(c.width) for c in coders]
    return Replacement(model, {i: coder_times(c, mults[i]) for i, c in enumerate(coders)})
