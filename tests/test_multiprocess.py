"""Two CPU processes (gloo) compute what one process computes.

Each test launches `tests/multiprocess_worker.py` once alone and once as two processes under `torchrun` (the command the
README documents for CPUs), then compares the JSON the main process wrote.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("multiprocess_worker.py")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_worker(task: str, output: Path, num_processes: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    if num_processes == 1:
        command = [sys.executable, str(WORKER), task, str(output)]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes),
            "--master_port", str(_free_port()), str(WORKER), task, str(output),
        ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads(output.read_text())


def assert_same_steps(task: str, tmp_path) -> dict:
    """Runs a training ``task`` of the worker on one process and on two; the 4 logged steps and the final weights
    must match to float tolerance. Returns the one-process record."""
    one = run_worker(task, tmp_path / "one.json", 1)
    two = run_worker(task, tmp_path / "two.json", 2)
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert len(one["logs"]) == len(two["logs"]) == 4
    # Float summation order differs between one process and two. The first step's logs come before any update and
    # match closely (its gradient norm, a sum of squares over every gradient entry, to 1e-3: 1.1e-4 seen on an AMD
    # EPYC). After that, Adam at lr 1e-2 turns last-bit differences of near-zero gradients into lr-sized weight
    # moves (see the weights below), so later logs are held to 1%. A per-process loss or a missed reduction changes
    # them by tens of percent from the first step on.
    first_one, first_two = dict(one["logs"][0]), dict(two["logs"][0])
    assert first_two.pop("grad_norm") == pytest.approx(first_one.pop("grad_norm"), rel=1e-3)
    assert first_two == pytest.approx(first_one, rel=1e-4, abs=1e-4)
    for single, split in zip(one["logs"][1:], two["logs"][1:]):
        assert split == pytest.approx(single, rel=1e-2, abs=1e-3)
    # Each weight tensor's sum after 4 Adam steps at lr 1e-2: a weight whose gradient is ~0 moves by up to
    # lr * m / sqrt(v), so float summation order alone (one process vs two, or another CPU's kernels) moves a sum by up
    # to 0.015 (DPO, seen on an AMD EPYC). A per-process loss moves every entry by lr-sized steps (sums off by ~0.1-1
    # for tensors of thousands of entries), and the first step's logs above catch it before any update.
    assert two["weights"] == pytest.approx(one["weights"], rel=1e-4, abs=5e-2)
    return one


def test_evaluation_on_two_processes_equals_one(tmp_path):
    one = run_worker("evaluate", tmp_path / "one.json", 1)
    two = run_worker("evaluate", tmp_path / "two.json", 2)
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert len(one["ranked"]["exclude_history"]) == 23
    # Two ranking settings x 23 users; the two processes split them (12 + 11), neither ranks everyone.
    assert one["users_per_process"] == [46] and two["users_per_process"] == [24, 22]
    assert two["ranked"] == one["ranked"]  # every user's list, in the callers' order
    assert two["report"] == one["report"]  # ranking and session metrics
    assert one["report"]["session"]["num_users"] == 23


def test_pretraining_on_two_processes_takes_the_steps_of_one(tmp_path):
    # The same global batch of 8 windows per step, split 4 + 4: the logged losses (NTP, load balancing over the
    # global batch, z), the gradient norms and the weights after 4 steps match one process to float tolerance.
    one = assert_same_steps("pretrain", tmp_path)
    assert one["logs"][-1]["ntp_loss"] < one["logs"][0]["ntp_loss"]  # it trains


def test_fsdp2_with_the_shipped_wrap_policy_on_two_processes_takes_the_steps_of_one(tmp_path):
    # examples/accelerate/fsdp.yaml's FSDP2 wrap policy (T5Block + OneRecExperts, torch's fully_shard) on 2 CPU
    # processes (gloo): every parameter is sharded, and 4 steps match one unsharded process.
    one = run_worker("fsdp2", tmp_path / "one.json", 1)
    two = run_worker("fsdp2", tmp_path / "two.json", 2)
    assert (one["num_processes"], two["num_processes"], one["sharded"]) == (1, 2, 0)
    assert two["sharded"] == len(two["weights"]) == len(one["weights"]) > 0
    losses = [entry["loss"] for entry in one["logs"]]
    assert [entry["loss"] for entry in two["logs"]] == pytest.approx(losses, rel=1e-4)
    assert one["logs"][-1]["loss"] < one["logs"][0]["loss"]
    assert two["weights"] == pytest.approx(one["weights"], rel=1e-4, abs=1e-3)  # tolerance: see assert_same_steps


def test_the_pretrainer_refuses_fsdp_that_the_trainer_would_drop_on_cpus(tmp_path):
    # transformers 5.24 + accelerate 1.16 ignore --fsdp with use_cpu=True and train plain DDP, silently.
    two = run_worker("trainer_fsdp", tmp_path / "two.json", 2)
    assert two["num_processes"] == 2
    assert two["error"] and "ignores FSDP with --use_cpu true" in two["error"] and "docs/distributed.md" in two["error"]


def test_reward_model_training_on_two_processes_takes_the_steps_of_one(tmp_path):
    # Equal shares of a global batch of 8 (4 + 4): the sample-mean loss averaged by DDP is the global batch's.
    one = assert_same_steps("reward", tmp_path)
    assert one["logs"][-1]["loss"] != pytest.approx(one["logs"][0]["loss"])  # the steps change the model


def test_dpo_on_two_processes_takes_the_steps_of_one(tmp_path):
    # The DPO step of IPA (TRL's DPOTrainer): equal shares of 8 pairs per step; losses, logged rewards, gradient norms
    # and weights match one process.
    one = assert_same_steps("dpo", tmp_path)
    assert one["logs"][-1]["rewards/margins"] > one["logs"][0]["rewards/margins"]  # it learns the preference


def test_ipa_mining_on_two_processes_finds_the_pairs_of_one(tmp_path):
    one = run_worker("mine", tmp_path / "one.json", 1)
    two = run_worker("mine", tmp_path / "two.json", 2)
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert len(one["rows"]) + one["skipped"] + one["tied"] == 23 and len(one["rows"]) > 10
    assert [row["index"] for row in one["rows"]] == sorted(row["index"] for row in one["rows"])  # user order
    assert sum(two["users_per_process"]) == one["users_per_process"][0] and min(two["users_per_process"]) > 0
    assert {**two, "num_processes": 1, "users_per_process": None} == {**one, "users_per_process": None}


def test_grpo_on_two_processes_takes_the_steps_of_one_with_whole_groups_on_each(tmp_path):
    one = assert_same_steps("grpo", tmp_path)
    two = json.loads((tmp_path / "two.json").read_text())
    # two generations of 2 groups: each process generated whole groups of its own (1 + 1 per generation)
    assert one["groups_per_process"] == [4] and two["groups_per_process"] == [2, 2]
    assert "would be split across processes" in two["refused"]
    assert all(entry["ratio_mean"] != 1.0 for entry in one["logs"][1::2])  # the second pass sees an updated policy
