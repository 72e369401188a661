"""Node profiles: mean, quantiles, firing frequency and percentile-binned activation examples.

One streaming pass over non-overlapping token windows of the corpus (documents shuffled, joined by the
end-of-text token like the training stream). Every token remembers its document and character offsets,
so an example points into corpus text that is stored once.

Binning. Most sites are AbsTopK outputs: a node is exactly zero at about 3/4 of the positions, so
percentiles over all positions would put every bin below the top quarter at zero. The bins therefore
rank the positions where the node *fires* (|a| > eps). "top f" holds the firing positions whose rank,
counted from the highest value, lies in [previous fraction, f); "bottom f" likewise from the lowest
value. With fractions 0.1 %, 1 %, 10 %, 50 % the four top bins are disjoint bands and so are the four
bottom ones. Sites without activation sparsity (embed, final_resid, dense models) fire everywhere, so
there the bins are plain percentiles. `quantiles` are over all positions, zeros included.

Exactness and cost. Means and frequencies are exact over the whole sample. Per node the pass keeps the
K highest and K lowest firing values with their contexts exactly (K >= 0.1 % of the sample, so both
0.1 % bins are exact), plus every activation of a few whole windows (a uniform sample of about
`sample_positions` positions). A bin whose ranks lie inside the exact lists is drawn from them; a wider
bin is drawn from the window sample, between thresholds taken from the exact lists where they reach and
from the sample's order statistics otherwise. The exact lists are updated with vectorised candidate
filtering (only values beyond a node's current K-th best are looked at), so the pass costs little more
than the forward pass itself (bench/profile.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer

from .checkpoints import load_model
from .data import EOT, CorpusError, Document, load_corpus, split_corpus
from .model import SparseGPT, node_name, parse_node

BIN_FRACTIONS = (0.001, 0.01, 0.1, 0.5)
SIDES = ("top", "bottom")
QUANTILE_LEVELS = (0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0)


class ProfileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: int = Field(65_536, ge=64, le=100_000_000)  # corpus sample size
    batch_size: int = Field(32, ge=1, le=4096)  # windows per forward pass
    context: int = Field(12, ge=0, le=512)  # tokens each side of an example's position
    examples: int = Field(5, ge=1, le=64)  # per bin
    sample_positions: int = Field(4096, ge=16, le=10_000_000)  # whole-window sample for wide bins
    exact: int = Field(32, ge=1, le=4096)  # highest and lowest firing values kept exactly per node
    eps: float = Field(0.0, ge=0)  # a node fires where |a| > eps
    seed: int = 0


@dataclass
class Windows:
    """Non-overlapping token windows; per token its document and character span in that document."""

    tokens: torch.Tensor  # (W, T) int64
    doc: torch.Tensor  # (W, T) int64, index into docs; the end-of-text token belongs to the doc before it
    start: torch.Tensor  # (W, T) int64
    end: torch.Tensor  # (W, T) int64
    docs: list[Document]


def corpus_windows(
    tok: Tokenizer, docs: list[Document], n_windows: int, n_ctx: int, seed: int = 0
) -> Windows:
    """Shuffle the documents, encode them into one stream until n_windows * n_ctx tokens, cut it up."""
    eot = tok.token_to_id(EOT)
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    need = n_windows * n_ctx
    ids, doc_of, starts, ends, used = [], [], [], [], []
    total = 0
    for i in range(0, len(order), 16):
        chunk = [docs[j] for j in order[i : i + 16]]
        for d, enc in zip(chunk, tok.encode_batch([d.text for d in chunk]), strict=True):
            n = len(enc.ids) + 1
            offsets = torch.tensor(enc.offsets + [(len(d.text), len(d.text))], dtype=torch.int64)
            ids.append(torch.tensor(enc.ids + [eot], dtype=torch.int64))
            doc_of.append(torch.full((n,), len(used), dtype=torch.int64))
            starts.append(offsets[:, 0])
            ends.append(offsets[:, 1])
            used.append(d)
            total += n
        if total >= need:
            break
    n_windows = min(n_windows, total // n_ctx)
    if n_windows == 0:
        raise CorpusError(f"corpus of {total} tokens is shorter than one window of {n_ctx}")
    cut = n_windows * n_ctx

    def windows(parts):
        return torch.cat(parts)[:cut].view(n_windows, n_ctx)

    return Windows(windows(ids), windows(doc_of), windows(starts), windows(ends), used)


class _Extremes:
    """The K largest firing values of every node seen so far, where they were, and the node's values
    around them. Slots are unordered; a batch only touches the slots its candidates take over.
    Contexts of positions in the whole-window sample (windows < sampled) are read from it instead."""

    def __init__(self, dim: int, k: int, context: int, sign: float, sampled: int):
        self.k, self.context, self.sign, self.sampled = k, context, sign, sampled
        self.values = torch.full((dim, k), -math.inf)  # sign * activation
        self.where = torch.full((dim, k), -1, dtype=torch.int64)  # flat position window * T + pos
        self.ctx = torch.zeros((dim, k, 2 * context + 1), dtype=torch.float16)

    def floor(self) -> torch.Tensor:
        """Per node, the value a candidate must beat (-inf while the list is not full)."""
        return self.values.min(1).values

    def add_dense(self, acts: torch.Tensor, firing: torch.Tensor, first_window: int) -> None:
        """Every firing value of the batch is a candidate (first batch, lists empty)."""
        B, T, D = acts.shape
        pad = torch.where(firing, self.sign * acts, -math.inf).permute(2, 0, 1).reshape(D, B * T)
        cols = torch.arange(B * T)
        self._merge(acts, pad, cols // T, cols % T, first_window)

    def add_candidates(self, acts, b, t, c, first_window: int) -> None:
        """Candidates at (b, t, c), sorted by node c."""
        if len(c) == 0:
            return
        D = acts.shape[2]
        counts = torch.bincount(c, minlength=D)
        rank = torch.arange(len(c)) - (counts.cumsum(0) - counts)[c]
        pad = torch.full((D, int(counts.max())), -math.inf)
        pad[c, rank] = self.sign * acts[b, t, c]
        cand_b = torch.zeros(pad.shape, dtype=torch.int64)
        cand_t = torch.zeros(pad.shape, dtype=torch.int64)
        cand_b[c, rank], cand_t[c, rank] = b, t
        self._merge(acts, pad, cand_b, cand_t, first_window)

    def _merge(self, acts, pad, cand_b, cand_t, first_window: int) -> None:
        """pad (D, n): candidate values per node (-inf = none); cand_b/cand_t: their window and
        position, indexed like pad (or by column when 1-d)."""
        T, D, K = acts.shape[1], acts.shape[2], self.k
        merged = torch.cat([self.values, pad], 1)
        keep = torch.zeros_like(merged, dtype=torch.bool)
        keep.scatter_(1, merged.topk(K, dim=1, sorted=False).indices, True)
        # Per node, the evicted old slots and the admitted candidates are equally many; nonzero lists
        # both grouped by node, so they pair up in order.
        evicted = (~keep[:, :K]).flatten().nonzero().squeeze(1)  # node * K + slot
        admitted = keep[:, K:].flatten().nonzero().squeeze(1)  # node * n + column
        value = pad.flatten()[admitted]
        real = value > -math.inf
        evicted, admitted, value = evicted[real], admitted[real], value[real]
        if cand_b.dim() == 1:
            col = admitted % pad.shape[1]
            b, t = cand_b[col], cand_t[col]
        else:
            b, t = cand_b.flatten()[admitted], cand_t.flatten()[admitted]
        self.values.view(-1)[evicted] = value
        self.where.view(-1)[evicted] = (first_window + b) * T + t
        outside = first_window + b >= self.sampled
        evicted, b, t = evicted[outside], b[outside], t[outside]
        if len(evicted):
            pos = (t[:, None] + torch.arange(-self.context, self.context + 1)).clamp(0, T - 1)
            flat = (b[:, None] * T + pos) * D + (evicted // K)[:, None]  # out-of-window: masked on read
            self.ctx.view(-1, self.ctx.shape[-1])[evicted] = acts.reshape(-1)[flat].half()

    def sorted(self, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values, flat positions, contexts), best first; values are real activations again."""
        order = self.values.argsort(dim=1, descending=True, stable=True)
        values = self.values.gather(1, order)
        where = self.where.gather(1, order)
        ctx = self.ctx[torch.arange(len(order))[:, None], order]
        T = sample.shape[1]
        in_sample = (where >= 0) & (where < self.sampled * T)
        if in_sample.any():
            node, slot = in_sample.nonzero(as_tuple=True)
            ctx[node, slot] = _contexts(sample, where[node, slot], node, self.context)
        return self.sign * values, where, ctx


