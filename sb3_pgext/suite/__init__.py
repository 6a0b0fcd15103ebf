"""
Benchmark suites side by side with SB3: ``python -m sb3_pgext.suite run <suite>`` trains every
(env, algorithm, seed) of ``zoo_configs/<suite>.yml`` through the RL Zoo in parallel worker processes
(resumable), then ``report`` writes ``benchmark.md`` with its plots.
"""

from sb3_pgext.suite.config import EnvSpec, Suite, load_suite
from sb3_pgext.suite.report import write_report
from sb3_pgext.suite.runner import run_suite

__all__ = ["EnvSpec", "Suite", "load_suite", "run_suite", "write_report"]
