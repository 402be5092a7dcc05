"""Fixtures shared by the test modules that send mail: an aiosmtpd server on loopback and a SQLite ledger.

A module that needs another kind of server (one that offers PIPELINING, or holds its replies)
defines its own ``sink``; ``port`` serves whichever it gets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from smtp_fakes import Sink, running

from finews_feeds.mail.store import Store


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def port(sink: Sink) -> Iterator[int]:
    with running(sink) as value:
        yield value


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path}/var/finews.sqlite3") as opened:
        yield opened
