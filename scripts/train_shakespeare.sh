#!/usr/bin/env bash
# Train on tiny shakespeare (found on the corpus search path, or downloaded once), then sample.
#   scripts/train_shakespeare.sh [extra chargen train flags, e.g. --preset gpu --max-time 5m]
set -euo pipefail
out=${OUT:-runs/shakespeare}
chargen train tinyshakespeare --out "$out" --preset cpu --max-time 5m "$@"
chargen sample "$out" --prompt "ROMEO:" --length 500
