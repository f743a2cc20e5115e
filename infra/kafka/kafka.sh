#!/usr/bin/env bash
# Start, stop or inspect the local single-node KRaft Apache Kafka broker.
#
#   infra/kafka/kafka.sh up|down|status
#
# The work (mvn jar resolution into a shared cache, server.properties, KRaft storage
# format, start, wait for a metadata answer, SIGTERM stop) lives in pipeline/broker.py so
# that `llmspend up` and this script behave identically. Settings: LLMSPEND_* variables
# (see the README), e.g. LLMSPEND_KAFKA_PORT, LLMSPEND_STATE_DIR.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${LLMSPEND_PYTHON:-$root/.venv/bin/python}"
if [[ ! -x "$py" ]]; then
  echo "kafka.sh: $py not found; run 'make install' first (or set LLMSPEND_PYTHON)" >&2
  exit 2
fi
cmd="${1:-status}"
case "$cmd" in
  up|down|status) exec "$py" -m pipeline "$cmd" ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
