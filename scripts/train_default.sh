#!/usr/bin/env bash
# Train on the embedded default corpus (this Python's standard library), then sample.
#   scripts/train_default.sh [extra chargen train flags]
set -euo pipefail
out=${OUT:-runs/pystdlib}
chargen train --out "$out" --preset cpu --max-time 5m "$@"
chargen sample "$out" --prompt "def " --length 500
