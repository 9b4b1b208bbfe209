"""No benchmark script is named like a standard-library module: `python bench/x.py` puts
bench/ first on sys.path, so a bench/operator.py was imported as `operator` by every
module of that process (torch's dynamo among them) and broke the LLM bench's servers."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench"


def test_no_bench_script_shadows_a_standard_library_module() -> None:
    scripts = sorted(path.stem for path in BENCH.glob("*.py"))
    assert scripts  # the folder is where this test thinks it is
    assert [name for name in scripts if name in sys.stdlib_module_names] == []
