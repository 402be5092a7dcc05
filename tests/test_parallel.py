"""The one way work runs on several cores (finews_feeds/parallel.py)."""

from __future__ import annotations

import os
import threading

import pytest

from finews_feeds import parallel

PARENT = os.getpid()


def square_where(batch: list[int]) -> list[tuple[int, int, bool]]:
    return [(n, n * n, os.getpid() == PARENT) for n in batch]


def die_in_a_worker(batch: list[int]) -> list[int]:
    if os.getpid() != PARENT:
        os._exit(3)  # a worker killed in the middle of its batch
    return batch


def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "cores", lambda: 2)


def test_every_batch_is_done_once_by_this_process_and_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    two_cores(monkeypatch)
    assert parallel.can_fork(), "the test process must run one thread for the pool to be used"
    batches = [list(range(i, i + 10)) for i in range(0, 400, 10)]
    results = [item for result in parallel.run(square_where, batches) for item in result]
    assert sorted(n for n, _, _ in results) == list(range(400))
    assert all(square == n * n for n, square, _ in results)
    here = {here for _, _, here in results}
    assert here == {True, False}  # both worked


def test_with_other_threads_running_nothing_is_forked(monkeypatch: pytest.MonkeyPatch) -> None:
    two_cores(monkeypatch)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not parallel.can_fork()
        results = [item for result in parallel.run(square_where, [[1, 2], [3, 4]]) for item in result]
    finally:
        stop.set()
        other.join()
    assert [(n, here) for n, _, here in results] == [(1, True), (2, True), (3, True), (4, True)]


def test_one_batch_or_one_core_runs_here(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [r for result in parallel.run(square_where, [[5]]) for r in result] == [(5, 25, True)]
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    assert all(here for result in parallel.run(square_where, [[1], [2], [3]]) for _, _, here in result)
    assert list(parallel.run(square_where, [[1], [2]], parallel=False)) == [[(1, 1, True)], [(2, 4, True)]]


def test_what_a_dead_worker_took_is_done_here(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    two_cores(monkeypatch)
    batches = [[i] for i in range(20)]
    done = sorted(n for result in parallel.run(die_in_a_worker, batches) for n in result)
    assert done == list(range(20))
    assert "a worker process died; doing its share here" in caplog.text


def test_batches_cover_every_item_in_order_and_are_a_few_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    two_cores(monkeypatch)
    items = list(range(1000))
    batches = parallel.batched(items, 4)
    assert [n for batch in batches for n in batch] == items
    assert len(batches) == 8
    assert parallel.batched([], 4) == []
