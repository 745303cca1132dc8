#!/usr/bin/env bash
# One command: set up the environment on a fresh machine, then run the main job end to end on the bundled
# Amazon Beauty data: semantic IDs -> session-wise pretraining (a few CPU minutes, `small` preset) -> evaluation
# of OneRec against the baselines on the same random test users -> a few recommended sessions.
# A demo budget: the numbers it prints are far from a converged model (see README, "Training and evaluation").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Idle OpenMP threads sleep instead of spinning: up to 4x faster torch CPU work on a shared 2-core machine.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OUT=outputs/beauty
MAX_STEPS=${MAX_STEPS:-400}       # 400 x 64 samples: about 4 minutes on 2 CPU cores
TEST_USERS=${TEST_USERS:-500}     # a seeded random subset of the 22,363 test users (beam search is slow on a CPU)

echo "== 1/4 semantic IDs"
python examples/build_semantic_ids.py --dataset beauty --compare_unbalanced --output_dir $OUT
echo "== 2/4 session-wise pretraining (small preset, $MAX_STEPS steps)"
python examples/pretrain.py --dataset beauty --tokenizer_dir $OUT/tokenizer --output_dir $OUT/onerec \
    --preset small --max_steps "$MAX_STEPS" --per_device_train_batch_size 64 --learning_rate 2e-3 \
    --warmup_steps 50 --logging_steps 50 --eval_strategy no --save_strategy no --ranking_eval_users 0 \
    --test_users 0 --report_to none --seed 0
echo "== 3/4 evaluation on $TEST_USERS random test users"
python examples/evaluate.py --dataset beauty --test_users "$TEST_USERS" --output_dir $OUT/evaluation \
    --model_dirs OneRec=$OUT/onerec/final
echo "== 4/4 recommendations"
python examples/recommend.py --dataset beauty --model_dir $OUT/onerec/final --user_ids 1 2 --num_sessions 3
