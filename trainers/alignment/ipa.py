"""Iterative Preference Alignment (paper §3.3.2, Algorithm 2, Eq. 8-10).

For ``t = 0 .. T-1``: sample ``r_DPO`` of the training rows, let the current snapshot ``M_t`` generate ``N`` sessions
per sampled user by trie-constrained beam search (Eq. 8), score them with a session reward model (Eq. 9), keep the
best as *chosen* and the worst as *rejected*, and train ``M_{t+1}`` from ``M_t`` on those rows with
``L_NTP(real next session) + λ L_DPO`` (Eq. 10; :class:`~trainers.alignment.OneRecDPOTrainer`, reference = frozen
copy of ``M_t``).

* :class:`SessionRewardFn` -- the reward model's interface (a Protocol).
* :func:`mine_preference_pairs` -- Eq. 8-9 and the best/worst selection for a list of histories.
* :class:`IPAConfig`, :func:`run_ipa` -- the loop, resumable. Layout of ``output_dir``::

      iteration-{k}/            snapshot M_k (k = t + 1): model + tokenizer files, written when iteration k is done
          pairs.json            pairs mined with M_{k-1} to train M_k: written *before* training, reused on resume
          checkpoints/          Trainer checkpoints while M_k trains (removed at the end unless keep_checkpoints)
          ipa_state.json        written last: its presence marks iteration k complete

  A killed run restarts where it stopped: complete iterations are skipped (the last one is loaded from disk),
  mined pairs are never mined again, and an interrupted training resumes from its last Trainer checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch
from datasets import Dataset
from transformers.trainer_utils import get_last_checkpoint

from modeling_onerec.generation_onerec import length_sorted_batches
from tokenization_semantic_id.tokenization_semantic_id import check_item_list

from ..distributed import map_across_processes
from .dpo_config import OneRecDPOConfig
from .dpo_trainer import OneRecDPOTrainer
from .rollouts import SearchBackend, session_groups

logger = logging.getLogger(__name__)

STATE_FILE = "ipa_state.json"
INPUTS_FILE = "ipa_inputs.json"  # what the run in a folder was started from; a resume must match it
PAIRS_FILE = "pairs.json"
CHECKPOINTS_DIR = "checkpoints"
TRAIN_COLUMNS = ("history", "target", "chosen", "rejected")


@runtime_checkable
class SessionRewardFn(Protocol):
    """Scores candidate sessions per user (the paper's ``R(u, S)``, Eq. 9).

    Called as ``reward_fn(histories, sessions)`` with ``histories[u]`` the item ids of user ``u`` (oldest first) and
    ``sessions[u][n]`` the ``n``-th candidate session of that user (``m`` item ids, in order). Returns, per user, one
    finite float per candidate (``len(result[u]) == len(sessions[u])``); higher is better. Users are passed in
    batches (``mining_batch_size``); every user passed has at least two candidates.
    """

    def __call__(self, histories: List[List[str]], sessions: List[List[List[str]]]) -> Sequence[Sequence[float]]: ...


class PreferencePairs(list):
    """The rows :func:`mine_preference_pairs` returns (a plain ``list`` of dicts) plus counts of what was dropped.

    Attributes:
        num_users: Histories mined.
        skipped_users: Users with fewer than two valid candidate sessions (tiny catalogue, long history excluded).
        tied_users: Users whose best and worst rewards differ by no more than ``min_reward_gap``.
        seconds: Wall time of the mining.
    """

    def __init__(
        self, rows=(), *, num_users: int = 0, skipped_users: int = 0, tied_users: int = 0, seconds: float = 0.0
    ):
        super().__init__(rows)
        self.num_users, self.skipped_users, self.tied_users, self.seconds = (
            num_users,
            skipped_users,
            tied_users,
            seconds,
        )


def _check_rewards(rewards, sessions: List[List[List[str]]], user_indices: List[int]) -> List[List[float]]:
    if not isinstance(rewards, Sequence) and not hasattr(rewards, "__len__"):
        raise TypeError(f"reward_fn must return one list of scores per user, got {type(rewards).__name__}.")
    if len(rewards) != len(sessions):
        raise ValueError(
            f"reward_fn returned {len(rewards)} score lists for {len(sessions)} users (histories "
            f"{user_indices}): return one list per user."
        )
    checked = []
    for user, (scores, candidates) in enumerate(zip(rewards, sessions)):
        scores = [float(score) for score in scores]
        if len(scores) != len(candidates):
            raise ValueError(
                f"reward_fn returned {len(scores)} scores for the {len(candidates)} candidate sessions "
                f"of user {user_indices[user]}: return one score per session."
            )
        if not all(math.isfinite(score) for score in scores):
            raise ValueError(f"reward_fn returned a non-finite score for user {user_indices[user]}: {scores[:8]}.")
        checked.append(scores)
    return checked


def mine_preference_pairs(
    model,
    tokenizer,
    histories: Sequence[Sequence],
    reward_fn: SessionRewardFn,
    *,
    num_candidates: int = 128,
    session_length: Optional[int] = None,
    exclude_history: bool = True,
    batch_size: int = 8,
    min_reward_gap: float = 0.0,
    progress: bool = True,
    search_backend: SearchBackend = "native",
) -> PreferencePairs:
    """Preference pairs from the current snapshot (paper Eq. 8-9, Algorithm 2 lines 4-11).

    Args:
        model: ``OneRecForConditionalGeneration`` ``M_t`` (run in eval mode here; its mode is restored).
        tokenizer: Its ``SemanticIDTokenizer``.
        histories: One list of item ids per user, oldest first (the model reads the newest
            ``config.max_history_items``).
        reward_fn: See :class:`SessionRewardFn`.
        num_candidates: ``N`` sessions per user, the beam width of the constrained beam search (paper: 128).
        session_length: Items per session ``m``; default ``model.config.session_length``.
        exclude_history: Candidates never contain the user's history items.
        batch_size: Users per beam search and per ``reward_fn`` call.
        min_reward_gap: A user is kept only if best reward - worst reward > this (equal rewards carry no preference).
        progress: Show a tqdm bar over the batches.
        search_backend: ``"native"`` (the model's session beam search) or ``"generate"`` (``model.generate()`` with the
            tokenizer's prefix-allowed-tokens function; the same sessions, slower): see
            :func:`~.rollouts.session_groups`. Both rank the candidates with codes renormalised over the valid codes
            (``renormalize_logits=True``), the rollouts' policy, whatever the model's serving choice.
    Returns:
        :class:`PreferencePairs`: per kept user ``{"index": position in histories, "history", "chosen", "rejected",
        "chosen_reward", "rejected_reward"}`` (chosen = argmax reward, rejected = argmin; ties go to the candidate
        the beam search ranked higher), with the counts of skipped and tied users.
    """
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 2:
        raise ValueError(
            f"num_candidates must be an int >= 2 (a pair needs a best and a worst session), got {num_candidates!r}."
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    if session_length is not None and (not isinstance(session_length, int) or session_length < 1):
        raise ValueError(f"session_length must be an int >= 1 or None, got {session_length!r}.")
    if search_backend not in ("native", "generate"):
        raise ValueError(f"search_backend must be 'native' or 'generate', got {search_backend!r}.")
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable (see SessionRewardFn), got {type(reward_fn).__name__}.")
    if isinstance(histories, (str, bytes)) or not isinstance(histories, Sequence):
        raise TypeError("histories must be a list of item-id lists, one per user.")
    histories = [check_item_list(history, f"histories[{user}]", tokenizer) for user, history in enumerate(histories)]

    started = time.perf_counter()

    def mine_batch(indices: List[int]) -> List[Dict[str, Any]]:
        """One outcome per user of the batch: a pair, or ``{"skipped": True}`` / ``{"tied": True}``."""
        batch = [histories[index] for index in indices]
        if search_backend == "native":
            recommendations = model.recommend(
                tokenizer,
                batch,
                num_sessions=num_candidates,
                num_beams=num_candidates,
                session_length=session_length,
                exclude_history=exclude_history,
                batch_size=len(batch),
                # the beams of rollouts.session_groups (either backend), whatever the model serves with
                renormalize_logits=True,
            )
            candidates_of = [[list(s.items) for s in sessions] for sessions in recommendations]
        else:
            groups = session_groups(
                model,
                tokenizer,
                batch,
                group_size=num_candidates,
                session_length=session_length,
                backend="generate",
                exclude_history=exclude_history,
            )
            flat = groups.sessions
            candidates_of = [
                [s for s in flat[u * num_candidates : (u + 1) * num_candidates] if s is not None]
                for u in range(len(batch))
            ]
        outcomes: List[Dict[str, Any]] = [{"skipped": True}] * len(batch)
        users = [u for u, sessions in enumerate(candidates_of) if len(sessions) >= 2]
        if not users:
            return outcomes
        sessions = [candidates_of[u] for u in users]
        rewards = _check_rewards(
            reward_fn([list(batch[u]) for u in users], sessions), sessions, [indices[u] for u in users]
        )
        for u, candidates, scores in zip(users, sessions, rewards):
            best = max(range(len(scores)), key=scores.__getitem__)  # first of equals: the higher-ranked beam
            worst = min(range(len(scores)), key=scores.__getitem__)
            if scores[best] - scores[worst] <= min_reward_gap:
                outcomes[u] = {"tied": True}
                continue
            outcomes[u] = {
                "index": indices[u],
                "history": list(batch[u]),
                "chosen": candidates[best],
                "rejected": candidates[worst],
                "chosen_reward": scores[best],
                "rejected_reward": scores[worst],
            }
        return outcomes

    # Similar lengths pad little; rows are put back in user order below. Under torchrun each process mines a share of
    # whole batches (the same batches as one process) and every process gets all outcomes (trainers.distributed).
    batches = length_sorted_batches(histories, batch_size, model.config.max_history_items)
    outcomes = map_across_processes(
        lambda share: [mine_batch(indices) for indices in share],
        batches,
        1,
        progress=progress,
        description="Mining preference pairs",
    )
    flat = [outcome for batch_outcomes in outcomes for outcome in batch_outcomes]
    skipped = sum(1 for outcome in flat if outcome.get("skipped"))
    tied = sum(1 for outcome in flat if outcome.get("tied"))
    rows = [outcome for outcome in flat if "index" in outcome]
    rows.sort(key=lambda row: row["index"])
    return PreferencePairs(
        rows, num_users=len(histories), skipped_users=skipped, tied_users=tied, seconds=time.perf_counter() - started
    )


@dataclass
class IPAConfig:
    """Settings of :func:`run_ipa`.

    Args:
        dpo_sample_ratio: ``r_DPO``, the fraction of training rows mined per iteration (paper: 1%). At least one row.
        num_candidates: ``N`` sessions generated per sampled user (paper: 128).
        num_iterations: ``T``, snapshots trained after the seed model (the paper does not state it).
        seed: Row sampling of iteration ``t`` uses ``(seed, t)``; the Trainer of iteration ``t`` uses ``seed + t``.
        session_length: Items per mined session; default the model's ``config.session_length``.
        exclude_history: Mined sessions never contain the user's history items.
        mining_batch_size: Users per beam search / reward call.
        min_reward_gap: Users whose best and worst rewards differ by no more than this are dropped.
        epochs_per_iteration: Passes over the mined rows when training ``M_{t+1}`` (Algorithm 2: one).
        training_args: Template :class:`~trainers.alignment.OneRecDPOConfig` (``beta``, ``loss_type``,
            ``dpo_weight`` λ, ``ntp_weight``, batch size, learning rate, ``save_steps``, ...). Its ``output_dir``,
            ``num_train_epochs`` and ``seed`` are replaced per iteration. Default: ``OneRecDPOConfig`` defaults with
            a checkpoint every 200 steps (2 kept) and no reporting.
        keep_checkpoints: Keep each iteration's Trainer checkpoints after its snapshot is saved.
        progress: tqdm bars.
        search_backend: How candidates are searched: ``"native"`` or ``"generate()"`` with the prefix-allowed-tokens
            function (:func:`mine_preference_pairs`); the same sessions.
    """

    dpo_sample_ratio: float = 0.01
    num_candidates: int = 128
    num_iterations: int = 1
    seed: int = 0
    session_length: Optional[int] = None
    exclude_history: bool = True
    mining_batch_size: int = 8
    min_reward_gap: float = 0.0
    epochs_per_iteration: float = 1.0
    training_args: Optional[OneRecDPOConfig] = None
    keep_checkpoints: bool = False
    progress: bool = True
    search_backend: str = "native"

    def __post_init__(self):
        if not 0 < self.dpo_sample_ratio <= 1:
            raise ValueError(f"dpo_sample_ratio must be in (0, 1], got {self.dpo_sample_ratio}.")
        if isinstance(self.num_candidates, bool) or not isinstance(self.num_candidates, int) or self.num_candidates < 2:
            raise ValueError(f"num_candidates must be an int >= 2, got {self.num_candidates!r}.")
        if not isinstance(self.num_iterations, int) or self.num_iterations < 1:
            raise ValueError(f"num_iterations must be an int >= 1, got {self.num_iterations!r}.")
        if self.mining_batch_size < 1:
            raise ValueError(f"mining_batch_size must be >= 1, got {self.mining_batch_size}.")
        if self.epochs_per_iteration <= 0:
            raise ValueError(f"epochs_per_iteration must be > 0, got {self.epochs_per_iteration}.")
        if self.search_backend not in ("native", "generate"):
            raise ValueError(f"search_backend must be 'native' or 'generate', got {self.search_backend!r}.")
        if self.training_args is not None and not isinstance(self.training_args, OneRecDPOConfig):
            raise TypeError(f"training_args must be a OneRecDPOConfig, got {type(self.training_args).__name__}.")


@dataclass
class IPAResult:
    """What :func:`run_ipa` returns: the last snapshot ``M_T`` and each iteration's ``ipa_state.json`` content."""

    model: Any
    iterations: List[Dict[str, Any]] = field(default_factory=list)
    output_dir: Optional[Path] = None


def _write_json_atomically(path: Path, payload: Dict[str, Any]) -> None:
    # A kill mid-write must never leave a truncated file that a resumed run would trust.
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(payload, handle)
    os.replace(temporary, path)


def _config_record(config: IPAConfig) -> Dict[str, Any]:
    """The settings that change what a run computes (not progress bars or checkpoint housekeeping); ``T`` is left
    out so that a run can be extended with more iterations."""
    record = {
        name: getattr(config, name)
        for name in (
            "dpo_sample_ratio",
            "num_candidates",
            "seed",
            "session_length",
            "exclude_history",
            "min_reward_gap",
            "epochs_per_iteration",
        )
    }
    arguments = config.training_args
    if arguments is not None:
        record["training_args"] = {
            name: getattr(arguments, name, None)
            for name in (
                "beta",
                "loss_type",
                "loss_weights",
                "label_smoothing",
                "dpo_weight",
                "ntp_weight",
                "learning_rate",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
            )
        }
    return json.loads(json.dumps(record, default=str))


def fingerprint(value) -> str:
    """A short digest of what ``value`` computes with: a module's weights (``state_dict``), a tensor's values, or for
    any other object its type and the modules and tensors among its attributes (a reward scorer's model and weights).
    Two inputs with the same digest score alike; settings that do not change results (batch sizes) are not part of it.
    """
    digest = hashlib.sha256()

    def add_tensor(name: str, tensor: torch.Tensor) -> None:
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")

    def add(name: str, item) -> None:
        if isinstance(item, torch.nn.Module):
            for key, tensor in item.state_dict().items():
                add_tensor(f"{name}.{key}", tensor)
        elif isinstance(item, torch.Tensor):
            add_tensor(name, item)

    digest.update(f"{type(value).__module__}.{type(value).__qualname__}".encode())
    if isinstance(value, (torch.nn.Module, torch.Tensor)):
        add("", value)
    else:
        for name, attribute in sorted(getattr(value, "__dict__", {}).items()):
            add(name, attribute)
    return digest.hexdigest()[:16]


def _check_run_inputs(output_dir: Path, record: Dict[str, Any]) -> None:
    """Stores ``record`` for a new run; for an existing one, raises naming every setting that differs."""
    path = output_dir / INPUTS_FILE
    record = json.loads(json.dumps(record, default=str))
    if path.is_file():
        stored = _read_json(path)
        differing = sorted(
            f"{section}.{name}: {stored.get(section, {}).get(name)!r} -> {record[section].get(name)!r}"
            for section in ("config", "inputs")
            for name in set(stored.get(section, {})) | set(record[section])
            if stored.get(section, {}).get(name) != record[section].get(name)
        )
        if differing:
            raise ValueError(
                f"{output_dir} holds an IPA run started from other inputs ({'; '.join(differing)}); resuming would "
                "mix two runs. Use another output_dir, or the original inputs to continue that run."
            )
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_json_atomically(path, record)


def _read_json(path: Path) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _iteration_dir(output_dir: Path, k: int) -> Path:
    return output_dir / f"iteration-{k}"


def _is_complete(output_dir: Path, k: int) -> bool:
    return (_iteration_dir(output_dir, k) / STATE_FILE).is_file()


def _load_snapshot(model, path: Path):
    loaded = type(model).from_pretrained(str(path))
    return loaded.to(model.device)


def run_ipa(
    model,
    tokenizer,
    train_samples: Union[Dataset, List[Dict[str, Any]]],
    reward_fn: SessionRewardFn,
    config: Optional[IPAConfig] = None,
    output_dir: Union[str, os.PathLike] = "onerec-ipa",
    resume: bool = True,
    run_inputs: Optional[Dict[str, Any]] = None,
) -> IPAResult:
    """Iterative Preference Alignment (Algorithm 2) from the seed model ``M_0 = model``.

    Args:
        model: Seed ``OneRecForConditionalGeneration`` ``M_0``. It is trained in place during the first iteration
            run in this call; later snapshots may be loaded from disk, so use the returned model.
        tokenizer: Its ``SemanticIDTokenizer`` (saved with every snapshot).
        train_samples: Rows with ``history`` and ``target`` (real next session) item-id lists, e.g. from
            ``trainers.data.build_session_samples``; ``r_DPO`` of them are mined per iteration.
        reward_fn: Session reward model, see :class:`SessionRewardFn`.
        config: :class:`IPAConfig`.
        output_dir: Where snapshots, mined pairs and checkpoints go (layout in the module docstring).
        resume: Continue a previous run in ``output_dir``. ``False`` refuses a folder that already holds iterations.
        run_inputs: JSON-serialisable description of the inputs the caller chose (e.g. the seed model and reward
            model folders). With the alignment settings (``config``: ``r_DPO``, ``N``, ``T``, seed, ``beta``,
            loss, ...) it is stored in ``output_dir/ipa_inputs.json``; resuming a run started from other inputs
            is a ``ValueError`` naming them, never a silent mix of two runs.
    Returns:
        :class:`IPAResult` with ``M_T`` and every iteration's state (pairs mined, skipped users, mean chosen /
        rejected rewards, timings, training metrics).
    """
    config = config or IPAConfig()
    output_dir = Path(output_dir)
    if isinstance(train_samples, list):
        train_samples = Dataset.from_list(train_samples)
    missing = [c for c in ("history", "target") if c not in train_samples.column_names]
    if missing:
        raise KeyError(f"train_samples needs 'history' and 'target' item-id columns; it lacks {missing}.")
    if len(train_samples) == 0:
        raise ValueError("train_samples is empty.")
    existing = sorted(p.name for p in output_dir.glob("iteration-*")) if output_dir.is_dir() else []
    if existing and not resume:
        raise FileExistsError(
            f"{output_dir} already holds {existing}; pass resume=True to continue that run, or "
            "choose an empty output_dir."
        )

    # The seed model's weights and the reward's are recorded by the run itself, whatever the caller passes: resuming a
    # folder with another seed model or reward is refused even when run_inputs is not given.
    inputs = {**(run_inputs or {}), "seed_model_weights": fingerprint(model), "reward_fn": fingerprint(reward_fn)}
    _check_run_inputs(output_dir, {"config": _config_record(config), "inputs": inputs})

    first_todo = 1
    while first_todo <= config.num_iterations and _is_complete(output_dir, first_todo):
        first_todo += 1
    stale = [k for k in range(first_todo + 1, config.num_iterations + 1) if _is_complete(output_dir, k)]
    if stale:
        raise ValueError(
            f"iteration-{first_todo} is incomplete but later iterations {stale} are complete: they were "
            f"trained from a different iteration-{first_todo}. Delete them to redo the run from "
            f"iteration-{first_todo}."
        )
    states = [_read_json(_iteration_dir(output_dir, k) / STATE_FILE) for k in range(1, first_todo)]
    for state in states:
        logger.info("IPA iteration %d already complete: skipped.", state["iteration"])
    current = model if first_todo == 1 else _load_snapshot(model, _iteration_dir(output_dir, first_todo - 1))

    for k in range(first_todo, config.num_iterations + 1):
        current, state = _run_iteration(current, tokenizer, train_samples, reward_fn, config, output_dir, k)
        states.append(state)
    return IPAResult(model=current, iterations=states, output_dir=output_dir)


def _mine_iteration(
    model, tokenizer, train_samples: Dataset, reward_fn, config: IPAConfig, k: int, parent: str
) -> Dict[str, Any]:
    t = k - 1
    total = len(train_samples)
    size = min(total, max(1, int(round(config.dpo_sample_ratio * total))))
    rng = np.random.default_rng([config.seed, t])
    indices = np.sort(rng.choice(total, size=size, replace=False)).tolist()
    sampled = train_samples.select(indices)
    histories, targets = sampled["history"], sampled["target"]
    pairs = mine_preference_pairs(
        model,
        tokenizer,
        histories,
        reward_fn,
        num_candidates=config.num_candidates,
        session_length=config.session_length,
        exclude_history=config.exclude_history,
        batch_size=config.mining_batch_size,
        min_reward_gap=config.min_reward_gap,
        progress=config.progress,
        search_backend=config.search_backend,
    )
    rows = [
        {
            "sample_index": indices[pair["index"]],
            "history": pair["history"],
            "target": [str(item) for item in targets[pair["index"]]],
            "chosen": pair["chosen"],
            "rejected": pair["rejected"],
            "chosen_reward": pair["chosen_reward"],
            "rejected_reward": pair["rejected_reward"],
        }
        for pair in pairs
    ]
    return {
        "iteration": k,
        "mined_with": parent,
        "seed": config.seed,
        "sampled_rows": size,
        "num_candidates": config.num_candidates,
        "skipped_users": pairs.skipped_users,
        "tied_users": pairs.tied_users,
        "mining_seconds": round(pairs.seconds, 3),
        "pairs": rows,
    }


def _run_iteration(current, tokenizer, train_samples: Dataset, reward_fn, config: IPAConfig, output_dir: Path, k: int):
    """Trains ``M_k`` from ``current`` = ``M_{k-1}``; returns ```[M_k, state]```."""
    started = time.perf_counter()
    snapshot = _iteration_dir(output_dir, k)
    snapshot.mkdir(parents=True, exist_ok=True)
    parent = f"iteration-{k - 1}" if k > 1 else "seed model"
    pairs_path = snapshot / PAIRS_FILE
    reused = pairs_path.is_file()
    if reused:
        record = _read_json(pairs_path)
        logger.info("IPA iteration %d: reusing %d mined pairs from %s.", k, len(record["pairs"]), pairs_path)
        if (record.get("num_candidates"), record.get("seed")) != (config.num_candidates, config.seed):
            logger.warning(
                "IPA iteration %d: %s was mined with num_candidates=%s, seed=%s (now %s, %s); reusing it "
                "anyway. Delete it to mine again.",
                k,
                pairs_path,
                record.get("num_candidates"),
                record.get("seed"),
                config.num_candidates,
                config.seed,
            )
    else:
        record = _mine_iteration(current, tokenizer, train_samples, reward_fn, config, k, parent)
        _write_json_atomically(pairs_path, record)  # before training: a killed run never mines these again
    rows = record["pairs"]

    train_seconds, resumed_from, train_metrics, last_log = 0.0, None, {}, {}
    if rows:
        template = config.training_args or OneRecDPOConfig(
            output_dir=str(output_dir), report_to="none", save_steps=200, save_total_limit=2
        )
        args = dataclasses.replace(
            template,
            output_dir=str(snapshot / CHECKPOINTS_DIR),
            num_train_epochs=config.epochs_per_iteration,
            seed=config.seed + k - 1,
        )
        reference = copy.deepcopy(current)  # frozen M_t for Eq. 10; the trainer updates `current` into M_{t+1}
        dataset = Dataset.from_list([{column: row[column] for column in TRAIN_COLUMNS} for row in rows])
        trainer = OneRecDPOTrainer(
            model=current, ref_model=reference, args=args, train_dataset=dataset, processing_class=tokenizer
        )
        if os.path.isdir(args.output_dir):
            resumed_from = get_last_checkpoint(args.output_dir)
        train_started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resumed_from)
        train_seconds = time.perf_counter() - train_started
        train_metrics = {key: value for key, value in result.metrics.items() if isinstance(value, (int, float))}
        last_log = next((entry for entry in reversed(trainer.state.log_history) if "rewards/margins" in entry), {})
        del trainer, reference
    else:
        logger.warning("IPA iteration %d: no preference pairs were mined; M_%d = M_%d.", k, k, k - 1)

    current.save_pretrained(str(snapshot))
    tokenizer.save_pretrained(str(snapshot))
    state = {
        "iteration": k,
        "trained_from": parent,
        "sampled_rows": record["sampled_rows"],
        "pairs_mined": len(rows),
        "skipped_users": record["skipped_users"],
        "tied_users": record["tied_users"],
        "mean_chosen_reward": float(np.mean([r["chosen_reward"] for r in rows])) if rows else None,
        "mean_rejected_reward": float(np.mean([r["rejected_reward"] for r in rows])) if rows else None,
        "pairs_reused": reused,
        "resumed_from_checkpoint": resumed_from,
        "timings": {
            "mining_seconds": record["mining_seconds"],
            "training_seconds": round(train_seconds, 3),
            "iteration_seconds": round(time.perf_counter() - started, 3),
        },
        "train_metrics": train_metrics,
        "last_train_log": last_log,
    }
    _write_json_atomically(snapshot / STATE_FILE, state)  # last: marks the iteration complete
    if not config.keep_checkpoints:
        shutil.rmtree(snapshot / CHECKPOINTS_DIR, ignore_errors=True)
    return current, state


__all__ = ["IPAConfig", "IPAResult", "PreferencePairs", "SessionRewardFn", "mine_preference_pairs", "run_ipa"]
