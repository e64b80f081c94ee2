#!/usr/bin/env bash
# Train on your own text file (or folder, or glob), then sample.
#   scripts/train_file.sh FILE [extra chargen train flags]
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 FILE [chargen train flags]" >&2; exit 2; fi
src=$1; shift
out=${OUT:-runs/$(basename "${src%.*}")}
chargen train "$src" --out "$out" --preset cpu "$@"
chargen sample "$out" --length 500