def _contexts(acts: torch.Tensor, where: torch.Tensor, node: torch.Tensor, context: int) -> torch.Tensor:
    """acts (W, T, D): the node's values at positions where-context .. where+context of the same
    window (clamped at the window's edges; those entries are masked when read), float16."""
    W, T, D = acts.shape
    win, pos = where // T, where % T
    pos = (pos[..., None] + torch.arange(-context, context + 1)).clamp(0, T - 1)
    flat = (win[..., None] * T + pos) * D + node[..., None]
    return acts.reshape(-1)[flat].half()


class _SiteStats:
    def __init__(self, dim: int, k: int, context: int, sample_windows: int, n_ctx: int):
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.fire = torch.zeros(dim, dtype=torch.int64)
        self.top = _Extremes(dim, k, context, 1.0, sample_windows)
        self.bottom = _Extremes(dim, k, context, -1.0, sample_windows)
        self.sample = torch.zeros((sample_windows, n_ctx, dim))

    def update(self, acts: torch.Tensor, first_window: int, eps: float) -> None:
        flat = acts.reshape(-1, acts.shape[-1])
        self.sum += flat.sum(0).double()
        firing = acts != 0 if eps == 0 else acts.abs() > eps
        self.fire += firing.reshape(flat.shape).sum(0, dtype=torch.int32)
        hi, lo = self.top.floor(), -self.bottom.floor()
        if bool((hi == -math.inf).float().mean() > 0.5):
            self.top.add_dense(acts, firing, first_window)
            self.bottom.add_dense(acts, firing, first_window)
        else:
            # One pass finds both lists' candidates: values beyond a node's current K-th best.
            cand = (acts > hi) | (acts < lo)
            if not bool((hi >= eps).all() and (lo <= -eps).all()):
                cand &= firing  # some list still holds (or lacks) values on the other side of zero
            b, t, c = cand.nonzero(as_tuple=True)
            order = torch.argsort(c, stable=True)  # group by node
            b, t, c = b[order], t[order], c[order]
            v = acts[b, t, c]
            up, down = v > hi[c], v < lo[c]
            self.top.add_candidates(acts, b[up], t[up], c[up], first_window)
            self.bottom.add_candidates(acts, b[down], t[down], c[down], first_window)
        n = min(len(acts), len(self.sample) - first_window)
        if n > 0:
            self.sample[first_window : first_window + n] = acts[:n]


