"""The documentation site builds, with every warning an error (broken references, docstring markup, missing reports)."""

import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="the docs extra is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html", str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    for page in ("index", "algorithms/ppokl", "algorithms/cvpg", "algorithms/offpac", "guide/benchmarks", "api"):
        assert (tmp_path / "html" / f"{page}.html").is_file()
    # the generated reports are included, not copied: the quick suite's report title is in the benchmarks page
    assert "Benchmark: the quick suite" in (tmp_path / "html" / "guide" / "benchmarks.html").read_text()
