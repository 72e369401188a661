"""The bisect-then-greedy search (worker/engine/search.py) behind node and feature pruning."""

from worker.engine.search import bisect_then_greedy, drop_greedily, smallest_top_k

NEEDED = {2, 5, 7}


def loss(chosen):
    return 0.1 * len(NEEDED - set(chosen)) + 0.001 * len(chosen)


def meets(value):
    return value <= 0.01


def test_bisection_finds_the_smallest_top_k():
    assert smallest_top_k(list(range(10)), loss, meets) == (8, loss(range(8)))
    assert smallest_top_k(list(range(10)), loss, meets, start=9)[0] == 8
    # A start that misses widens to the whole list; an unreachable target keeps everything.
    assert smallest_top_k(list(range(10)), loss, meets, start=3)[0] == 8
    assert smallest_top_k([3, 1], loss, meets) == (2, loss([3, 1]))


def test_greedy_pass_drops_what_is_not_needed():
    kept, dropped, score = drop_greedily(list(range(8)), loss, meets)
    assert kept == [2, 5, 7] and dropped == [6, 4, 3, 1, 0] and score == loss([2, 5, 7])
    # Only the last `tries` members are tried; nothing going leaves the set and scores it.
    assert drop_greedily(list(range(8)), loss, meets, tries=2)[:2] == ([0, 1, 2, 3, 4, 5, 7], [6])
    assert drop_greedily([2, 5, 7], loss, meets) == ([2, 5, 7], [], loss([2, 5, 7]))


def test_bisect_then_greedy():
    found = bisect_then_greedy(list(range(10)), loss, meets)
    assert found.kept == [2, 5, 7] and found.bisection_k == 8 and found.score == loss([2, 5, 7])