@dataclass
class Example:
    node: str
    side: str  # "top" | "bottom"
    fraction: float  # the bin: top/bottom `fraction` of the firing positions (see module docstring)
    slot: int
    value: float  # activation at the example's position
    window: int  # index into Profile.windows
    position: int  # position in the window
    center: int  # index of that position within tokens/values
    tokens: list[int]  # context tokens (same document only)
    values: list[float]  # the node's activation at each context token (float16 precision)
    doc: int  # index into Profile.windows.docs
    char_start: int  # the context's character span in that document
    char_end: int


@dataclass
class NodeProfile:
    node: str
    mean: float
    frequency: float  # fraction of positions where the node fires
    quantiles: list[float]  # at QUANTILE_LEVELS over all positions
    top_thresholds: list[float]  # lowest value of each top bin (NaN if the bin is empty)
    bottom_thresholds: list[float]  # highest value of each bottom bin
    examples: list[Example]


@dataclass
class SiteProfile:
    site: str
    mean: torch.Tensor  # (D,) float32
    frequency: torch.Tensor  # (D,)
    quantiles: torch.Tensor  # (D, len(QUANTILE_LEVELS))
    thresholds: torch.Tensor  # (D, 2, len(BIN_FRACTIONS)): [:, 0] top, [:, 1] bottom; NaN = no firing
    ex_value: torch.Tensor  # (D, 2, bins, E) float32, NaN = no example
    ex_where: torch.Tensor  # (D, 2, bins, E) flat position window * T + pos, -1 = no example
    ex_context: torch.Tensor  # (D, 2, bins, E, 2 * context + 1) float16, centred on the position


