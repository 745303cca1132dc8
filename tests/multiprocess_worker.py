"""One process of the multi-process tests (`tests/test_multiprocess.py`): run alone with `python`, or as one of N
processes under `torchrun`; the main process writes what it computed as JSON.

    python tests/multiprocess_worker.py evaluate OUT.json
    torchrun --nproc_per_node 2 tests/multiprocess_worker.py evaluate OUT.json
"""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_onerec import OneRecConfig, OneRecForConditionalGeneration  # noqa: E402
from tests.conftest import CPU_TRAINING  # noqa: E402
from tokenization_semantic_id import ResidualKMeansConfig, build_semantic_ids  # noqa: E402
from trainers.distributed import distributed_state, release_processes  # noqa: E402
from trainers.evaluation.generative import evaluate_generative_model  # noqa: E402

NUM_ITEMS, NUM_USERS = 90, 23  # 23 users: the two shares are uneven (12 + 11)


def tokenizer_and_model():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 8, generator=generator) * 3
    embeddings = centres[torch.randint(6, (NUM_ITEMS,), generator=generator)] + torch.randn(
        NUM_ITEMS, 8, generator=generator
    )
    tokenizer = build_semantic_ids(
        [f"item{i}" for i in range(NUM_ITEMS)],
        embeddings,
        ResidualKMeansConfig(num_levels=2, codebook_size=5),
        progress=False,
    )
    torch.manual_seed(0)
    model = OneRecForConditionalGeneration(OneRecConfig.from_tokenizer(tokenizer, preset="tiny", session_length=3))
    return tokenizer, model.eval()


def users():
    generator = torch.Generator().manual_seed(1)
    rows = []
    for user in range(NUM_USERS):
        length = int(torch.randint(2, 9, (1,), generator=generator))
        items = [f"item{int(i)}" for i in torch.randint(NUM_ITEMS, (length + 2,), generator=generator)]
        rows.append({"user_id": str(user), "history": items[:-2], "target": items[-2:]})
    return rows


def step_arguments(name: str, output: Path) -> dict:
    """The TrainingArguments every training task shares: 4 logged steps at a global batch of 8, split evenly over
    the processes in one sequential order, on the CPU."""
    num_processes = distributed_state().num_processes
    return dict(
        output_dir=str(output.parent / f"{name}-{num_processes}"),
        per_device_train_batch_size=8 // num_processes,
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        train_sampling_strategy="sequential",
        **CPU_TRAINING,
    )


def write_steps(trainer, keys, output: Path) -> None:
    """Trains, then the main process writes the logged ``keys`` of every step and each weight's sum."""
    trainer.train()
    logs = [{key: entry[key] for key in keys} for entry in trainer.state.log_history if "loss" in entry]
    weights = {name: tensor.detach().double().sum().item() for name, tensor in trainer.model.named_parameters()}
    state = distributed_state()
    if state.is_main_process:
        output.write_text(json.dumps({"logs": logs, "weights": weights, "num_processes": state.num_processes}))


def users_per_process_of(count: int) -> list:
    """Every process's count, gathered: shows that the work was split, not done whole on each process."""
    from accelerate.utils import gather_object

    return gather_object([count]) if distributed_state().num_processes > 1 else [count]


def evaluate(output: Path) -> None:
    from trainers.evaluation.generative import GenerativeRecommender

    ranked_here = []
    rank = GenerativeRecommender.rank

    def counting_rank(self, histories, *args, **kwargs):
        ranked_here.extend(histories)
        return rank(self, histories, *args, **kwargs)

    GenerativeRecommender.rank = counting_rank
    tokenizer, model = tokenizer_and_model()
    rows = users()
    test = [{"user_id": row["user_id"], "history": row["history"], "target": [row["target"][1]]} for row in rows]
    report, ranked = evaluate_generative_model(
        model,
        tokenizer,
        test,
        num_beams=8,
        session_rows=rows,
        session_length=3,
        session_beams=4,
        batch_size=1,  # one user per search in both runs: the same arithmetic, so identical lists
        progress=False,
    )
    for metrics in report.values():
        metrics.pop("seconds")
    state = distributed_state()
    users_per_process = users_per_process_of(len(ranked_here))
    if state.is_main_process:
        result = {"report": report, "ranked": ranked, "num_processes": state.num_processes}
        output.write_text(json.dumps(result | {"users_per_process": users_per_process}, sort_keys=True))


def pretrain(output: Path) -> None:
    """Four steps at a global batch of 8 windows: 8 on one process, 4 + 4 on two (each process takes every other
    batch of 4 of the same sequential order, so the global batches hold the same windows)."""
    from datasets import Dataset

    from trainers.pretraining import OneRecPretrainer, OneRecPretrainingConfig, SessionDataCollator

    tokenizer, _ = tokenizer_and_model()
    torch.manual_seed(0)
    config = OneRecConfig.from_tokenizer(tokenizer, preset="tiny", session_length=3, dropout_rate=0.0)
    model = OneRecForConditionalGeneration(config)
    rows = [{"history": row["history"], "target": row["target"]} for row in users()]
    args = OneRecPretrainingConfig(**step_arguments("trainer", output), warmup_steps=0, ddp_find_unused_parameters=True)
    trainer = OneRecPretrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows * 2),
        data_collator=SessionDataCollator(tokenizer, session_length=3),
        processing_class=tokenizer,
    )
    write_steps(trainer, ("loss", "ntp_loss", "aux_loss", "z_loss", "grad_norm", "expert_load_max"), output)


