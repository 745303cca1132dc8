"""A compact SASRec baseline (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018).

The reference point for the generative models of this project on the leave-one-out protocol of TIGER / S3-Rec:

- `SASRec`: learned item and position embeddings, causal pre-LN self-attention blocks, output scores tied to the
  item embeddings (`score(item) = h_t . e_item`), padding id 0, sequences left-padded to `max_len` as in the
  original code (the newest item always sits at the last position).
- Training on the `train` split only (each user's sequence without its last two items), predicting every next
  item of the newest `max_len + 1` items (one row per user, all prefixes at once thanks to the causal mask).
- Loss `"ce"` (default): full softmax over the whole catalogue. It is known to be much stronger than the
  original `"bce"` (one sampled negative per position, also available) because every item is a negative at
  every step: see Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better than SASRec?"
  (RecSys 2023) and Petrov & Macdonald, "gSASRec" (RecSys 2023). With ~12k items it stays affordable on a CPU.
- Batches of users of similar length (`length_grouped_batches`), so short sequences do not pay for the padding
  of long ones; the full softmax (a `(targets, num_items)` score matrix per batch) is most of the cost on CPU.
- Validation Recall@10 / NDCG@10 after every epoch, early stopping with `patience`, best weights restored.
- With the input and output embeddings tied, the last history item itself usually gets the highest score (on
  Amazon Beauty it is the top-1 of ~93% of test users when history is kept), although no Beauty sequence repeats
  an item: evaluate with `exclude_history=True` as well (the S3-Rec full-ranking code drops history items too).
- `SASRecRecommender`: the `Recommender` protocol of `trainers.evaluation`
  (`rank(histories, k, exclude_history) -> list[list[str]]`), full ranking over every catalogue item.

    from trainers.data import leave_one_out_split, load_bundled
    from trainers.baselines.sasrec import SASRecConfig, SASRecRecommender

    data = load_bundled("beauty")
    splits = leave_one_out_split(data["sequences"])
    recommender = SASRecRecommender.fit(splits, SASRecConfig(), item_ids=data["items"]["item_id"])
    recommender.rank([["1", "2", "3"]], k=10, exclude_history=True)
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler

from modeling_onerec.generation_onerec import eval_mode

from ..data import index_items, natural_order

logger = logging.getLogger(__name__)

PAD_ID = 0
LOSSES = ("ce", "bce")
CONFIG_NAME = "sasrec_config.json"
WEIGHTS_NAME = "sasrec.safetensors"


@dataclass
class SASRecConfig:
    """Hyper-parameters of `SASRec` and of its training loop (defaults: the original paper's sizes for Amazon).

    Every field has a plain type so that `transformers.HfArgumentParser` can expose it on the command line.
    """

    hidden_size: int = field(default=64, metadata={"help": "d: item / position embedding and block width."})
    num_blocks: int = field(default=2, metadata={"help": "Self-attention blocks."})
    num_heads: int = field(default=1, metadata={"help": "Attention heads (must divide hidden_size)."})
    ffn_size: int = field(default=64, metadata={"help": "Inner width of the point-wise feed-forward (paper: d)."})
    max_len: int = field(default=50, metadata={"help": "n: newest items the model reads (paper: 50 on Amazon)."})
    dropout: float = field(default=0.3, metadata={"help": "Dropout (paper: 0.5 on the sparse Amazon data)."})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    batch_size: int = field(default=128, metadata={"help": "Users per training batch."})
    epochs: int = field(default=200, metadata={"help": "Most training epochs (early stopping usually ends first)."})
    patience: int = field(
        default=10,
        metadata={"help": "Stop after this many epochs without a better validation NDCG@10 (0: never stop early)."},
    )
    loss: str = field(
        default="ce",
        metadata={
            "help": "'ce': full softmax over all items (strong, default); 'bce': original, one sampled negative."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, shuffling, dropout and negatives."})
    device: Optional[str] = field(default=None, metadata={"help": "cuda / cpu (default: cuda when available)."})
    eval_batch_size: int = field(default=1024, metadata={"help": "Users per batch when ranking."})
    validation_exclude_history: bool = field(
        default=True,
        metadata={"help": "Drop history items from the validation ranking (the S3-Rec full-ranking evaluation)."},
    )
    max_train_minutes: Optional[float] = field(
        default=None,
        metadata={"help": "Wall-time budget of training; stops after the epoch that exceeds it (best weights kept)."},
    )

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is invalid; choose one of {LOSSES}.")
        for name in (
            "hidden_size",
            "num_blocks",
            "num_heads",
            "ffn_size",
            "max_len",
            "batch_size",
            "epochs",
            "eval_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1.")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1).")
        if self.patience < 0:
            raise ValueError(f"patience={self.patience} must be >= 0 (0 disables early stopping).")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0.")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0.")
        if self.max_train_minutes is not None and not self.max_train_minutes > 0:
            raise ValueError(f"max_train_minutes={self.max_train_minutes} must be > 0 (or unset for no budget).")

    def resolved_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))


class SASRec(nn.Module):
    """Causal self-attention over left-padded item-index sequences; scores are tied to the item embeddings.

    Args:
        num_items (`int`): Catalogue size N; item indices are `1..N`, `0` is padding.
        config (`SASRecConfig`): Sizes and dropout.
    """

    def __init__(self, num_items: int, config: SASRecConfig) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items={num_items} must be at least 1.")
        self.num_items = num_items
        self.config = config
        d = config.hidden_size
        self.item_embedding = nn.Embedding(num_items + 1, d, padding_idx=PAD_ID)
        self.position_embedding = nn.Embedding(config.max_len, d)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=d,
                nhead=config.num_heads,
                dim_feedforward=config.ffn_size,
                dropout=config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.num_blocks)
        )
        self.final_norm = nn.LayerNorm(d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.item_embedding.weight, std=_embedding_std(self.config.hidden_size))
        nn.init.normal_(self.position_embedding.weight, std=_embedding_std(self.config.hidden_size))
        with torch.no_grad():
            self.item_embedding.weight[PAD_ID].zero_()

    def forward(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Hidden states of every position.

        Args:
            input_ids (`torch.LongTensor` of shape ``[batch, length]``): Item indices, left-padded with 0, with
                `length <= max_len`. A shorter `length` is read as the last `length` columns of the full
                `max_len` window (positions `max_len - length .. max_len - 1`), so trimming leading all-padding
                columns does not change the output.

        Returns:
            `torch.Tensor` of shape ``[batch, length, hidden_size]``; position `t` depends on `input_ids[:, :t + 1]`
            only.
        """
        batch, length = input_ids.shape
        if length > self.config.max_len:
            raise ValueError(f"Sequences of length {length} exceed max_len={self.config.max_len}; keep the newest.")
        positions = torch.arange(self.config.max_len - length, self.config.max_len, device=input_ids.device)
        is_item = (input_ids != PAD_ID).unsqueeze(-1)
        hidden = self.item_embedding(input_ids) * math.sqrt(self.config.hidden_size)
        hidden = self.embedding_dropout(hidden + self.position_embedding(positions)) * is_item
        mask = attention_mask(input_ids, self.config.num_heads)
        for block in self.blocks:
            hidden = block(hidden, src_mask=mask) * is_item
        return self.final_norm(hidden)

    def item_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every real item: `(..., hidden_size)` -> `(..., num_items)`; column `j` is item index `j + 1`."""
        return hidden @ self.item_embedding.weight[1:].T

    def loss(
        self,
        input_ids: torch.LongTensor,
        target_ids: torch.LongTensor,
        kind: str = "ce",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Next-item loss averaged over every non-padding target.

        Args:
            input_ids, target_ids (`torch.LongTensor` of shape ``[batch, length]``): `target_ids[:, t]` is the item
                after `input_ids[:, t]`, 0 where there is none.
            kind (`str`): `"ce"` (softmax over all items) or `"bce"` (one uniformly sampled negative per target).
            generator (`torch.Generator`, *optional*): Source of the `"bce"` negatives.
        """
        hidden = self(input_ids)
        valid = target_ids != PAD_ID
        hidden, targets = hidden[valid], target_ids[valid]
        if kind == "ce":
            return F.cross_entropy(self.item_scores(hidden), targets - 1)
        negatives = torch.randint(1, self.num_items + 1, targets.shape, generator=generator, device="cpu")
        negatives = negatives.to(targets.device)
        if self.num_items > 1:  # never the positive itself
            negatives = torch.where(negatives == targets, negatives % self.num_items + 1, negatives)
        positive = (hidden * self.item_embedding(targets)).sum(-1)
        negative = (hidden * self.item_embedding(negatives)).sum(-1)
        return F.softplus(-positive).mean() + F.softplus(negative).mean()


def _embedding_std(hidden_size: int) -> float:
    """Embedding initialisation std: `1 / sqrt(d)` so that `sqrt(d) * embedding` starts at unit scale."""
    return 1.0 / math.sqrt(hidden_size)


def attention_mask(input_ids: torch.LongTensor, num_heads: int) -> torch.Tensor:
    """Boolean mask (`True` = blocked) of shape ``[batch * num_heads, length, length]``: causal and no padding keys.

    Every position may attend to itself, so that all-padding rows never see an empty softmax (their output is
    zeroed afterwards anyway).
    """
    length = input_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).triu(1)
    blocked = causal.unsqueeze(0) | (input_ids == PAD_ID).unsqueeze(1)
    blocked &= ~torch.eye(length, dtype=torch.bool, device=input_ids.device)
    return blocked.repeat_interleave(num_heads, dim=0)