@dataclass
class Profile:
    sites: dict[str, SiteProfile]
    windows: Windows
    config: ProfileConfig
    n_tokens: int

    @property
    def means(self) -> dict[str, torch.Tensor]:
        """Per-site node means, the format of ablation means (mean ablation)."""
        return {s: p.mean for s, p in self.sites.items()}

    def node(self, node: str) -> NodeProfile:
        site, index = parse_node(node)
        if site not in self.sites or not 0 <= index < len(self.sites[site].mean):
            raise KeyError(f"node {node!r} is not in this profile")
        return self._node(site, index)

    def nodes(self) -> Iterator[NodeProfile]:
        for site, p in self.sites.items():
            for index in range(len(p.mean)):
                yield self._node(site, index)

    def _node(self, site: str, index: int) -> NodeProfile:
        p, w = self.sites[site], self.windows
        T, c = w.tokens.shape[1], self.config.context
        name = node_name(site, index)
        examples = []
        for s, side in enumerate(SIDES):
            for f, fraction in enumerate(BIN_FRACTIONS):
                for slot in range(p.ex_where.shape[-1]):
                    flat = int(p.ex_where[index, s, f, slot])
                    if flat < 0:
                        continue
                    win, pos = divmod(flat, T)
                    doc = int(w.doc[win, pos])
                    lo, hi = max(0, pos - c), min(T, pos + c + 1)
                    same = (w.doc[win, lo:hi] == doc).nonzero().flatten()
                    lo, hi = lo + int(same[0]), lo + int(same[-1]) + 1  # documents are contiguous
                    ctx = p.ex_context[index, s, f, slot, lo - pos + c : hi - pos + c]
                    examples.append(
                        Example(
                            node=name,
                            side=side,
                            fraction=fraction,
                            slot=slot,
                            value=float(p.ex_value[index, s, f, slot]),
                            window=win,
                            position=pos,
                            center=pos - lo,
                            tokens=w.tokens[win, lo:hi].tolist(),
                            values=ctx.float().tolist(),
                            doc=doc,
                            char_start=int(w.start[win, lo]),
                            char_end=int(w.end[win, hi - 1]),
                        )
                    )
        return NodeProfile(
            node=name,
            mean=float(p.mean[index]),
            frequency=float(p.frequency[index]),
            quantiles=p.quantiles[index].tolist(),
            top_thresholds=p.thresholds[index, 0].tolist(),
            bottom_thresholds=p.thresholds[index, 1].tolist(),
            examples=examples,
        )


