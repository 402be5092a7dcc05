"""Where the site generator is found: by the benchmarks beside the project, by the tests in it."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
from corpus_copy import MAKE_SITE

ROOT = Path(__file__).resolve().parent.parent
BENCHMARK_CORPUS = ROOT / "benchmarks" / "corpus.py"


def load_benchmark_corpus() -> dict[str, Any]:
    """benchmarks/corpus.py run afresh, so that it reads the environment of this moment."""
    return runpy.run_path(str(BENCHMARK_CORPUS))


def test_benchmarks_find_the_generator_beside_the_project_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FINEWS_MAKE_SITE", raising=False)
    assert load_benchmark_corpus()["MAKE_SITE"] == ROOT.parent / "shared" / "corpus" / "make_site.py"
    monkeypatch.setenv("FINEWS_MAKE_SITE", "")
    assert load_benchmark_corpus()["MAKE_SITE"] == ROOT.parent / "shared" / "corpus" / "make_site.py"


def test_finews_make_site_names_another_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINEWS_MAKE_SITE", str(MAKE_SITE))
    corpus = load_benchmark_corpus()
    assert corpus["site_generator"]() == MAKE_SITE


def test_a_missing_generator_stops_the_benchmark_saying_how_to_name_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINEWS_MAKE_SITE", str(tmp_path / "nope.py"))
    with pytest.raises(SystemExit) as info:
        load_benchmark_corpus()["site_generator"]()
    assert str(info.value) == (f"site generator not found at {tmp_path / 'nope.py'}: "
                               "set FINEWS_MAKE_SITE to the path of make_site.py")


def test_no_benchmark_or_test_names_a_path_outside_the_checkout() -> None:
    """A clean clone runs its tests with nothing beside it, and the benchmarks anywhere."""
    outside = "/" + "work" + "/"  # spelled apart so that this file does not name it
    files = [*sorted((ROOT / "benchmarks").glob("*.py")), *sorted((ROOT / "tests").glob("*.py"))]
    assert [f.name for f in files if outside in f.read_text(encoding="utf-8")] == []


def test_the_tests_run_the_copy_in_the_repository() -> None:
    assert MAKE_SITE.is_file()
    assert MAKE_SITE.is_relative_to(ROOT / "tests")
