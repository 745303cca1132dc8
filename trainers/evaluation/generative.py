"""OneRec as a ``Recommender`` for the shared evaluation code (``trainers.evaluation``).

Full ranking over the whole catalogue: a trie-constrained beam search over the *first item of the session*
(``num_items=1``), with at least as many beams as the first-level codebook has codes, so that every first-level
code can stay in the beam. The beams, best first, are the ranked list.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..distributed import map_across_processes
from .ranking import _sample_columns, _single_target, evaluate_recommender
from .sessions import session_metrics


class GenerativeRecommender:
    """Ranks items with a trained ``OneRecForConditionalGeneration`` and its ``SemanticIDTokenizer``.

    Args:
        model: The model (its device is used).
        tokenizer: The tokenizer the model was built with.
        num_beams: Beam width; ``None`` = the first level's codebook size (``K``), and never less than ``k``.
        batch_size: Users per beam search.
        renormalize_logits: Score codes renormalised over the trie's valid codes instead of by the model's softmax
            over each level (``model.recommend``); ``None``: the model's ``generation_config.renormalize_logits``.
    """

    def __init__(
        self,
        model,
        tokenizer,
        num_beams: Optional[int] = None,
        batch_size: int = 16,
        renormalize_logits: Optional[bool] = None,
    ):
        model.config.check_tokenizer(tokenizer)
        self.model, self.tokenizer = model, tokenizer
        first_level = (
            tokenizer.level_offsets[1] - tokenizer.level_offsets[0]
            if tokenizer.num_levels > 1
            else tokenizer.vocab_size - tokenizer.level_offsets[0]
        )
        self.num_beams = num_beams if num_beams is not None else first_level
        self.batch_size = batch_size
        self.renormalize_logits = renormalize_logits

    def rank(self, histories: Sequence[Sequence[str]], k: int, exclude_history: bool) -> List[List[str]]:
        """Top-``k`` item ids per history, best first (``k`` distinct items, fewer only if the catalogue is
        exhausted). With ``exclude_history`` the user's own history items are never returned.

        The ranking is ``model.recommend`` with one-item sessions: the beams of the first item, best first."""
        found = self.model.recommend(
            self.tokenizer,
            histories,
            num_sessions=k,
            num_beams=max(k, self.num_beams),
            session_length=1,
            exclude_history=exclude_history,
            forbid_repeats=False,
            batch_size=self.batch_size,
            renormalize_logits=self.renormalize_logits,
        )
        return [[session.items[0] for session in sessions] for sessions in found]


def choose_renormalize_logits(
    model,
    tokenizer,
    validation_samples: Any,
    *,
    ks: Sequence[int] = (5, 10),
    num_beams: Optional[int] = None,
    exclude_history: bool = True,
    batch_size: int = 16,
) -> Tuple[bool, Dict[bool, Dict[str, float]]]:
    """How a trained model's searches should score codes, chosen on validation samples (``history``, ``target``):
    each code by the model's softmax over its level (``False``) or renormalised over the trie's valid codes
    (``True``, which credits a code that is its parent's only valid child with probability 1).

    Which ranks better depends on the model and the data (on Amazon Beauty the level softmax, on Amazon Scientific the
    renormalised scores; ``docs/results.md``), so it is measured, not assumed: both rank the same samples and the
    higher Recall@``max(ks)`` wins, then the higher NDCG@``max(ks)``, then ``False`` (the distribution the model is
    trained on). Under torchrun every process gets the same metrics and so the same choice.

    Returns:
        ``(choice, {False: metrics, True: metrics})``.
    """
    metrics: Dict[bool, Dict[str, float]] = {}
    for renormalize in (False, True):
        recommender = GenerativeRecommender(
            model, tokenizer, num_beams=num_beams, batch_size=batch_size, renormalize_logits=renormalize
        )
        metrics[renormalize], _ = evaluate_recommender(
            recommender, validation_samples, ks, exclude_history=exclude_history, batch_size=batch_size * 4
        )
    k = max(ks)

    def rank(renormalize: bool):
        return metrics[renormalize][f"recall@{k}"], metrics[renormalize][f"ndcg@{k}"], not renormalize

    return max((False, True), key=rank), metrics


def code_level_mass(model, tokenizer, samples: Any, *, batch_size: int = 64) -> Dict[str, List[float]]:
    """Where a trained model's probability goes at each code level, teacher-forced on held-out items: what decides
    whether its searches rank better with codes renormalised over the trie's valid codes
    (:func:`choose_renormalize_logits`).

    For every sample (``history``, ``target``: one item) the decoder reads ``BOS`` and the target's codes; at level
    ``l`` the model's softmax over that level's codes is compared with the codes the trie allows below the target's
    first ``l`` codes. Returns, per key, one mean over the samples for each level (a list of length ``L``):

    * ``valid_mass``: the share of the level's probability on allowed codes (1 where every code is allowed; what the
      renormalised scoring divides by);
    * ``log_prob_level`` / ``log_prob_renormalized``: the target code's log-probability under the level softmax and
      renormalised over the allowed codes (their difference is ``-log valid_mass``);
    * ``allowed_codes``: how many codes the trie allows there.
    """
    _, histories, targets = _sample_columns(samples)
    if not histories:
        raise ValueError("samples is empty: pass validation or test samples with 'history' and 'target'.")
    targets = [_single_target(target, user) for user, target in enumerate(targets)]
    trie, num_levels = tokenizer.trie, tokenizer.num_levels
    offsets, sizes = tokenizer.level_offsets, tokenizer.codebook_sizes
    device = model.device
    totals = {
        key: torch.zeros(num_levels, dtype=torch.float64)
        for key in ("valid_mass", "log_prob_level", "log_prob_renormalized", "allowed_codes")
    }
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(histories), batch_size):
            encoded = tokenizer.batch_encode_histories(
                histories[start : start + batch_size], max_items=model.config.max_history_items
            ).to(device)
            items = torch.tensor([tokenizer.item_index(item) for item in targets[start : start + batch_size]])
            codes = tokenizer.item_tokens[items]  # [B, L]
            labels = torch.cat([torch.full((len(items), 1), tokenizer.bos_token_id), codes], dim=1).to(device)
            with torch.no_grad():
                logits = model(**encoded, labels=labels).logits.float().cpu()  # [B, 1 + L, V]: position l + 1 is code l
            for level in range(num_levels):
                log_probs = torch.log_softmax(logits[:, level + 1, offsets[level] : offsets[level] + sizes[level]], -1)
                nodes = trie.item_path[items, level].cpu()  # the target's first `level` codes
                allowed = torch.zeros_like(log_probs, dtype=torch.bool)
                for row, node in enumerate(nodes.tolist()):
                    allowed[row, trie.edge_token[trie.indptr[node] : trie.indptr[node + 1]].cpu() - offsets[level]] = (
                        True
                    )
                mass = log_probs.exp().masked_fill(~allowed, 0).sum(-1)
                gold = log_probs.gather(1, (codes[:, level] - offsets[level])[:, None]).squeeze(1)
                totals["valid_mass"][level] += mass.sum()
                totals["log_prob_level"][level] += gold.sum()
                totals["log_prob_renormalized"][level] += (gold - mass.log()).sum()
                totals["allowed_codes"][level] += allowed.sum()
    finally:
        model.train(was_training)
    return {key: (total / len(histories)).tolist() for key, total in totals.items()}


def evaluate_generative_model(
    model,
    tokenizer,
    test_samples: Any,
    *,
    ks: Sequence[int] = (5, 10),
    num_beams: Optional[int] = None,
    session_rows: Optional[Sequence[Dict[str, Any]]] = None,
    session_length: Optional[int] = None,
    session_beams: int = 16,
    batch_size: int = 16,
    progress: bool = True,
    history_settings: Sequence[str] = ("exclude_history", "all_items"),
    renormalize_logits: Optional[bool] = None,
) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, List[List[str]]]]:
    """The test evaluation every OneRec / TIGER-style run reports (used by ``examples/pretrain.py`` and
    ``examples/evaluate.py``).

    * Ranking: full-catalogue Recall/NDCG@k through ``evaluate_recommender`` (the path the baselines use), once with
      the user's history excluded and once with it allowed (``history_settings`` picks which of
      ``"exclude_history"`` / ``"all_items"`` run: ranking every user of a large test split twice is slow on a CPU).
    * Sessions (with ``session_rows``, see ``trainers.evaluation.held_out_sessions``): the best session of
      ``session_length`` items generated from each user's training history (history excluded, no repeats, beam
      ``session_beams``), scored by ``session_metrics`` against the two held-out items: hit rate, consumed items,
      catalogue coverage, intra-session diversity (distinct first-level codes per item).
    * ``renormalize_logits`` scores the searches' codes renormalised over the trie's valid codes (``model.recommend``).

    Returns:
        ``(report, ranked)``: ``report`` maps ``"exclude_history"``, ``"all_items"`` (and ``"session"``) to metrics
        plus ``seconds``; ``ranked`` maps the two ranking settings to the top-``max(ks)`` lists, in sample order.
    """
    unknown = sorted(set(history_settings) - {"exclude_history", "all_items"})
    if unknown or not history_settings:
        raise ValueError(
            f"history_settings={list(history_settings)} is invalid; pick one or both of "
            "'exclude_history' and 'all_items'."
        )
    recommender = GenerativeRecommender(
        model, tokenizer, num_beams=num_beams, batch_size=batch_size, renormalize_logits=renormalize_logits
    )
    report: Dict[str, Dict[str, Any]] = {}
    ranked: Dict[str, List[List[str]]] = {}
    for name in ("exclude_history", "all_items"):
        if name not in history_settings:
            continue
        exclude = name == "exclude_history"
        start = time.perf_counter()
        metrics, ranked[name] = evaluate_recommender(
            recommender, test_samples, ks, exclude_history=exclude, batch_size=batch_size * 4, progress=progress
        )
        report[name] = metrics | {
            "num_beams": max(max(ks), recommender.num_beams),
            "renormalize_logits": model.renormalizes_logits(renormalize_logits),
            "seconds": round(time.perf_counter() - start, 1),
        }
    if session_rows:
        length = session_length or model.config.session_length
        histories = [row["history"] for row in session_rows]
        start = time.perf_counter()
        if model.config.session_length == 1 and length > 1:
            # A point-wise (TIGER-style) model was never trained to continue after its first item: its session is
            # its top-m ranked list, as for any point-wise recommender.
            mode = "top-m of the ranking (point-wise model)"

            def best_sessions(batch):
                return recommender.rank(batch, length, exclude_history=True)

        else:
            mode = "generated (session beam search)"

            def best_sessions(batch):
                found = model.recommend(
                    tokenizer,
                    batch,
                    num_sessions=1,
                    num_beams=session_beams,
                    session_length=length,
                    exclude_history=True,
                    renormalize_logits=renormalize_logits,
                )
                return [user[0].items if user else [] for user in found]

        # Each process (accelerate launch / torchrun) generates its share; all get every session, in order.
        # One call per process with its whole share: recommend() groups users by history length itself.
        sessions = map_across_processes(best_sessions, histories, max(len(histories), 1), description="sessions")
        report["session"] = session_metrics(
            sessions, [row["target"] for row in session_rows], item_categories=tokenizer
        ) | {
            "session_length": length,
            "session_mode": mode,
            "num_beams": session_beams,
            "seconds": round(time.perf_counter() - start, 1),
        }
    return report, ranked
