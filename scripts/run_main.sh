#!/usr/bin/env bash
# One command: set up the environment on a fresh machine, then run the main job end to end on the
# bundled Amazon Beauty data. Today the main job builds the semantic IDs (balanced vs plain residual
# k-means) and reports their statistics; later stages (pretraining, alignment, evaluation) join it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Idle OpenMP threads sleep instead of spinning: up to 4x faster torch CPU work on a shared 2-core machine.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
python examples/build_semantic_ids.py --dataset beauty --compare_unbalanced --output_dir outputs/beauty "$@"