def _pick(keys: torch.Tensor, valid: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, up to n valid columns, those with the smallest random keys: (indices, found)."""
    chosen = keys.masked_fill(~valid, math.inf).topk(min(n, keys.shape[1]), dim=1, largest=False)
    return chosen.indices, chosen.values < math.inf


def _finish_site(site: str, st: _SiteStats, n_tokens: int, cfg: ProfileConfig, g) -> SiteProfile:
    D, E, n_bins, c = len(st.sum), cfg.examples, len(BIN_FRACTIONS), cfg.context
    sample = st.sample.reshape(-1, D).T.contiguous()  # (D, P); column = window * T + position
    P = sample.shape[1]
    firing = sample != 0 if cfg.eps == 0 else sample.abs() > cfg.eps
    srt = sample.sort(1).values  # ascending: firing negatives, the non-firing block, firing positives
    m = firing.sum(1)  # firing positions per node in the sample
    n_low = (firing & (sample < 0)).sum(1)
    n_high, z = m - n_low, P - m
    fire = st.fire
    rows = torch.arange(D)[:, None]
    sample_keys = torch.rand((D, P), generator=g)

    def kth_in_sample(k: torch.Tensor, sign: float) -> torch.Tensor:
        """Per node, its k-th best (1-based) firing value in the sample for this side, times sign."""
        if sign > 0:
            idx = torch.where(k <= n_high, P - k, P - k - z)
        else:
            idx = torch.where(k <= n_low, k - 1, k - 1 + z)
        return sign * srt.gather(1, idx.clamp(0, P - 1)[:, None]).squeeze(1)

    ex_value = torch.full((D, 2, n_bins, E), math.nan)
    ex_where = torch.full((D, 2, n_bins, E), -1, dtype=torch.int64)
    ex_context = torch.zeros((D, 2, n_bins, E, 2 * c + 1), dtype=torch.float16)
    thresholds = torch.full((D, 2, n_bins), math.nan)
    best = []
    for s, ext in enumerate((st.top, st.bottom)):
        sign, K = ext.sign, ext.k
        values, where, ctx = ext.sorted(st.sample)  # best first for this side
        best.append(values[:, 0])
        ranked = sign * values  # descending
        list_keys = torch.rand((D, K), generator=g)

        prev_rank = torch.zeros(D, dtype=torch.int64)
        prev_thr = torch.full((D,), math.inf)  # lowest (times sign) value of the previous bin
        signed = sign * sample
        for f, fraction in enumerate(BIN_FRACTIONS):
            rank = torch.ceil(fraction * fire.double()).long()  # the bin holds ranks [prev_rank, rank)
            covered = rank <= K
            exact_thr = ranked.gather(1, (rank - 1).clamp(0, K - 1)[:, None]).squeeze(1)
            srank = torch.ceil(fraction * m.double()).long()
            sample_thr = torch.where(srank > 0, kth_in_sample(srank.clamp(min=1), sign), math.nan)
            thr = torch.minimum(torch.where(covered, exact_thr, sample_thr), prev_thr)

            r = torch.arange(K)
            in_list = (r >= prev_rank[:, None]) & (r < rank[:, None])
            idx_l, ok_l = _pick(list_keys, in_list, E)
            in_band = firing & (signed >= thr[:, None]) & (signed < prev_thr[:, None])
            idx_s, ok_s = _pick(sample_keys, in_band, E)
            # The exact list when it covers the bin; else the uniform sample, unless the top of the bin
            # in the exact list yields more examples.
            use_list = covered | (ok_l.sum(1) > ok_s.sum(1))
            ok = torch.where(use_list[:, None], ok_l, ok_s)
            picked = torch.where(ok_l, ranked[rows, idx_l], math.inf).amin(1)
            partial = use_list & ~covered  # the bin's lower edge is at most its lowest example
            thr = torch.where(partial, torch.where(thr.isnan(), picked, torch.minimum(thr, picked)), thr)
            thr = torch.where(fire > 0, thr, math.nan)

            s_ctx = _contexts(st.sample, idx_s, rows.expand_as(idx_s), c)
            value = torch.where(use_list[:, None], values[rows, idx_l], sample[rows, idx_s])
            ex_value[:, s, f] = torch.where(ok, value, math.nan)
            ex_where[:, s, f] = torch.where(ok, torch.where(use_list[:, None], where[rows, idx_l], idx_s), -1)
            ex_context[:, s, f] = (
                torch.where(use_list[:, None, None], ctx[rows, idx_l], s_ctx) * ok[..., None]
            )
            thresholds[:, s, f] = sign * thr
            prev_rank, prev_thr = rank, torch.where(fire > 0, thr, prev_thr)

    levels = torch.tensor(QUANTILE_LEVELS, dtype=torch.float64) * (P - 1)
    lo, frac = levels.floor().long(), (levels - levels.floor()).float()
    quantiles = srt[:, lo] * (1 - frac) + srt[:, (lo + 1).clamp(max=P - 1)] * frac
    # Exact extremes: the best firing values (+-inf if never firing), and zero if the node ever rests
    # (exact for eps = 0, within eps otherwise).
    rests = torch.where(fire < n_tokens, 0.0, math.nan)
    quantiles[:, -1] = torch.maximum(srt[:, -1], best[0]).fmax(rests)
    quantiles[:, 0] = torch.minimum(srt[:, 0], best[1]).fmin(rests)
    quantiles = torch.minimum(quantiles.cummax(1).values, quantiles[:, -1:])  # no rounding inversions
    return SiteProfile(
        site=site,
        mean=(st.sum / n_tokens).float(),
        frequency=(st.fire.double() / n_tokens).float(),
        quantiles=quantiles,
        thresholds=thresholds,
        ex_value=ex_value,
        ex_where=ex_where,
        ex_context=ex_context,
    )


@torch.inference_mode()
def profile_windows(
    model: SparseGPT,
    windows: Windows,
    cfg: ProfileConfig,
    sites: list[str] | None = None,
    on_progress: Callable[[float, str], None] | None = None,
) -> Profile:
    """Profile every node of `sites` (default: all sites of the model) over the given windows."""
    report = on_progress or (lambda f, m: None)
    model.eval()
    dims = model.site_dims()
    sites = list(dims) if sites is None else sites
    unknown = [s for s in sites if s not in dims]
    if unknown:
        raise ValueError(f"unknown sites {unknown}; the model has {', '.join(dims)}")
    device = next(model.parameters()).device
    W, T = windows.tokens.shape
    n_tokens = W * T
    k = max(cfg.exact, cfg.examples)
    sample_windows = min(W, max(1, math.ceil(cfg.sample_positions / T)))
    stats = {s: _SiteStats(dims[s], k, cfg.context, sample_windows, T) for s in sites}
    for first in range(0, W, cfg.batch_size):
        x = windows.tokens[first : first + cfg.batch_size].to(device)
        _, acts = model(x, capture=sites)
        for s in sites:
            stats[s].update(acts[s].float().cpu(), first, cfg.eps)
        done = min(W, first + cfg.batch_size)
        report(0.95 * done / W, f"profiled {done * T} of {n_tokens} tokens")
    report(0.95, "selecting examples")
    g = torch.Generator().manual_seed(cfg.seed)
    out = {s: _finish_site(s, st, n_tokens, cfg, g) for s, st in stats.items()}
    report(1.0, "done")
    return Profile(out, windows, cfg, n_tokens)


def profile_model(
    model: SparseGPT,
    tok: Tokenizer,
    docs: list[Document],
    cfg: ProfileConfig,
    on_progress: Callable[[float, str], None] | None = None,
) -> Profile:
    n_ctx = model.cfg.n_ctx
    windows = corpus_windows(tok, docs, max(1, cfg.tokens // n_ctx), n_ctx, cfg.seed)
    return profile_windows(model, windows, cfg, on_progress=on_progress)


def profile_folder(
    folder: Path, cfg: ProfileConfig, on_progress: Callable[[float, str], None] | None = None
) -> Profile:
    """Profile a trained model folder over its training split (the pretraining distribution)."""
    model, tok, run = load_model(folder)
    train_docs, _ = split_corpus(
        load_corpus(run.train.corpus, run.train.max_corpus_bytes), run.train.val_percent
    )
    return profile_model(model, tok, train_docs, cfg, on_progress)
