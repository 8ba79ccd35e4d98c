#!/usr/bin/env bash
# Set up .venv if needed, lint, and run the test suite (pass `-m slow` to run the real-model tests instead).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
