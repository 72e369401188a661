"""The smallest subset of a ranked list that still does the job: bisection on k over the top-k, then one
greedy pass that leaves out members one by one. Used for circuit nodes (prune.py) and transcoder features
(transcoders/attribution.py); `evaluate` scores a kept set, `meets` says whether a score is good enough.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")  # an item of the ranked list (a flat node or feature index)
S = TypeVar("S")  # the score of a kept set (a loss, or a loss with its calibration)
ProgressFn = Callable[[float, str], None]


@dataclass
class Found(Generic[T, S]):
    kept: list[T]  # in rank order
    dropped: list[T]  # left out by the greedy pass, in the order they went
    bisection_k: int  # the size bisection found, before the greedy pass
    score: S  # evaluate(kept)


def smallest_top_k(
    ranked: Sequence[T],
    evaluate: Callable[[list[T]], S],
    meets: Callable[[S], bool],
    start: int | None = None,
) -> tuple[int, S]:
    """The smallest k whose top-k meets the target, by bisection (the score is taken to be roughly
    monotone in k), and its score. `start`: a size expected to meet it (e.g. the nodes a mask left on),
    the upper end of the bisection; if it misses, the whole list is; if that misses too, -> the whole
    list without bisection."""
    cache: dict[int, S] = {}

    def at(k: int) -> S:
        if k not in cache:
            cache[k] = evaluate(list(ranked[:k]))
        return cache[k]

    hi = len(ranked) if start is None else start
    if not meets(at(hi)):
        hi = len(ranked)
        if not meets(at(hi)):
            return hi, at(hi)
    lo = 0
    while lo < hi:
        mid = (lo + hi) // 2
        if meets(at(mid)):
            hi = mid
        else:
            lo = mid + 1
    return hi, at(hi)


def drop_greedily(
    kept: Sequence[T],
    evaluate: Callable[[list[T]], S],
    meets: Callable[[S], bool],
    tries: int | None = None,
    on_progress: ProgressFn | None = None,
) -> tuple[list[T], list[T], S]:
    """Try leaving out each of the last `tries` members of `kept` (all by default), lowest-ranked first,
    and keep it out while the rest still meets the target. -> (kept, dropped, score of kept)."""
    report = on_progress or (lambda f, m: None)
    kept = list(kept)
    candidates = list(reversed(kept[max(0, len(kept) - tries) :] if tries is not None else kept))
    dropped, score = [], None
    for n, item in enumerate(candidates):
        trial = [x for x in kept if x != item]
        trial_score = evaluate(trial)
        if meets(trial_score):
            kept, score = trial, trial_score
            dropped.append(item)
        report((n + 1) / len(candidates), f"greedy pass: {len(kept)} kept")
    return kept, dropped, evaluate(kept) if score is None else score


def bisect_then_greedy(
    ranked: Sequence[T],
    evaluate: Callable[[list[T]], S],
    meets: Callable[[S], bool],
    start: int | None = None,
    tries: int | None = None,
    on_progress: ProgressFn | None = None,
) -> Found[T, S]:
    """`smallest_top_k`, then `drop_greedily` over the members it kept."""
    report = on_progress or (lambda f, m: None)
    k, _ = smallest_top_k(ranked, evaluate, meets, start)
    report(0.3, f"bisection: {k} kept; greedy pass")
    kept, dropped, score = drop_greedily(
        ranked[:k], evaluate, meets, tries, lambda f, m: report(0.3 + 0.7 * f, m)
    )
    return Found(kept, dropped, k, score)
