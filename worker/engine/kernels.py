"""CPU kernels that stock torch ops lack, compiled with numba (cached beside this file).

`topk_threshold` is the AbsTopK threshold: per row, a value t such that exactly the k entries of largest
|x| satisfy |x| >= t (ties at the k-th largest keep all tied entries). torch.topk on short rows costs
about 40 cycles an entry on these CPUs (branchy selection); counting is branch-free and vectorises.
`abs_topk` applies it in one kernel each way (forward: the kept entries and their mask; backward: the
gradient through the mask); `add_table_rows` adds the bigram table's rows to the logits in one pass;
`topk_project_cpu_` is the weight top-k projection in place, with the
per-slice minimum, in one compiled call per matrix; other devices and dtypes take the torch path."""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F

SIGN_OFF = 0x7FFFFFFF


@numba.njit(cache=True, boundscheck=False, inline="always")
def _row_threshold(row, k):
    # row: the int32 view of a float32 row. With the sign bit cleared, the integer order of the bit
    # patterns is the order of |x|. Build the answer bit by bit from the top: keep a bit when at least k
    # entries are >= the candidate; stop as soon as exactly k are (any such t gives the same top-k).
    ans = 0
    for b in range(30, -1, -1):
        cand = ans | (1 << b)
        count = 0
        for j in range(row.shape[0]):
            count += (row[j] & SIGN_OFF) >= cand
        if count >= k:
            ans = cand
            if count == k:
                break
    return ans


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _threshold_bits(bits, k, out):
    for i in numba.prange(bits.shape[0]):
        out[i] = _row_threshold(bits[i], k)


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _abs_topk_bits(bits, k, y, keep):
    # One pass per row after its threshold writes both the output and the mask the backward reuses.
    for i in numba.prange(bits.shape[0]):
        row = bits[i]
        t = _row_threshold(row, k)
        for j in range(row.shape[0]):
            kept = (row[j] & SIGN_OFF) >= t
            keep[i, j] = kept
            y[i, j] = row[j] if kept else 0


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _masked_rows(g, keep, out):
    for i in numba.prange(g.shape[0]):
        for j in range(g.shape[1]):
            out[i, j] = g[i, j] if keep[i, j] else 0.0


INF_BITS = 0x7F800000  # the bit pattern of +inf: a score above every finite |w|


@numba.njit(cache=True, boundscheck=False, inline="always")
def _score(bits, i, j, floors, per_column):
    # |w| as bits, or +inf for an entry its slice's minimum forces to stay (floors: per-slice thresholds).
    s = bits[i, j] & SIGN_OFF
    if floors.shape[0] == 0:
        return s
    if per_column:
        return INF_BITS if s >= floors[j] else s
    return INF_BITS if s >= floors[i] else s


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _slice_floors(bits, min_per, per_column):
    if per_column:
        columns = np.ascontiguousarray(bits.T)  # strided columns would cost 31 strided passes each
        floors = np.empty(bits.shape[1], np.int32)
        for j in numba.prange(bits.shape[1]):
            floors[j] = _row_threshold(columns[j], min_per)
    else:
        floors = np.empty(bits.shape[0], np.int32)
        for i in numba.prange(bits.shape[0]):
            floors[i] = _row_threshold(bits[i], min_per)
    return floors


@numba.njit(cache=True, boundscheck=False)
def _project_bits(bits, k, min_per, per_column):
    floors = _slice_floors(bits, min_per, per_column) if min_per else np.empty(0, np.int32)
    m, n = bits.shape
    scores = np.empty(m * n, np.int32)
    for i in range(m):
        for j in range(n):
            scores[i * n + j] = _score(bits, i, j, floors, per_column)
    t = _row_threshold(scores, k)  # the global threshold: the whole matrix as one row of scores
    for i in range(m):
        for j in range(n):
            if scores[i * n + j] < t:
                bits[i, j] = 0


