#!/usr/bin/env bash
# One call on one GPU (H100 / H200): set up, semantic IDs, OneRec m = 5 trained to early stopping on validation
# Recall@10 (best checkpoint restored), then the full test table on every Beauty test user (history excluded and
# allowed) with each user's top-10 written as JSON. Sized for a short GPU booking (target: 9 minutes of wall time
# including set-up); every stage prints its wall time.
#
#   bash scripts/gpu_beauty.sh                                  # on a GPU machine with internet
#   TOKENIZER_DIR=outputs/beauty/tokenizer bash scripts/gpu_beauty.sh   # reuse semantic IDs built elsewhere
#   DRY_RUN=1 bash scripts/gpu_beauty.sh                        # CPU, a few steps and users (tests/test_gpu_script.py)
#
# Set-up: wheels in .whl/ are installed offline (a machine without internet; see benchmarks/README.md);
# otherwise a missing stack is installed with pip. Knobs (environment): OUT_DIR, TOKENIZER_DIR, EMBEDDING_SOURCE
# (collaborative: no text model needed), PRESET, PAIRS (prefix / all_windows / random_window), HISTORY (history cap),
# BATCH, LR, DROPOUT, NEWEST (true: the newest history item handed to the decoder), EPOCHS,
# PATIENCE, VAL_USERS, TEST_USERS (empty = all), WORKERS, COMPILE (1 = torch.compile), SEED.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
stage() { echo "== [$(( $(date +%s) - START )) s] $*"; }

PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
stage "set-up"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/onerec-site .whl/*.whl
  export PYTHONPATH=/tmp/onerec-site${PYTHONPATH:+:$PYTHONPATH}
elif ! "$PY" -c "import datasets, transformers, torch, accelerate" 2>/dev/null; then
  "$PY" -m pip install -q -e .
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

OUT=${OUT_DIR:-outputs/gpu_beauty}
PRESET=${PRESET:-small}
PAIRS=${PAIRS:-prefix}       # how (history, target) pairs are cut (trainers/data/windows.py)
HISTORY=${HISTORY:-50}       # history cap in items
BATCH=${BATCH:-256}          # the peers' batch (TIGER, ActionPiece, RPG)
LR=${LR:-2e-3}               # chosen on validation at batch 64 on the CPU (docs/results.md); re-check on the GPU's validation
DROPOUT=${DROPOUT:-0.1}      # 0 won on the CPU at a 3-epoch budget; a run to early stopping over many epochs needs regularising
EPOCHS=${EPOCHS:-100}
PATIENCE=${PATIENCE:-5}
VAL_USERS=${VAL_USERS:-2000}
TEST_USERS=${TEST_USERS:-}
WORKERS=${WORKERS:-4}
SEED=${SEED:-0}
EXTRA=(--bf16 true --expert_dispatch dense --dataloader_num_workers "$WORKERS")
if [ "${COMPILE:-0}" = 1 ]; then EXTRA+=(--torch_compile true); fi
LIMITS=()
if [ "${DRY_RUN:-0}" = 1 ]; then
  # Same stages on the CPU in seconds: a few steps, a few users (what the test suite runs).
  EXTRA=(--use_cpu true --expert_dispatch dense --dataloader_num_workers 0)
  LIMITS=(--max_steps 4 --eval_steps 2 --save_steps 2 --max_eval_samples 64)
  EPOCHS=1; VAL_USERS=8; TEST_USERS=${TEST_USERS:-8}; BATCH=16; EMBEDDING_SOURCE=${EMBEDDING_SOURCE:-collaborative}
fi

if [ -z "${TOKENIZER_DIR:-}" ]; then
  stage "semantic IDs (${EMBEDDING_SOURCE:-concat})"
  "$PY" examples/build_semantic_ids.py --dataset beauty --embedding_source "${EMBEDDING_SOURCE:-concat}" \
      --output_dir "$OUT/semantic_ids"
  TOKENIZER_DIR=$OUT/semantic_ids/tokenizer
fi

STRATEGY=(--eval_strategy epoch --save_strategy epoch)
if [ "${DRY_RUN:-0}" = 1 ]; then STRATEGY=(--eval_strategy steps --save_strategy steps); fi
stage "pretraining $PRESET, $PAIRS pairs, history <= $HISTORY, batch $BATCH, lr $LR, dropout $DROPOUT, <= $EPOCHS epochs, patience $PATIENCE"
"$PY" examples/pretrain.py --dataset beauty --tokenizer_dir "$TOKENIZER_DIR" --output_dir "$OUT/onerec" \
    --preset "$PRESET" --session_length 5 --dropout_rate "$DROPOUT" --num_train_epochs "$EPOCHS" \
    --pairs "$PAIRS" --max_history_items "$HISTORY" --newest_item_decoder_input "${NEWEST:-false}" \
    --ranking_exclude_history true \
    --learning_rate "$LR" --warmup_steps 100 --lr_scheduler_type linear --per_device_train_batch_size "$BATCH" \
    --per_device_eval_batch_size 1024 "${STRATEGY[@]}" --save_total_limit 2 --load_best_model_at_end true \
    --metric_for_best_model recall@10 --early_stopping_patience "$PATIENCE" --ranking_eval_users "$VAL_USERS" \
    --logging_steps 50 --report_to none --disable_tqdm true --seed "$SEED" --overwrite_output_dir true \
    ${TEST_USERS:+--test_users "$TEST_USERS"} "${EXTRA[@]}" "${LIMITS[@]}"
stage "done: $OUT/onerec/metrics.json, top-10 lists in $OUT/onerec/topk_test_*.json"
