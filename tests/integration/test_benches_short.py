"""The issue-11 benchmarks in their short mode: each checks its own correctness (the
lake equals the generator's truth; the wire decoder equals the reference decoder; the
columnar normaliser equals the reference; sessions and windows stay bounded over a long
stream; window detectors reading a backlog through the aligner reach the live verdicts;
every Kafka codec gives back the records it was given) and exits non-zero otherwise.
No figure is judged here: times belong to bench/, not tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bench", ["bench_e2e.py", "bench_decode.py",
                                   "bench_normalise.py", "bench_memory.py",
                                   "bench_windows.py", "bench_compression.py"])
def test_the_benchmark_runs_short_and_checks_itself(kafka_settings, bench):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / bench), "--short"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def test_the_paired_runner_runs_both_trees_and_leaves_no_worktree(tmp_path):
    """bench/ab.sh: a warm-up in B, then B (the other commit) and A (this checkout)
    alternating, each in its own root."""
    out = subprocess.run(["bash", str(ROOT / "bench" / "ab.sh"), "HEAD", "2", "bash", "-c",
                          "git rev-parse --show-toplevel"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(",")[1].split()[0] for line in lines if line.startswith("==")] == \
        ["B", "B", "A", "B", "A"]
    assert lines[0].startswith("== warm-up")
    roots = [line for line in lines if not line.startswith("==")]
    assert roots[2] == roots[4] == str(ROOT)
    assert roots[0] == roots[1] == roots[3] != str(ROOT)
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True,
                               text=True).stdout
    assert roots[0] not in worktrees
