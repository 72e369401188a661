"""CPU kernels that stock torch ops lack, compiled with numba (cached beside this file).

`topk_threshold` is the AbsTopK threshold: per row, a value t such that exactly the k entries of largest
|x| satisfy |x| >= t (ties at the k-th largest keep all tied entries). torch.topk on short rows costs
about 40 cycles an entry on these CPUs (branchy selection); counting is branch-free and vectorises."""

from __future__ import annotations

import numba
import torch

SIGN_OFF = 0x7FFFFFFF


@numba.njit(parallel=True, cache=True, boundscheck=False)
def _threshold_bits(bits, k, out):
    # bits: the int32 view of float32 rows. With the sign bit cleared, the integer order of the bit
    # patterns is the order of |x|. Build the answer bit by bit from the top: keep a bit when at least k
    # entries are >= the candidate; stop as soon as exactly k are (any such t gives the same top-k).
    n, d = bits.shape
    for i in numba.prange(n):
        row = bits[i]
        ans = 0
        for b in range(30, -1, -1):
            cand = ans | (1 << b)
            count = 0
            for j in range(d):
                count += (row[j] & SIGN_OFF) >= cand
            if count >= k:
                ans = cand
                if count == k:
                    break
        out[i] = ans


def topk_threshold(x: torch.Tensor, k: int) -> torch.Tensor:
    """(..., 1) thresholds with |x| >= t true for the k largest |x| of each row (last axis)."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return x.abs().topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    rows = x.detach().reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty(rows.shape[0], dtype=torch.int32)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    _threshold_bits(rows.view(torch.int32).numpy(), k, out.numpy())
    return out.view(torch.float32).view(*x.shape[:-1], 1)
