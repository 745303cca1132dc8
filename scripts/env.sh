# Sourced by the README's two commands (scripts/run_main.sh, scripts/run_tests.sh) from the repository root: set up
# the environment on a fresh machine (scripts/setup_env.sh), enter it, and work offline.
bash scripts/setup_env.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Idle OpenMP threads sleep instead of spinning: up to 4x faster torch CPU work on a shared 2-core machine.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
