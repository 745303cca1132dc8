#!/usr/bin/env bash
# One command: set up the environment on a fresh machine, then run the main job end to end on the bundled
# Amazon Beauty data: semantic IDs -> session-wise pretraining (a few CPU minutes, `small` preset) -> evaluation
# of OneRec against the baselines on the same random test users -> a few recommended sessions -> a short preference
# alignment stage (session reward model, one IPA iteration) scored in the paper's Table-1 form.
# A demo budget: the numbers it prints are far from a converged model (see docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
OUT=outputs/beauty
MAX_STEPS=${MAX_STEPS:-1000}      # 1000 x 64 samples (0.5 epoch, length-grouped batches): about 4 minutes on 2 CPU cores
TEST_USERS=${TEST_USERS:-300}     # a seeded random subset of the 22,363 test users (beam search is slow on a CPU)
IPA_RATIO=${IPA_RATIO:-0.003}     # r_DPO: share of the ~131k training samples mined for preference pairs

echo "== 1/6 semantic IDs"
python examples/build_semantic_ids.py --dataset beauty --compare_unbalanced --output_dir $OUT
echo "== 2/6 session-wise pretraining (small preset, $MAX_STEPS steps)"
python examples/pretrain.py --dataset beauty --tokenizer_dir $OUT/tokenizer --output_dir $OUT/onerec \
    --preset small --max_steps "$MAX_STEPS" --per_device_train_batch_size 64 --learning_rate 2e-3 \
    --warmup_steps 50 --logging_steps 50 --eval_strategy no --save_strategy no --ranking_eval_users 0 \
    --test_users 0 --report_to none --seed 0 --overwrite_output_dir true  # a demo, rerunnable
echo "== 3/6 evaluation on $TEST_USERS random test users"
python examples/evaluate.py --dataset beauty --test_users "$TEST_USERS" --output_dir $OUT/evaluation \
    --model_dirs OneRec=$OUT/onerec/final
echo "== 4/6 recommendations"
python examples/recommend.py --dataset beauty --model_dir $OUT/onerec/final --user_ids 1 2 --num_sessions 3
echo "== 5/6 session reward model (Amazon feedback is implicit: one 'engaged' tower) and one IPA iteration"
python examples/train_reward_model.py --dataset beauty --output_dir $OUT/reward --num_train_epochs 1 \
    --report_to none --disable_tqdm true --seed 0
rm -rf $OUT/ipa   # align_ipa.py resumes a run found in its output_dir: start this one fresh
python examples/align_ipa.py --dataset beauty --model_dir $OUT/onerec/final --reward_model_dir $OUT/reward \
    --output_dir $OUT/ipa --dpo_sample_ratio "$IPA_RATIO" --num_candidates 16 --num_iterations 1 \
    --per_device_train_batch_size 16 --report_to none --disable_tqdm true --seed 0
echo "== 6/6 Table 1 in form: reward of each model's sessions, with ground truth"
python examples/evaluate_alignment.py --dataset beauty --reward_model_dir $OUT/reward --test_users 200 \
    --output_dir $OUT/table1 --models OneRec=$OUT/onerec/final OneRec+IPA=$OUT/ipa/iteration-1