def fsdp2(output: Path) -> None:
    """Four pretraining steps (AdamW, lr 1e-2) at a global batch of 8 windows with the model sharded by torch's FSDP2
    (``fully_shard``) under the wrap policy of the shipped config (examples/accelerate/fsdp.yaml: each listed module
    class, bottom-up, then the model); on one process the same loop without sharding. The loss is the global batch's
    (``global_batch_losses``), as ``OneRecPretrainer`` computes it on several processes."""
    import torch.distributed as dist
    from accelerate.commands.config.config_args import load_config_from_file
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from trainers.pretraining import SessionDataCollator, global_batch_losses

    tokenizer, _ = tokenizer_and_model()
    torch.manual_seed(0)
    config = OneRecConfig.from_tokenizer(tokenizer, preset="tiny", session_length=3, dropout_rate=0.0)
    model = OneRecForConditionalGeneration(config).train()
    num_processes = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if num_processes > 1:
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        shipped = load_config_from_file(
            str(Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "fsdp.yaml")
        ).fsdp_config
        wrapped = tuple(shipped["fsdp_transformer_layer_cls_to_wrap"].split(","))
        for module in reversed(list(model.modules())):  # FSDP2 shards bottom-up
            if type(module).__name__ in wrapped:
                fully_shard(module, reshard_after_forward=shipped["fsdp_reshard_after_forward"])
        fully_shard(model)

    def sum_over_processes(tensor):
        if num_processes > 1:
            dist.all_reduce(tensor)
        return tensor

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    collator = SessionDataCollator(tokenizer, session_length=3)
    rows = [{"history": row["history"], "target": row["target"]} for row in users()] * 2
    logs = []
    for step in range(4):
        batch = rows[step * 8 : step * 8 + 8][rank::num_processes]
        inputs = collator(batch)
        outputs = model(**inputs, output_router_logits=True)
        terms = global_batch_losses(outputs, inputs["labels"], config, sum_over_processes)
        loss = terms["ntp_loss"] + config.router_aux_loss_coef * terms["aux_loss"]
        loss = (loss + config.router_z_loss_coef * terms["z_loss"]) * num_processes  # FSDP averages gradients
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        logs.append({"loss": float(sum_over_processes(loss.detach() / num_processes))})
    parameters = dict(model.named_parameters())
    sharded = sum(isinstance(tensor, DTensor) for tensor in parameters.values())
    full = {name: t.full_tensor() if isinstance(t, DTensor) else t for name, t in parameters.items()}  # all shards
    weights = {name: tensor.detach().double().sum().item() for name, tensor in full.items()}
    if rank == 0:
        record = {"logs": logs, "weights": weights, "num_processes": num_processes, "sharded": sharded}
        output.write_text(json.dumps(record))


def trainer_fsdp(output: Path) -> None:
    """The pretrainer given the shipped FSDP2 settings on CPU processes, which transformers 5.24 would drop silently:
    the main process writes the error the pretrainer raises."""
    from datasets import Dataset

    from trainers.pretraining import OneRecPretrainer, OneRecPretrainingConfig

    tokenizer, model = tokenizer_and_model()
    args = OneRecPretrainingConfig(
        **step_arguments("fsdp", output),
        fsdp="full_shard auto_wrap",
        fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["T5Block", "OneRecExperts"]},
    )
    try:
        OneRecPretrainer(model=model.train(), args=args, train_dataset=Dataset.from_list(users()))
        error = None
    except ValueError as raised:
        error = str(raised)
    if distributed_state().is_main_process:
        output.write_text(json.dumps({"error": error, "num_processes": distributed_state().num_processes}))


def reward(output: Path) -> None:
    """Four reward-model steps at a global batch of 8 (history, session) samples, 8 on one process, 4 + 4 on two.
    The loss is a mean over samples and the shares are equal, so DDP's gradient average is the global batch's."""
    from datasets import Dataset

    from modeling_onerec import OneRecRewardModel
    from tests.test_reward_model import tiny_config
    from trainers.alignment.reward_model import RewardItemVocabulary, RewardModelTrainer, RewardModelTrainingConfig

    vocabulary = RewardItemVocabulary([f"item{i}" for i in range(NUM_ITEMS)])
    rows = [
        {
            "history": row["history"],
            "session": row["target"],
            "labels": [float(int(row["target"][0][4:]) % 2), float(len(row["history"]) > 4)],
            "label_mask": [1.0, float(position % 3 != 0)],  # some samples lack the second target
        }
        for position, row in enumerate(users())
    ]
    torch.manual_seed(0)
    config = tiny_config(  # the reward-model tests' tiny configuration
        num_items=vocabulary.num_indices, reward_names=("liked", "long"), max_session_items=2, initializer_range=0.02
    )
    model = OneRecRewardModel(config)
    args = RewardModelTrainingConfig(**step_arguments("reward", output), eval_strategy="no")
    trainer = RewardModelTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows * 2), vocabulary=vocabulary
    )
    write_steps(trainer, ("loss", "grad_norm"), output)


