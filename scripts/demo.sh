#!/usr/bin/env bash
# Set up .venv if needed and run the main job: `promptstep demo` on the embedded SmolLM2-135M.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/promptstep demo "$@"
