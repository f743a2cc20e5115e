#!/usr/bin/env bash
# Paired A/B of one bench command: this checkout against another commit, alternating.
#
#   bench/ab.sh <commit> <runs> <command...>
#   bench/ab.sh 910e327 3 .venv/bin/python bench/bench_normalise.py 80 512
#
# Why: this machine is shared, and the same command varies by 20-40 % from one minute to
# the next, so a figure is only compared with the other tree's figure from the run just
# before or after it. The other commit is checked out in a temporary git worktree that
# shares this checkout's .venv. The command first runs once in B as a warm-up (B's numba
# cache compiles there: tens of seconds in a decoder's first call; not a figure), then in
# each tree's root, B (the other commit) first, then A (this checkout), <runs> times.
# Prints each run's output under its label; judges nothing.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,13p "$0"; exit 2; }
rev=$1 runs=$2
shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
other=$(mktemp -d /tmp/llmspend-ab.XXXXXX)
cleanup() { git -C "$here" worktree remove --force "$other" >/dev/null 2>&1 || true; }
trap cleanup EXIT
git -C "$here" worktree add --detach "$other" "$rev" >/dev/null
ln -s "$here/.venv" "$other/.venv"
echo "== warm-up, B $rev (compiles B's kernels: not a figure)"
(cd "$other" && "$@")
for i in $(seq 1 "$runs"); do
  for tree in "$other" "$here"; do
    label=$([ "$tree" = "$here" ] && echo "A $(git -C "$here" rev-parse --short HEAD)" \
            || echo "B $rev")
    echo "== run $i, $label"
    (cd "$tree" && "$@")
  done
done
