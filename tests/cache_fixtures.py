"""Fixtures shared by the tests of the collector's cache."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from finews_feeds.site import cache


@pytest.fixture(autouse=True)
def no_memo() -> Iterator[None]:
    """Each collect goes through the files on disk unless a test says otherwise: nothing kept
    in this process from an earlier test's runs."""
    cache.forget()
    yield
    cache.forget()
