"""Work shared with forked children (finews_feeds/forks.py)."""

from __future__ import annotations

import marshal
import os
import time
from collections.abc import Callable

import pytest

from finews_feeds import forks

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")


def test_a_child_returns_its_bytes_and_a_failed_one_none() -> None:
    child = forks.start(lambda: b"done")
    assert child is not None and child.result() == b"done"

    def fail() -> bytes:
        raise RuntimeError("boom")

    failed = forks.start(fail)
    assert failed is not None and failed.result() is None


def test_tickets_hand_every_number_to_exactly_one_process() -> None:
    tickets = forks.Tickets(forks.Tickets.LIMIT)

    def take_slowly() -> bytes:
        taken = []
        for number in tickets.take():
            taken.append(number)
            time.sleep(0.0001)
        return marshal.dumps(taken)

    children = [forks.start(take_slowly) for _ in range(2)]
    mine = list(tickets.take())
    tickets.close()
    theirs = [marshal.loads(child.result() or b"") for child in children if child is not None]
    taken = mine + [number for numbers in theirs for number in numbers]
    assert sorted(taken) == list(range(forks.Tickets.LIMIT))
    assert mine == sorted(mine)  # each process gets its numbers in order


def test_no_more_tickets_than_the_least_a_pipe_holds() -> None:
    assert forks.Tickets.LIMIT * 4 <= 4096  # one page: written before anyone reads, they must fit
    with pytest.raises(ValueError, match="at most 1024"):
        forks.Tickets(forks.Tickets.LIMIT + 1)
    empty = forks.Tickets(0)
    assert list(empty.take()) == []
    empty.close()


@pytest.mark.parametrize(("items", "least", "expected"), [(0, 1, 1), (10, 16, 16), (16_384, 16, 16), (20_000, 16, 20),
                                                          (100_000, 16, 98), (2_000, 1, 2)])
def test_per_ticket_keeps_the_tickets_under_the_limit(items: int, least: int, expected: int) -> None:
    size = forks.Tickets.per_ticket(items, least)
    assert size == expected
    assert -(-items // size) <= forks.Tickets.LIMIT


@pytest.mark.parametrize("child_fails", [False, True])
def test_shared_work_is_done_once_each_and_what_a_failed_child_took_is_done_here(child_fails: bool) -> None:
    parent = os.getpid()
    failures: list[int] = []

    def there() -> Callable[[int], int]:
        def work(item: int) -> int:
            if child_fails:
                raise RuntimeError("a child that dies after taking work")
            time.sleep(0.001)
            return item * item

        return work

    def here(item: int) -> int:
        assert os.getpid() == parent
        time.sleep(0.001)
        return item * item

    batches = [list(range(i, i + 5)) for i in range(0, 200, 5)]
    done = list(forks.share(batches, 2, here, there, marshal.dumps, marshal.loads, lambda: failures.append(1),
                            first=lambda: time.sleep(0.05), pack_every=7))
    assert sorted(done) == [i * i for i in range(200)]
    assert failures == ([1, 1] if child_fails else [])