def dpo(output: Path) -> None:
    """Four DPO steps (TRL's DPOTrainer through OneRecDPOTrainer, the reference a frozen copy) at a global batch of 8
    preference pairs with NTP targets, 8 on one process, 4 + 4 on two."""
    from datasets import Dataset

    from trainers.alignment import OneRecDPOConfig, OneRecDPOTrainer

    tokenizer, model = tokenizer_and_model()
    model.train()
    rows = []
    for position, row in enumerate(users()):
        rejected = list(reversed(row["target"])) if row["target"][0] != row["target"][1] else ["item0", "item1"]
        # the NTP term's target: one or two items, so the two processes' shares hold different numbers of tokens
        target = row["target"][: 1 + position % 2]
        rows.append({"history": row["history"], "chosen": row["target"], "rejected": rejected, "target": target})
    args = OneRecDPOConfig(**step_arguments("dpo", output), beta=0.5)
    trainer = OneRecDPOTrainer(
        model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(rows * 2), processing_class=tokenizer
    )
    keys = ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins", "ntp_loss", "aux_loss")
    write_steps(trainer, keys, output)


def mine(output: Path) -> None:
    """IPA mining (beam search of 8 candidate sessions per user, then a reward) over 23 users in batches of 4."""
    from trainers.alignment.ipa import mine_preference_pairs

    tokenizer, model = tokenizer_and_model()

    scored_here = []

    def reward(histories, sessions):  # deterministic, prefers sessions of low-numbered items
        scored_here.extend(histories)
        return [[-sum(int(item[4:]) for item in session) for session in candidates] for candidates in sessions]

    pairs = mine_preference_pairs(
        model,
        tokenizer,
        [row["history"] for row in users()],
        reward,
        num_candidates=8,
        session_length=2,
        batch_size=4,
        progress=False,
    )
    state = distributed_state()
    users_per_process = users_per_process_of(len(scored_here))
    if state.is_main_process:
        result = {"rows": list(pairs), "skipped": pairs.skipped_users, "tied": pairs.tied_users}
        output.write_text(
            json.dumps(result | {"num_processes": state.num_processes, "users_per_process": users_per_process})
        )


def grpo(output: Path) -> None:
    """Four ECPO steps (TRL's GRPOTrainer through OneRecGRPOTrainer) on beam-search groups of 4 with two passes per
    generated batch: 2 groups per generation on one process, 1 + 1 on two. A configuration that would split a group
    across the two processes is refused first."""
    from trainers.alignment import NextItemsReward, OneRecGRPOConfig, OneRecGRPOTrainer

    tokenizer, model = tokenizer_and_model()
    model.train()
    num_processes = distributed_state().num_processes
    common = step_arguments("grpo", output)
    common.update(per_device_train_batch_size=8 // num_processes, learning_rate=1e-3)
    refused = None
    if num_processes > 1:
        try:
            OneRecGRPOConfig(**{**common, "per_device_train_batch_size": 2}, num_generations=4)
        except ValueError as error:
            refused = str(error)
    args = OneRecGRPOConfig(**common, num_generations=4, num_iterations=2, beta=0.05, objective="ecpo")
    rows = [{"prompt": row["history"], "target": row["target"]} for row in users()]
    trainer = OneRecGRPOTrainer(model, [NextItemsReward()], args=args, train_dataset=rows, processing_class=tokenizer)
    groups_here = []
    generate_groups = trainer.generate_groups

    def recording(prompts):
        groups_here.extend(prompts[::4])
        return generate_groups(prompts)

    trainer.generate_groups = recording
    keys = ("loss", "grad_norm", "kl", "ratio_mean", "ntp_loss", "entropy")
    write_steps(trainer, keys, output)
    groups_per_process = users_per_process_of(len(groups_here))
    if distributed_state().is_main_process:
        record = json.loads(output.read_text())
        output.write_text(json.dumps(record | {"groups_per_process": groups_per_process, "refused": refused}))


if __name__ == "__main__":
    task, path = sys.argv[1], Path(sys.argv[2])
    tasks = {"evaluate": evaluate, "pretrain": pretrain, "reward": reward, "dpo": dpo, "mine": mine, "grpo": grpo}
    tasks["fsdp2"] = fsdp2
    tasks["trainer_fsdp"] = trainer_fsdp
    tasks[task](path)
    release_processes()
    # Leave without the interpreter's finalisation: on a loaded machine a gloo thread of torch 2.13 still running
    # then can abort a process whose work and output are complete ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
