#!/usr/bin/env bash
# Set up pronlm in ./.venv on a fresh machine: torch first, pinned to the CPU build this machine
# carries (an unpinned torch pulls a multi-GB CUDA build), then the package with its test extras.
# --system also installs the Debian packages some tests use (espeak-ng, chromium + a font); needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--system" ]]; then
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends espeak-ng chromium fonts-dejavu-core >/dev/null \
      || echo "setup: apt-get failed; tests that need espeak-ng or chromium will skip" >&2
  else
    echo "setup: not root or no apt-get; tests that need espeak-ng or chromium will skip" >&2
  fi
fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${PRONLM_TORCH:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: done ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