# ---------------------------------------------------------------------------------------------------------
# Encoding item ids
# ---------------------------------------------------------------------------------------------------------


def left_pad(sequences: Sequence[Sequence[int]], length: int) -> torch.LongTensor:
    """The newest `length` indices of each sequence, left-padded with 0: `(len(sequences), length)`."""
    out = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        newest = list(sequence)[-length:] if length else []
        if newest:
            out[row, length - len(newest) :] = torch.as_tensor(newest, dtype=torch.long)
    return out


def length_grouped_batches(
    lengths: torch.Tensor, batch_size: int, generator: torch.Generator
) -> list[torch.LongTensor]:
    """Shuffled training batches of rows of similar length (less padding to run through the blocks): the order of
    transformers' ``LengthGroupedSampler`` (the one the OneRec Trainer uses), cut into batches. Every row appears
    exactly once per epoch; a batch rarely mixes a 3-item row with a 50-item one (Amazon Beauty: median 4, max 50)."""
    order = torch.tensor(list(LengthGroupedSampler(batch_size, lengths=lengths.tolist(), generator=generator)))
    return list(order.split(batch_size))


def trim_padding(*tensors: torch.LongTensor) -> tuple[torch.LongTensor, ...]:
    """Drop the leading columns that are padding in every row of `tensors[0]` (keeps at least one column)."""
    used = (tensors[0] != PAD_ID).any(0).nonzero()
    start = int(used[0]) if len(used) else tensors[0].shape[1] - 1
    return tuple(tensor[:, start:] for tensor in tensors)


