#!/usr/bin/env bash
# Installs everything (scripts/setup.sh) and runs the whole test suite.
# The tests start their own PulseAudio and PipeWire servers with null sinks; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
