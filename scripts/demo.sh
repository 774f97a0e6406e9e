#!/usr/bin/env bash
# Install everything, then build hierarchies from 100 bundled COCO captions on the offline profile (CPU, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
hierarcaps build --profile offline --input data/coco_captions_100.parquet --out "${1:-runs/demo}"