def _set_threads() -> None:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def cpu_float32(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32


def topk_threshold(x: torch.Tensor, k: int) -> torch.Tensor:
    """(..., 1) thresholds with |x| >= t true for the k largest |x| of each row (last axis)."""
    if not cpu_float32(x):
        return x.abs().topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    rows = x.detach().reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty(rows.shape[0], dtype=torch.int32)
    _set_threads()
    _threshold_bits(rows.view(torch.int32).numpy(), k, out.numpy())
    return out.view(torch.float32).view(*x.shape[:-1], 1)


class _AbsTopK(torch.autograd.Function):
    """AbsTopK on CPU float32 in one kernel each way: forward writes the kept entries and a byte mask,
    backward lets the gradient through the mask (x * mask in torch costs a bool-to-float copy and three
    more passes over the activations)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int) -> torch.Tensor:
        rows = x.detach().reshape(-1, x.shape[-1]).contiguous()
        y, keep = torch.empty_like(rows), torch.empty(rows.shape, dtype=torch.bool)
        _set_threads()
        _abs_topk_bits(rows.view(torch.int32).numpy(), k, y.view(torch.int32).numpy(), keep.numpy())
        ctx.save_for_backward(keep)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        rows = grad.reshape(keep.shape).contiguous()
        out = torch.empty_like(rows)
        _set_threads()
        _masked_rows(rows.numpy(), keep.numpy(), out.numpy())
        return out.view(grad.shape), None


def abs_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k entries of largest |x| along the last axis, zero the rest; the gradient flows to the
    kept entries only, as through a mask. Ties at the k-th largest |x| (measure zero) keep them all."""
    if k >= x.shape[-1]:
        return x
    if cpu_float32(x):
        return _AbsTopK.apply(x, k)
    with torch.no_grad():
        keep = x.abs() >= topk_threshold(x, k)
    return x * keep


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _add_table_rows(out, logits, table, idx):
    for n in numba.prange(out.shape[0]):
        row, src = table[idx[n]], logits[n]
        for j in range(out.shape[1]):
            out[n, j] = src[j] + row[j]


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _scatter_rows(grad_table, grad, idx, block):
    # grad_table[idx[n]] += grad[n]; threads own column blocks, so no two write the same entry.
    n_rows, width = grad.shape
    for b in numba.prange((width + block - 1) // block):
        lo, hi = b * block, min(width, (b + 1) * block)
        for n in range(n_rows):
            dst, src = grad_table[idx[n]], grad[n]
            for j in range(lo, hi):
                dst[j] += src[j]


class _AddTableRows(torch.autograd.Function):
    """logits + table[idx] in one pass (torch gathers the rows into a copy, then adds); the table's
    gradient sums the gradient rows of each token."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        rows, flat = logits.detach().reshape(-1, logits.shape[-1]), idx.reshape(-1).contiguous()
        out = torch.empty_like(rows)
        _set_threads()
        _add_table_rows(out.numpy(), rows.numpy(), table.detach().numpy(), flat.numpy())
        ctx.save_for_backward(flat)
        ctx.table_shape = table.shape
        return out.view(logits.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        if not ctx.needs_input_grad[1]:
            return grad, None, None
        (flat,) = ctx.saved_tensors
        grad_table = torch.zeros(ctx.table_shape)
        _set_threads()
        rows = grad.reshape(-1, grad.shape[-1]).contiguous()
        _scatter_rows(grad_table.numpy(), rows.numpy(), flat.numpy(), 256)
        return grad, grad_table, None


def add_table_rows(logits: torch.Tensor, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """logits (..., V) + table[idx] (idx (...) of row indices): the bigram table's contribution."""
    if cpu_float32(logits) and cpu_float32(table) and table.is_contiguous():
        if idx.numel() and not 0 <= int(idx.min()) <= int(idx.max()) < table.shape[0]:
            raise IndexError(f"token ids must lie in [0, {table.shape[0]}) (the kernel does not check)")
        return _AddTableRows.apply(logits, table, idx)
    return logits + F.embedding(idx, table).to(logits.dtype)


def topk_project_cpu_(w: torch.Tensor, k: int, min_per: int, per_column: bool) -> None:
    """In place, CPU float32, contiguous w: keep the k largest |w|, first the `min_per` largest of every
    row (or column); zero the rest (sparsity.topk_project_ documents the rule)."""
    _set_threads()
    _project_bits(w.view(-1, w.shape[-1]).view(torch.int32).numpy(), k, min_per, per_column)
