#!/usr/bin/env bash
# The alignment table of docs/results.md on one dataset: a pretrained OneRec, then + IPA (DPO with self-hard
# negatives), + GRPO, + ECPO, + GBPO on the same prompts (a seeded 1% of the training samples), each scored on the same
# random test users by the reward model it was trained against and by a second reward model (another seed) that no
# model saw, with ground truth, catalogue coverage and intra-session diversity beside them.
#
#   OUT=/data/runs/align_ml100k DATASET=ml-100k DATA_PATH="$ONEREC_ML100K_DIR" bash scripts/alignment_comparison.sh
#   OUT=/data/runs/align_beauty DATASET=beauty MODEL_DIR=/data/runs/beauty_headline/onerec/final bash scripts/alignment_comparison.sh
#
# Every stage is skipped when its output exists, so a stopped run continues when rerun with the same OUT.
# Knobs (environment): DATASET, DATA_PATH, MODEL_DIR (a pretrained OneRec; pretrained here for one epoch when unset),
# RATIO (share of training samples as prompts, 0.01), GROUP (sessions per prompt: IPA's candidates and RL's group, 16),
# LR (2e-4, the paper's alignment rate), TEST_USERS (300), ITERATIONS (TRL num_iterations of the RL rows, 2).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a folder outside the repository}
DATASET=${DATASET:-ml-100k}
RATIO=${RATIO:-0.01}
GROUP=${GROUP:-16}
LR=${LR:-2e-4}
TEST_USERS=${TEST_USERS:-300}
ITERATIONS=${ITERATIONS:-2}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATA=(--dataset "$DATASET" ${DATA_PATH:+--data_path "$DATA_PATH"})
QUIET=(--report_to none --disable_tqdm true --seed 0)
mkdir -p "$OUT"

if [ -z "${MODEL_DIR:-}" ]; then
  MODEL_DIR=$OUT/onerec/final
  [ -d "$OUT/semantic_ids/tokenizer" ] || python examples/build_semantic_ids.py "${DATA[@]}" --output_dir "$OUT/semantic_ids"
  [ -d "$MODEL_DIR" ] || python examples/pretrain.py "${DATA[@]}" --tokenizer_dir "$OUT/semantic_ids/tokenizer" \
      --output_dir "$OUT/onerec" --session_length 5 --max_history_items 20 --num_train_epochs 1 --preset small \
      --per_device_train_batch_size 64 --learning_rate 2e-3 --warmup_steps 100 --eval_strategy no \
      --ranking_eval_users 0 --test_users 0 "${QUIET[@]}"
fi
for SEED in 0 1; do  # seed 0 trains the policies; seed 1 is the held-out judge
  [ -f "$OUT/reward_seed$SEED/config.json" ] || python examples/train_reward_model.py "${DATA[@]}" \
      --output_dir "$OUT/reward_seed$SEED" --num_train_epochs 2 --report_to none --disable_tqdm true --seed $SEED
done
if [ ! -d "$OUT/ipa/iteration-1" ]; then
  START=$(date +%s)
  python examples/align_ipa.py "${DATA[@]}" --model_dir "$MODEL_DIR" --reward_model_dir "$OUT/reward_seed0" \
      --output_dir "$OUT/ipa" --dpo_sample_ratio "$RATIO" --num_candidates "$GROUP" --num_iterations 1 --beta 0.1 \
      --learning_rate "$LR" --per_device_train_batch_size 8 "${QUIET[@]}"
  echo "ipa seconds $(( $(date +%s) - START ))" >> "$OUT/wall_seconds.txt"
fi
for OBJECTIVE in grpo ecpo gbpo; do  # the rows IPA's first iteration mines are the prompts (align_grpo.py)
  [ -d "$OUT/$OBJECTIVE/final" ] && continue
  START=$(date +%s)
  python examples/align_grpo.py "${DATA[@]}" --model_dir "$MODEL_DIR" --reward_model_dir "$OUT/reward_seed0" \
      --next_items_weight 0 --output_dir "$OUT/$OBJECTIVE" --objective "$OBJECTIVE" --prompt_ratio "$RATIO" \
      --num_generations "$GROUP" --per_device_train_batch_size "$((2 * GROUP))" --num_iterations "$ITERATIONS" \
      --num_train_epochs 1 --learning_rate "$LR" --logging_steps 10 --save_steps 50 --save_total_limit 2 "${QUIET[@]}"
  echo "$OBJECTIVE seconds $(( $(date +%s) - START ))" >> "$OUT/wall_seconds.txt"
done
python examples/evaluate_alignment.py "${DATA[@]}" --reward_model_dir "$OUT/reward_seed0" \
    --heldout_reward_model_dir "$OUT/reward_seed1" --test_users "$TEST_USERS" --output_dir "$OUT/table" \
    --models "OneRec=$MODEL_DIR" "+IPA (DPO)=$OUT/ipa/iteration-1" "+GRPO=$OUT/grpo/final" "+ECPO=$OUT/ecpo/final" \
    "+GBPO=$OUT/gbpo/final"
