#!/usr/bin/env bash
# The recipe table of docs/results.md ("Choosing the recipe on validation"): one row per call, each a pretraining run
# of the same budget scored on the *validation* split only (loss on all validation windows, Recall/NDCG@5/10 on 2,000
# validation users, history excluded). The test split is never read here.
#
#   ROW=prefix-cap20-attn0 OUT=/tmp/sweep bash scripts/beauty_recipe_sweep.sh      # one row
#   STEPS=1000 BATCH=256 THREADS=1 ...                                        # the budget (defaults below)
#
# Needs a Beauty tokenizer (examples/build_semantic_ids.py --dataset beauty) at $TOKENIZER. Each row writes
# $OUT/<row>/metrics.json; rerunning a row resumes it from its newest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
ROW=${ROW:?set ROW to one of the rows below}
OUT=${OUT:?set OUT to a folder outside the repository}
TOKENIZER=${TOKENIZER:-outputs/beauty/tokenizer}
STEPS=${STEPS:-1000}        # x BATCH windows per row: the same number of (history, target) pairs for every row
BATCH=${BATCH:-256}
LR=${LR:-3e-3}
THREADS=${THREADS:-1}       # two rows side by side on the 2 cores
export OMP_NUM_THREADS=$THREADS HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

common=(--dataset beauty --tokenizer_dir "$TOKENIZER" --output_dir "$OUT/$ROW" --preset small
        --max_steps "$STEPS" --per_device_train_batch_size "$BATCH" --learning_rate "$LR" --warmup_steps 100
        --lr_scheduler_type linear --weight_decay 0.05 --dropout_rate 0.1 --session_length 5
        --logging_steps 50 --save_strategy steps --save_steps "${SAVE_STEPS:-250}" --save_total_limit 1
        --eval_strategy steps --eval_steps "$STEPS" --max_eval_samples "${EVAL_WINDOWS:-100000}" --ranking_eval_users "${RANK_USERS:-2000}"
        --ranking_exclude_history true --num_beams 128 --test_users 0 --report_to none --seed 0
        --disable_tqdm true --use_cpu true)
# ROW names its settings, dash-separated: the pair construction first (prefix, all_windows, random_window), then any
# of capN (history cap, items), attn0 (no attention-probability dropout), mN (session length), lrX (learning rate, decimal: lr0.01),
# dropoutX (hidden dropout), items (one encoder position per history item), untied (an output head of its
# own), prefixes (hashed embeddings of the history items' code prefixes, --history_prefix_buckets auto), recency
# (embeddings of each history item's recency rank, --history_recency_embeddings true), xrecency (a cross-attention
# bias by recency rank, --cross_attention_recency_bias true), newest (the encoder's state at the newest history item
# added to every decoder input, --newest_item_decoder_input true),
# e.g. ROW=all_windows-cap20-attn0-m10.
IFS=- read -r -a parts <<< "$ROW"
extra=(--pairs "${parts[0]}")
for part in "${parts[@]:1}"; do
  case "$part" in
    cap*) extra+=(--max_history_items "${part#cap}") ;;
    attn0) extra+=(--attention_dropout_rate 0) ;;
    m*) extra+=(--session_length "${part#m}") ;;
    lr*) extra+=(--learning_rate "${part#lr}") ;;
    dropout*) extra+=(--dropout_rate "${part#dropout}") ;;
    items) extra+=(--history_encoding items) ;;
    untied) extra+=(--tie_output_embeddings false) ;;
    prefixes) extra+=(--history_prefix_buckets auto) ;;
    recency) extra+=(--history_recency_embeddings true) ;;
    xrecency) extra+=(--cross_attention_recency_bias true) ;;
    newest) extra+=(--newest_item_decoder_input true) ;;
    *) echo "unknown setting '$part' in ROW=$ROW" >&2; exit 2 ;;
  esac
done
python examples/pretrain.py "${common[@]}" "${extra[@]}"
