#!/usr/bin/env bash
# The headline run of the recipe chosen on Beauty's validation split (docs/results.md, "Choosing the recipe on
# validation") on any bundled dataset, on a 2-core CPU: two torchrun processes of one thread each, validation ranking
# every EVAL_STEPS with early stopping, then every test user ranked (history excluded: all of it, and allowed) and
# the top-10 lists written. No dataset-specific setting: the same command for every DATASET.
#
#   OUT=/data/runs/beauty_headline bash scripts/headline.sh                      # OneRec m = 5 on Amazon Beauty
#   M=1 OUT=/data/runs/beauty_headline_m1 bash scripts/headline.sh               # TIGER-style, same recipe and budget
#   DATASET=scientific OUT=/data/runs/scientific_headline bash scripts/headline.sh
#
# Rerunning the same command resumes from the newest checkpoint in $OUT/onerec (the run survives being stopped).
# Knobs (environment): DATASET, TOKENIZER (built into $OUT/semantic_ids when unset), PAIRS, HISTORY,
# ATTENTION_DROPOUT, HISTORY_ENCODING (tokens | items), TIE_OUTPUT (true | false: an output head of its own),
# PREFIX_BUCKETS (0 | N | auto: embeddings of the history items' code prefixes), RECENCY (false | true: embeddings
# of each history item's recency rank), CROSS_RECENCY (false | true: a cross-attention bias by recency rank), NEWEST (false | true: the
# encoder's state at the newest history item added to every decoder input), EXPERTS (empty: the preset's 8 decoder
# experts per sparse layer; more experts add parameters at the same cost per token), DROPOUT, LR, BATCH (global), STEPS,
# EVAL_STEPS, PATIENCE, VAL_USERS, TEST_USERS (empty = all), PROCESSES (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a folder outside the repository}
DATASET=${DATASET:-beauty}
M=${M:-5}
PAIRS=${PAIRS:-prefix}
HISTORY=${HISTORY:-20}
ATTENTION_DROPOUT=${ATTENTION_DROPOUT:-0}
HISTORY_ENCODING=${HISTORY_ENCODING:-tokens}
TIE_OUTPUT=${TIE_OUTPUT:-true}
PREFIX_BUCKETS=${PREFIX_BUCKETS:-0}
RECENCY=${RECENCY:-false}
CROSS_RECENCY=${CROSS_RECENCY:-false}
NEWEST=${NEWEST:-false}
DROPOUT=${DROPOUT:-0.1}
LR=${LR:-3e-3}
BATCH=${BATCH:-256}               # global: 2 processes x BATCH / 2
STEPS=${STEPS:-12000}             # an estimate of 150 minutes on the 2 cores: ~230 windows/s per one-thread process
EVAL_STEPS=${EVAL_STEPS:-2000}    # in the recipe table, 2 processes, and ~3 minutes per validation ranking
PATIENCE=${PATIENCE:-3}
VAL_USERS=${VAL_USERS:-2000}
TEST_USERS=${TEST_USERS:-}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

if [ -z "${TOKENIZER:-}" ]; then
  TOKENIZER=$OUT/semantic_ids/tokenizer
  [ -d "$TOKENIZER" ] || python examples/build_semantic_ids.py --dataset "$DATASET" --output_dir "$OUT/semantic_ids"
fi
torchrun --nproc_per_node "${PROCESSES:-2}" examples/pretrain.py --use_cpu true --dataset "$DATASET" \
    --tokenizer_dir "$TOKENIZER" \
    --output_dir "$OUT/onerec" --preset small --session_length "$M" --pairs "$PAIRS" --max_history_items "$HISTORY" \
    --history_encoding "$HISTORY_ENCODING" --tie_output_embeddings "$TIE_OUTPUT" \
    --history_prefix_buckets "$PREFIX_BUCKETS" --history_recency_embeddings "$RECENCY" \
    --cross_attention_recency_bias "$CROSS_RECENCY" --newest_item_decoder_input "$NEWEST" \
    ${EXPERTS:+--num_experts "$EXPERTS"} \
    --dropout_rate "$DROPOUT" --attention_dropout_rate "$ATTENTION_DROPOUT" --learning_rate "$LR" \
    --warmup_steps 100 --lr_scheduler_type linear --weight_decay 0.05 --max_steps "$STEPS" \
    --per_device_train_batch_size $((BATCH / ${PROCESSES:-2})) --eval_strategy steps --eval_steps "$EVAL_STEPS" \
    --save_strategy steps --save_steps "$EVAL_STEPS" --save_total_limit 2 --load_best_model_at_end true \
    --metric_for_best_model recall@10 --early_stopping_patience "$PATIENCE" --max_eval_samples "${EVAL_WINDOWS:-100000}" \
    --ranking_eval_users "$VAL_USERS" --ranking_exclude_history true --num_beams "${BEAMS:-128}" \
    ${TEST_USERS:+--test_users "$TEST_USERS"} --logging_steps 100 --report_to none --disable_tqdm true --seed 0
