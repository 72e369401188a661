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
than the forward pass itself (bench/node_profile.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, Field
from tokenizers import Tokenizer

from .checkpoints import load_model
from .config import CONFIG, SEED_MAX
from .data import EOT, CorpusError, Document, load_corpus, split_corpus
from .model import SparseGPT
from .sites import node_name, parse_node

BIN_FRACTIONS = (0.001, 0.01, 0.1, 0.5)
SIDES = ("top", "bottom")
QUANTILE_LEVELS = (0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0)


class ProfileConfig(BaseModel):
    model_config = CONFIG

    tokens: int = Field(65_536, ge=64, le=100_000_000)  # corpus sample size
    batch_tokens: int = Field(4096, ge=1, le=1_048_576)  # tokens per forward pass (whole windows)
    context: int = Field(12, ge=0, le=512)  # tokens each side of an example's position
    examples: int = Field(5, ge=1, le=64)  # per bin
    sample_positions: int = Field(2048, ge=16, le=10_000_000)  # whole-window sample for wide bins
    exact: int = Field(32, ge=1, le=4096)  # highest and lowest firing values kept exactly per node
    eps: float = Field(0.0, ge=0, le=1e6)  # a node fires where |a| > eps
    seed: int = Field(0, ge=0, le=SEED_MAX)


def batch_windows(cfg: ProfileConfig, n_ctx: int) -> int:
    """Windows per forward pass."""
    return max(1, cfg.batch_tokens // n_ctx)


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
    """Per node of every site, the K highest and the K lowest firing values seen so far, where they
    were, and the node's values around them. A site with nodes [off, off + D) of the concatenated sites
    owns rows [2 off, 2 off + 2 D): row 2 off + c holds node c's highest values, row 2 off + D + c its
    lowest, negated, so that every row keeps its K largest entries. Slots are unordered; a merge only
    touches the slots its candidates take over. Contexts of positions in the whole-window sample
    (windows < sampled) are read from it at the end instead of being gathered during the pass."""

    def __init__(self, nodes: int, k: int, context: int, sampled: int):
        self.k, self.context, self.sampled = k, context, sampled
        self.values = torch.full((2 * nodes, k), -math.inf)
        self.where = torch.full((2 * nodes, k), -1, dtype=torch.int64)  # flat position window * T + pos
        self.ctx = torch.zeros((2 * nodes, k, 2 * context + 1), dtype=torch.float16)
        self.empty = True
        self.pending: list[tuple[torch.Tensor, ...]] = []  # candidates of the current batch

    def floors(self, off: int, D: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per node of a site, the values a candidate must beat: (high, low), -inf / +inf while short."""
        floor = self.values[2 * off : 2 * off + 2 * D].min(1).values
        return floor[:D], -floor[D:]

    def _context(self, acts: torch.Tensor, b: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The node's values around (b, t) in the batch, clamped at the window's edges (masked on read)."""
        _, T, D = acts.shape
        pos = (t[:, None] + torch.arange(-self.context, self.context + 1)).clamp(0, T - 1)
        return acts.reshape(-1)[(b[:, None] * T + pos) * D + c[:, None]].half()

    def fill(self, off: int, acts: torch.Tensor, eps: float, first_window: int) -> None:
        """A site's first batch: each list takes the batch's best firing values."""
        B, T, D = acts.shape
        k = min(self.k, B * T)
        nodes_first = acts.reshape(B * T, D).T.contiguous()  # (D, positions)
        high, low = nodes_first.topk(k, dim=1), nodes_first.topk(k, dim=1, largest=False)
        values = torch.cat([high.values, -low.values])
        index = torch.cat([high.indices, low.indices])
        chosen = torch.cat([high.values, low.values])
        resting = chosen == 0 if eps == 0 else chosen.abs() <= eps
        if resting.any():  # a node with fewer than k firing values on a side: pick among firing ones
            rows = resting.any(1).nonzero().squeeze(1)
            node = rows % D
            sign = torch.where(rows < D, 1.0, -1.0)[:, None]
            firing = nodes_first[node] != 0 if eps == 0 else nodes_first[node].abs() > eps
            redo = torch.where(firing, sign * nodes_first[node], -math.inf).topk(k, dim=1)
            values[rows], index[rows] = redo.values, redo.indices
        rows = slice(2 * off, 2 * off + 2 * D)
        self.values[rows, :k] = values
        self.where[rows, :k] = torch.where(values > -math.inf, first_window * T + index, -1)
        outside = (values > -math.inf) & (first_window + index // T >= self.sampled)
        if outside.any():
            r, slot = outside.nonzero(as_tuple=True)
            i = index[r, slot]
            self.ctx[2 * off + r, slot] = self._context(acts, i // T, i % T, r % D)

    def find(self, off: int, acts: torch.Tensor, eps: float, first_window: int) -> None:
        """A site's candidates in a batch: values beyond a node's current K-th best. Found cheaply
        through the maxima and minima of groups of G positions; only groups that hold one are read."""
        B, T, D = acts.shape
        hi, lo = self.floors(off, D)
        G = math.gcd(T, 8)
        grouped = acts.reshape(B, T // G, G, D)
        top, bottom = grouped.amax(2), grouped.amin(2)
        # A group can only hold a candidate if it holds a firing value (matters while a list is short).
        hit = ((top > hi) | (bottom < lo)) & ((top > eps) | (bottom < -eps))
        gb, gg, gc = hit.nonzero(as_tuple=True)
        b, t, c = gb[:, None].expand(-1, G), gg[:, None] * G + torch.arange(G), gc[:, None].expand(-1, G)
        v = acts.reshape(-1)[(b * T + t) * D + c]
        live = v != 0 if eps == 0 else v.abs() > eps
        up, down = (v > hi[gc, None]) & live, (v < lo[gc, None]) & live
        b, t, c = torch.cat([b[up], b[down]]), torch.cat([t[up], t[down]]), torch.cat([c[up], c[down]])
        if len(c) == 0:
            return
        row = 2 * off + c
        row[int(up.sum()) :] += D  # the low side's rows
        value = torch.cat([v[up], -v[down]])
        self.pending.append((row, value, (first_window + b) * T + t))

    def merge(self, batch: list[tuple[int, torch.Tensor]], first_window: int) -> None:
        """Admit the batch's candidates of every site in one go; batch: (off, acts) of each site, whose
        activations give the admitted candidates' contexts."""
        if not self.pending:
            return
        row, value, where = (torch.cat(parts) for parts in zip(*self.pending, strict=True))
        self.pending = []
        order = torch.argsort(row, stable=True)
        row, value, where = row[order], value[order], where[order]
        rows, first, counts = torch.unique_consecutive(row, return_inverse=True, return_counts=True)
        rank = torch.arange(len(row)) - (counts.cumsum(0) - counts)[first]
        K = self.k
        pad = torch.full((len(rows), int(counts.max())), -math.inf)
        pad[first, rank] = value
        index = torch.zeros(pad.shape, dtype=torch.int64)  # which candidate each pad entry is
        index[first, rank] = torch.arange(len(row))
        merged = torch.cat([self.values[rows], pad], 1)
        keep = torch.zeros_like(merged, dtype=torch.bool)
        keep.scatter_(1, merged.topk(K, dim=1, sorted=False).indices, True)
        # Per row, the evicted old slots and the admitted candidates are equally many; nonzero lists
        # both grouped by row, so they pair up in order.
        ev_r, ev_slot = (~keep[:, :K]).nonzero(as_tuple=True)
        in_r, in_col = keep[:, K:].nonzero(as_tuple=True)
        real = pad[in_r, in_col] > -math.inf
        ev_r, ev_slot, j = ev_r[real], ev_slot[real], index[in_r[real], in_col[real]]
        ev_r = rows[ev_r]
        self.values[ev_r, ev_slot] = value[j]
        self.where[ev_r, ev_slot] = where[j]
        # Contexts of the admitted ones (positions in the sample are read from it at the end).
        for off, acts in batch:
            B, T, D = acts.shape
            mine = (ev_r >= 2 * off) & (ev_r < 2 * off + 2 * D) & (where[j] >= self.sampled * T)
            if mine.any():
                b, t = where[j][mine] // T - first_window, where[j][mine] % T
                self.ctx[ev_r[mine], ev_slot[mine]] = self._context(acts, b, t, (ev_r[mine] - 2 * off) % D)

    def sorted(self, off: int, sample: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """A site's high and low side: (values, flat positions, contexts) per node, best first, values
        as real activations. sample: the site's whole-window sample (W_s, T, D)."""
        D = sample.shape[2]
        rows = slice(2 * off, 2 * off + 2 * D)
        order = self.values[rows].argsort(dim=1, descending=True, stable=True)
        values, where = self.values[rows].gather(1, order), self.where[rows].gather(1, order)
        ctx = self.ctx[rows][torch.arange(len(order))[:, None], order]
        in_sample = (where >= 0) & (where < sample.shape[0] * sample.shape[1])
        if in_sample.any():
            r, slot = in_sample.nonzero(as_tuple=True)
            ctx[r, slot] = _contexts(sample, where[r, slot], r % D, self.context)
        return [(values[:D], where[:D], ctx[:D]), (-values[D:], where[D:], ctx[D:])]


class _SiteStats:
    def __init__(self, off: int, dim: int, extremes: _Extremes, sample_windows: int, n_ctx: int):
        self.off, self.extremes = off, extremes
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.fire = torch.zeros(dim, dtype=torch.int64)
        self.sample = torch.zeros((sample_windows, n_ctx, dim))

    def update(self, acts: torch.Tensor, first_window: int, eps: float) -> None:
        B, T, D = acts.shape
        flat = acts.reshape(B * T, D)
        self.sum += flat.sum(0).double()
        firing = flat.bool() if eps == 0 else flat.abs() > eps
        self.fire += firing.sum(0, dtype=torch.int32)
        if self.extremes.empty:
            self.extremes.fill(self.off, acts, eps, first_window)
        else:
            self.extremes.find(self.off, acts, eps, first_window)
        n = min(B, len(self.sample) - first_window)
        if n > 0:
            self.sample[first_window : first_window + n] = acts[:n]


def _contexts(acts: torch.Tensor, where: torch.Tensor, node: torch.Tensor, context: int) -> torch.Tensor:
    """acts (W, T, D): the node's values at positions where-context .. where+context of the same
    window (clamped at the window's edges; those entries are masked when read), float16."""
    W, T, D = acts.shape
    win, pos = where // T, where % T
    pos = (pos[..., None] + torch.arange(-context, context + 1)).clamp(0, T - 1)
    flat = (win[..., None] * T + pos) * D + node[..., None]
    return acts.reshape(-1)[flat].half()


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


def _spread(
    lo: torch.Tensor, hi: torch.Tensor, n: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, n distinct ranks in [lo, hi), one at random in each of n equal strata (all of them
    when fewer): (ranks (rows, n), found)."""
    length = (hi - lo).clamp(min=0)[:, None]
    i = torch.arange(n)
    edge = (torch.arange(n + 1) * length) // n  # stratum i is [edge_i, edge_i+1), at least 1 wide
    u = torch.rand((len(lo), n), generator=g)
    strat = edge[:, :-1] + (u * (edge[:, 1:] - edge[:, :-1])).long()
    return lo[:, None] + torch.where(length >= n, strat, i), i < length


def _finish_site(site: str, st: _SiteStats, n_tokens: int, cfg: ProfileConfig, g) -> SiteProfile:
    E, n_bins, c = cfg.examples, len(BIN_FRACTIONS), cfg.context
    whole = st.sample  # (W_s, T, D)
    D = whole.shape[2]
    sample = whole.reshape(-1, D).T.contiguous()  # (D, P); column = window * T + position
    P = sample.shape[1]
    firing = sample != 0 if cfg.eps == 0 else sample.abs() > cfg.eps
    # Ascending: the firing negatives, the resting block, the firing positives.
    srt, column = sample.sort(1)
    m = firing.sum(1)  # firing positions per node in the sample
    n_low = (firing & (sample < 0)).sum(1)
    n_high, z = m - n_low, P - m
    fire = st.fire
    rows = torch.arange(D)[:, None]

    def sample_order(k: torch.Tensor, sign: float) -> torch.Tensor:
        """Index into srt of each node's k-th best (0-based) firing sample value for this side."""
        if sign > 0:
            idx = torch.where(k < n_high[:, None], P - 1 - k, n_low[:, None] - 1 - (k - n_high[:, None]))
        else:
            idx = torch.where(k < n_low[:, None], k, k + z[:, None])
        return idx.clamp(0, P - 1)

    def count_beyond(x: torch.Tensor, sign: float) -> torch.Tensor:
        """Per node, the number of firing sample values v with sign * v >= x (NaN: none)."""
        x = torch.nan_to_num(x, nan=math.inf)[:, None]
        if sign > 0:
            first = torch.searchsorted(srt, x).squeeze(1)
            return P - first - (n_low + z - torch.maximum(first, n_low)).clamp(min=0)
        upto = torch.searchsorted(srt, -x, right=True).squeeze(1)
        return upto - (torch.minimum(upto, n_low + z) - n_low).clamp(min=0)

    ex_value = torch.full((D, 2, n_bins, E), math.nan)
    ex_where = torch.full((D, 2, n_bins, E), -1, dtype=torch.int64)
    ex_context = torch.zeros((D, 2, n_bins, E, 2 * c + 1), dtype=torch.float16)
    thresholds = torch.full((D, 2, n_bins), math.nan)
    best = []
    K = st.extremes.k
    for s, (values, where, ctx) in enumerate(st.extremes.sorted(st.off, whole)):  # best first per side
        sign = 1.0 if s == 0 else -1.0
        best.append(values[:, 0])
        ranked = sign * values  # descending
        prev_rank = torch.zeros(D, dtype=torch.int64)
        prev_thr = torch.full((D,), math.inf)  # lowest (times sign) value of the previous bin
        for f, fraction in enumerate(BIN_FRACTIONS):
            rank = torch.ceil(fraction * fire.double()).long()  # the bin holds ranks [prev_rank, rank)
            covered = rank <= K
            exact_thr = ranked.gather(1, (rank - 1).clamp(0, K - 1)[:, None]).squeeze(1)
            srank = torch.ceil(fraction * m.double()).long()
            kth = sign * srt.gather(1, sample_order(srank[:, None] - 1, sign)).squeeze(1)
            sample_thr = torch.where(srank > 0, kth, math.nan)
            thr = torch.minimum(torch.where(covered, exact_thr, sample_thr), prev_thr)

            # Examples: from the exact list (ranks [prev_rank, rank), as far as the list reaches), or
            # from the sample's firing values in [thr, prev_thr) -- the list when it covers the bin, else
            # the uniform sample, unless the top of the bin in the list yields more examples.
            rank_l, ok_l = _spread(prev_rank, torch.minimum(rank, torch.tensor(K)), E, g)
            rank_l = rank_l.clamp(max=K - 1)
            band = count_beyond(prev_thr, sign), count_beyond(thr, sign)
            rank_s, ok_s = _spread(band[0], band[1], E, g)
            col_s = column.gather(1, sample_order(rank_s, sign))
            use_list = (covered | (ok_l.sum(1) > ok_s.sum(1)))[:, None]
            ok = torch.where(use_list, ok_l, ok_s)
            picked = torch.where(ok_l, ranked[rows, rank_l], math.inf).amin(1)
            partial = use_list[:, 0] & ~covered  # the bin's lower edge is at most its lowest example
            thr = torch.where(partial, torch.where(thr.isnan(), picked, torch.minimum(thr, picked)), thr)
            thr = torch.where(fire > 0, thr, math.nan)

            value = torch.where(use_list, values[rows, rank_l], sample[rows, col_s])
            ex_value[:, s, f] = torch.where(ok, value, math.nan)
            ex_where[:, s, f] = torch.where(ok, torch.where(use_list, where[rows, rank_l], col_s), -1)
            s_ctx = _contexts(whole, col_s, rows.expand_as(col_s), c)
            ex_context[:, s, f] = torch.where(use_list[..., None], ctx[rows, rank_l], s_ctx) * ok[..., None]
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
        frequency=(fire.double() / n_tokens).float(),
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
    model.eval()
    dims = model.site_dims()
    sites = list(dims) if sites is None else sites
    unknown = [s for s in sites if s not in dims]
    if unknown:
        raise ValueError(f"unknown sites {unknown}; the model has {', '.join(dims)}")

    def activations(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return model(x, capture=sites)[1]

    device = next(model.parameters()).device
    return profile_activations(activations, {s: dims[s] for s in sites}, windows, cfg, on_progress, device)


@torch.inference_mode()
def profile_activations(
    activations: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    dims: dict[str, int],
    windows: Windows,
    cfg: ProfileConfig,
    on_progress: Callable[[float, str], None] | None = None,
    device: str | torch.device = "cpu",
) -> Profile:
    """Profile the nodes of any sites: `activations(tokens (B, T))` returns {site: (B, T, dims[site])}
    for every site of `dims` (a model's own sites, or e.g. transcoder features computed from them)."""
    report = on_progress or (lambda f, m: None)
    sites = list(dims)
    W, T = windows.tokens.shape
    n_tokens = W * T
    k = max(cfg.exact, cfg.examples)
    sample_windows = min(W, max(1, math.ceil(cfg.sample_positions / T)))
    # One accumulator per site, so that each pass over a batch's activations stays in the CPU's cache;
    # the exact lists of all sites are merged together, once per batch.
    offsets = dict(zip(sites, itertools.accumulate([dims[s] for s in sites], initial=0), strict=False))
    extremes = _Extremes(sum(dims[s] for s in sites), k, cfg.context, sample_windows)
    stats = {s: _SiteStats(offsets[s], dims[s], extremes, sample_windows, T) for s in sites}
    per_batch = batch_windows(cfg, T)
    for first in range(0, W, per_batch):
        x = windows.tokens[first : first + per_batch].to(device)
        acts = activations(x)
        batch = [(offsets[s], acts[s].float().cpu().contiguous()) for s in sites]
        for s, (_, a) in zip(sites, batch, strict=True):
            stats[s].update(a, first, cfg.eps)
        extremes.empty = False
        extremes.merge(batch, first)
        done = min(W, first + per_batch)
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


PROFILE, PROFILE_INDEX = "profile.safetensors.gz", "profile.json"
SITE_FIELDS = ("mean", "frequency", "quantiles", "thresholds", "ex_value", "ex_where", "ex_context")


def save_profile(profile: Profile, folder: Path) -> None:
    """A Profile as two files: its tensors (gzipped safetensors: most activations are zeros), and its
    settings with the documents its examples point into (the other documents keep their path only)."""
    import gzip
    import json

    from safetensors.torch import save

    folder = Path(folder)
    w = profile.windows
    tensors = {f"windows.{k}": getattr(w, k).to(torch.int32) for k in ("tokens", "doc", "start", "end")}
    used: set[int] = set()
    for site, p in profile.sites.items():
        tensors.update({f"{site}.{k}": getattr(p, k).contiguous() for k in SITE_FIELDS})
        tensors[f"{site}.ex_where"] = p.ex_where.to(torch.int32)
        used.update(w.doc.flatten()[p.ex_where[p.ex_where >= 0]].tolist())
    (folder / PROFILE).write_bytes(gzip.compress(save(tensors), compresslevel=6))
    index = {
        "config": profile.config.model_dump(mode="json"),
        "n_tokens": profile.n_tokens,
        "sites": list(profile.sites),
        "docs": [{"path": d.path, "text": d.text if i in used else ""} for i, d in enumerate(w.docs)],
    }
    (folder / PROFILE_INDEX).write_text(json.dumps(index))


def load_profile(folder: Path) -> Profile:
    import gzip
    import json

    from safetensors.torch import load

    folder = Path(folder)
    tensors = load(gzip.decompress((folder / PROFILE).read_bytes()))
    index = json.loads((folder / PROFILE_INDEX).read_text())
    docs = [Document(d["path"], d["text"]) for d in index["docs"]]
    windows = Windows(*(tensors[f"windows.{k}"].long() for k in ("tokens", "doc", "start", "end")), docs)
    sites = {
        site: SiteProfile(site, **{k: tensors[f"{site}.{k}"] for k in SITE_FIELDS}) for site in index["sites"]
    }
    for p in sites.values():
        p.ex_where = p.ex_where.long()
    return Profile(sites, windows, ProfileConfig.model_validate(index["config"]), index["n_tokens"])