# ---------------------------------------------------------------------------------------------------------
# Recommender
# ---------------------------------------------------------------------------------------------------------


class SASRecRecommender:
    """A trained `SASRec` with its item vocabulary: the `Recommender` protocol of `trainers.evaluation`.

    Args:
        model (`SASRec`): The network (its `num_items` must equal `len(item_ids)`).
        item_ids (`Sequence[str]`): Catalogue; item `item_ids[j]` has index `j + 1`.
        history (`list[dict]`, *optional*): Learning curve from `fit`.
    """

    def __init__(self, model: SASRec, item_ids: Sequence[str], history: list[dict] | None = None) -> None:
        item_ids = [str(item) for item in item_ids]
        if len(item_ids) != model.num_items:
            raise ValueError(f"{len(item_ids)} item ids for a model of {model.num_items} items.")
        self.model = model
        self.item_ids = item_ids
        self.index = index_items(item_ids, start=1)  # 0 is padding
        self.history = history or []
        self._warned_unknown = False

    @property
    def config(self) -> SASRecConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.item_embedding.weight.device

    def item_embeddings(self) -> np.ndarray:
        """The learned item vectors `[num_items, hidden_size]` (float32), row `j` for `item_ids[j]`."""
        return self.model.item_embedding.weight[1:].detach().float().cpu().numpy()

    # --- encoding -------------------------------------------------------------------------------------------

    def encode(self, history: Iterable[str]) -> list[int]:
        """Item indices of a history; items outside the catalogue are skipped (a warning is logged once)."""
        indices = [self.index.get(str(item), PAD_ID) for item in history]
        if PAD_ID in indices:
            if not self._warned_unknown:
                logger.warning("Histories contain items outside the SASRec catalogue; they are ignored.")
                self._warned_unknown = True
            indices = [index for index in indices if index != PAD_ID]
        return indices

    # --- ranking --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def rank_indices(self, histories: Sequence[Sequence[int]], k: int, exclude_history: bool) -> torch.LongTensor:
        """Top-`k` item indices (`1..N`) per history of indices: `(len(histories), min(k, N))`, best first.

        With `exclude_history`, a row whose catalogue minus its history holds fewer than `k` items ends in
        padding (0) entries; `rank` removes them.
        """
        if k < 1:
            raise ValueError(f"k={k} must be at least 1.")
        k = min(k, self.model.num_items)
        out = []
        with eval_mode(self.model):
            for start in range(0, len(histories), self.config.eval_batch_size):
                chunk = histories[start : start + self.config.eval_batch_size]
                (inputs,) = trim_padding(left_pad(chunk, self.config.max_len))
                hidden = self.model(inputs.to(self.device))[:, -1]
                scores = self.model.item_scores(hidden)
                if exclude_history:
                    rows = [row for row, sequence in enumerate(chunk) for _ in sequence]
                    cols = [index - 1 for sequence in chunk for index in sequence]
                    if rows:
                        scores[torch.as_tensor(rows), torch.as_tensor(cols)] = -torch.inf
                top = scores.topk(k, dim=-1)
                indices = top.indices + 1
                indices[top.values == -torch.inf] = PAD_ID
                out.append(indices.cpu())
        return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)

    def rank(self, histories: list[list[str]], k: int, exclude_history: bool = True) -> list[list[str]]:
        """Best `k` catalogue items for each history (oldest item first), best first, no duplicates, no padding.

        Args:
            histories (`list[list[str]]`): Item ids in time order; unknown items are ignored.
            k (`int`): Items per list (fewer only when the catalogue minus the excluded history is smaller).
            exclude_history (`bool`): Never recommend an item of the (whole) history.
        """
        encoded = [self.encode(history) for history in histories]
        top = self.rank_indices(encoded, k, exclude_history).tolist()
        return [[self.item_ids[index - 1] for index in row if index != PAD_ID] for row in top]

    def evaluate(
        self,
        histories: Sequence[Sequence[int]],
        targets: Sequence[int],
        ks: Sequence[int] = (5, 10),
        exclude_history: bool = True,
    ) -> dict[str, float]:
        """Leave-one-out Recall@k / NDCG@k of encoded histories and target indices (validation during `fit`).

        The definitions of `trainers.evaluation.ranking_metrics` (Recall@k = hit rate, NDCG@k = `1 / log2(rank + 2)`),
        computed on index tensors so that a validation pass costs no string conversion.
        """
        top = self.rank_indices(histories, max(ks), exclude_history)
        targets_tensor = torch.as_tensor(list(targets), dtype=torch.long).unsqueeze(1)
        hits = (top == targets_tensor).float()
        ranks = torch.arange(top.shape[1], dtype=torch.float)
        gains = hits / torch.log2(ranks + 2)
        metrics = {}
        for k in ks:
            metrics[f"recall@{k}"] = float(hits[:, :k].sum(1).mean()) if len(top) else 0.0
            metrics[f"ndcg@{k}"] = float(gains[:, :k].sum(1).mean()) if len(top) else 0.0
        return metrics

    # --- training -------------------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls, splits, config: SASRecConfig | None = None, item_ids: Sequence[str] | None = None, progress: bool = True
    ) -> SASRecRecommender:
        """Train SASRec on `splits["train"]`, early-stopping on `splits["validation"]`; best weights restored.

        Args:
            splits (`DatasetDict` or mapping): The output of `trainers.data.leave_one_out_split`: `train` rows are
                the training sequences; `validation` rows end in their target (omit the split to train for
                `epochs` without early stopping).
            config (`SASRecConfig`, *optional*): Model and training settings.
            item_ids (`Sequence[str]`, *optional*): The catalogue to rank (e.g. `data["items"]["item_id"]`);
                default: every item of the splits in natural order.
            progress (`bool`): Show a tqdm bar over epochs.

        Returns:
            The trained `SASRecRecommender`; `.history` holds one dict per epoch (loss, validation metrics,
            seconds) and `.training_summary` the budget actually used.
        """
        config = config or SASRecConfig()
        set_seed(config.seed)
        device = config.resolved_device()
        train_rows = [list(row) for row in splits["train"]["item_ids"]]
        validation_rows = [list(row) for row in splits["validation"]["item_ids"]] if "validation" in splits else []
        if item_ids is None:
            seen = {item for rows in (train_rows, validation_rows) for row in rows for item in row}
            if "test" in splits:
                seen.update(item for row in splits["test"]["item_ids"] for item in row)
            item_ids = natural_order(seen)
        model = SASRec(len(item_ids), config)
        recommender = cls(model.to(device), item_ids)

        inputs, targets = recommender._training_tensors(train_rows)
        lengths = (inputs != PAD_ID).sum(1)
        if len(inputs) == 0:
            raise ValueError("No training sequence has two items: nothing to learn from.")
        val_histories = [recommender.encode(row[:-1]) for row in validation_rows if row]
        val_targets = [recommender.index.get(row[-1], -1) for row in validation_rows if row]  # -1: never hit
        logger.info(
            "SASRec: %d items, %d training rows (%d targets), %d validation users, device %s",
            len(item_ids),
            len(inputs),
            int((targets != PAD_ID).sum()),
            len(val_histories),
            device,
        )

        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98)
        )
        generator = torch.Generator().manual_seed(config.seed)
        best_score, best_epoch, best_state, stale = -1.0, 0, None, 0
        started = time.perf_counter()
        stop_reason = "epochs"
        bar = tqdm(range(1, config.epochs + 1), desc="SASRec", unit="epoch", disable=not progress)
        for epoch in bar:
            model.train()
            total, batches = 0.0, 0
            for batch in length_grouped_batches(lengths, config.batch_size, generator):
                batch_inputs, batch_targets = trim_padding(inputs[batch], targets[batch])
                loss = model.loss(batch_inputs.to(device), batch_targets.to(device), config.loss, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
                batches += 1
            record: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(batches, 1)}
            if val_histories:
                record.update(
                    {
                        f"val_{name}": value
                        for name, value in recommender.evaluate(
                            val_histories, val_targets, ks=(10,), exclude_history=config.validation_exclude_history
                        ).items()
                    }
                )
            record["seconds"] = time.perf_counter() - started
            recommender.history.append(record)
            score = record.get("val_ndcg@10", -record["train_loss"])
            if score > best_score:
                best_score, best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            bar.set_postfix(
                loss=f"{record['train_loss']:.3f}",
                ndcg10=f"{record.get('val_ndcg@10', float('nan')):.4f}",
                best=best_epoch,
            )
            logger.info("epoch %d: %s", epoch, {key: round(value, 5) for key, value in record.items()})
            if val_histories and config.patience and stale >= config.patience:
                stop_reason = f"early stopping (no better validation NDCG@10 for {config.patience} epochs)"
                break
            if config.max_train_minutes is not None and record["seconds"] >= 60 * config.max_train_minutes:
                stop_reason = f"time budget ({config.max_train_minutes} min)"
                break
        bar.close()
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        recommender.training_summary = {
            "epochs_run": len(recommender.history),
            "best_epoch": best_epoch,
            "stop_reason": stop_reason,
            "train_seconds": time.perf_counter() - started,
            "device": str(device),
            "best_val_ndcg@10": best_score if val_histories else None,
        }
        logger.info("SASRec training done: %s", recommender.training_summary)
        return recommender

    def _training_tensors(self, rows: Sequence[Sequence[str]]) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Inputs / next-item targets `(num_rows, max_len)` from the newest `max_len + 1` items of each row."""
        sequences = [self.encode(row) for row in rows]
        sequences = [sequence[-(self.config.max_len + 1) :] for sequence in sequences if len(sequence) >= 2]
        inputs = left_pad([sequence[:-1] for sequence in sequences], self.config.max_len)
        targets = left_pad([sequence[1:] for sequence in sequences], self.config.max_len)
        return inputs, targets

    # --- persistence ----------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `sasrec_config.json` (config, item ids, learning curve) and `sasrec.safetensors`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"config": asdict(self.config), "item_ids": self.item_ids, "history": self.history}
        (directory / CONFIG_NAME).write_text(json.dumps(payload))
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.model.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | None = None) -> SASRecRecommender:
        from safetensors.torch import load_file

        directory = Path(directory)
        payload = json.loads((directory / CONFIG_NAME).read_text())
        known = {f.name for f in fields(SASRecConfig)}
        config = SASRecConfig(**{key: value for key, value in payload["config"].items() if key in known})
        if device is not None:
            config.device = device
        model = SASRec(len(payload["item_ids"]), config)
        model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        model.to(config.resolved_device()).eval()
        return cls(model, payload["item_ids"], payload.get("history"))
