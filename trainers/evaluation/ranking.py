"""Ranking evaluation of any recommender under the leave-one-out protocol of TIGER / S3-Rec.

One held-out target item per user, full ranking over the catalogue, Recall@k and NDCG@k averaged over users:

- `ranking_metrics`: Recall@k / NDCG@k of ranked item lists against one target per user;
- `metrics_by_target_popularity` / `code_prefix_hit_rates`: where the hits are won or lost (head or tail targets;
  which semantic-ID level);
- `Recommender` + `evaluate_recommender`: batches the `history` column of session samples through any object
  with a `rank(histories, k, exclude_history)` method and scores the result with `ranking_metrics`;
- `write_topk_json` / `read_topk_json`: the per-user top-k lists as `{user_id: [item_id, ...]}`;
- `sample_users`: a seeded random subset of users for evaluations too slow to run on every user;
- `held_out_sessions`: per user, the training history and the two held-out items, for session metrics.

About `exclude_history`: with `exclude_history=True` no item of the user's history (the `history` the model is
given) is ever recommended. The Amazon leave-one-out targets can be re-purchases of a history item, so excluding
the history changes the numbers in both directions (it frees slots, and it makes re-purchase targets
unreachable): report both settings and always say which one a number uses.

The offline `evaluate` metric `trainers/evaluation/recall_ndcg` (path in `RECALL_NDCG_METRIC_PATH`) calls
`ranking_metrics`, so its numbers are identical.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping, Sequence, Set
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..distributed import map_across_processes

#: Directory of the offline `evaluate` metric: `evaluate.load(str(RECALL_NDCG_METRIC_PATH))`.
RECALL_NDCG_METRIC_PATH = Path(__file__).resolve().parent / "recall_ndcg"


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks={ks!r} is invalid; pass one or more integers >= 1, e.g. ks=(5, 10).")
    return tuple(sorted({int(k) for k in ks}))


def _single_target(target: Any, user: int) -> str:
    """A leave-one-out target: an id, or a list holding exactly one id (the `target` column of a sample)."""
    if isinstance(target, (list, tuple, np.ndarray)):
        if len(target) != 1:
            raise ValueError(
                f"User {user}: the target {list(target)!r} holds {len(target)} items; ranking_metrics scores one "
                "target per user (leave-one-out). For several true next items use session_metrics."
            )
        target = target[0]
    if target is None:
        raise ValueError(f"User {user}: the target is None; every evaluated user needs one target item id.")
    return str(target)


def _check_aligned(ranked: Sequence[Sequence[str]], targets: Sequence[str], where: str) -> list[str]:
    if len(ranked) != len(targets):
        raise ValueError(f"{where}: {len(ranked)} ranked lists for {len(targets)} targets; pass one list per target.")
    return [_single_target(target, user) for user, target in enumerate(targets)]


def ranking_metrics(
    ranked: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int] = (5, 10)
) -> dict[str, float]:
    """Recall@k and NDCG@k of ranked lists against one held-out target per user (leave-one-out).

    For user `u` let `rank_u` be the 0-based position of `targets[u]` in `ranked[u]` (no rank when absent).
    Then, averaged over all users:

    - `recall@k` = mean of `1[rank_u < k]` (with a single target, Recall@k equals HitRate@k);
    - `ndcg@k` = mean of `1 / log2(rank_u + 2)` if `rank_u < k`, else 0 (the ideal DCG of one relevant item
      is 1, so DCG = NDCG).

    A list shorter than `k` simply has fewer chances (a target beyond its end is a miss). Ids are compared as
    strings, so `1` and `"1"` are the same item.

    Args:
        ranked (`Sequence[Sequence[str]]` of shape ``[num_users, <= max(ks)]``):
            Per user, recommended item ids, best first. Longer lists are fine (only the first `k` count).
        targets (`Sequence[str]` of shape ``[num_users]``):
            Per user, the held-out item id (a one-item list such as a sample's `target` column is accepted).
        ks (`Sequence[int]`, defaults to `(5, 10)`):
            Cut-offs.

    Returns:
        `dict[str, float]`: `recall@k` and `ndcg@k` for every `k` in increasing order.

    Raises:
        ValueError: on different numbers of ranked lists and targets, no users, a list holding an item twice
            (the message names the user index), or a target that is not one item.
    """
    ks = _check_ks(ks)
    targets = _check_aligned(ranked, targets, "ranking_metrics")
    if len(targets) == 0:
        raise ValueError("No users to evaluate: ranked and targets are empty.")
    max_k = ks[-1]
    ranks = np.full(len(targets), max_k, dtype=np.int64)  # max_k = "not in any top-k"
    for user, (items, target) in enumerate(zip(ranked, targets)):
        if isinstance(items, (str, bytes)):
            raise ValueError(f"User {user}: the ranked list is the string {items!r}; pass a list of item ids per user.")
        items = [str(item) for item in items]
        if len(set(items)) != len(items):
            seen, duplicated = set(), []
            for item in items:
                if item in seen:
                    duplicated.append(item)
                seen.add(item)
            raise ValueError(
                f"User {user}: the ranked list holds item(s) {sorted(set(duplicated))[:5]} more than once. A "
                "ranking lists each item at most once; deduplicate (keep the first occurrence) before scoring."
            )
        head = items[:max_k]
        if target in head:
            ranks[user] = head.index(target)
    metrics = {}
    gains = np.where(ranks < max_k, 1.0 / np.log2(ranks + 2.0), 0.0)
    for k in ks:
        hit = ranks < k
        metrics[f"recall@{k}"] = float(hit.mean())
        metrics[f"ndcg@{k}"] = float(np.where(hit, gains, 0.0).mean())
    return metrics


def metrics_by_target_popularity(
    ranked: Sequence[Sequence[str]],
    targets: Sequence[str],
    train_counts: Mapping[str, int],
    edges: Sequence[int] = (1, 5, 20, 100),
    ks: Sequence[int] = (5, 10),
) -> list[dict[str, Any]]:
    """`ranking_metrics` of each group of users, grouped by how often their target occurs in the training split.

    Head and tail items behave differently (an ID model memorises the tail's transitions item by item, a
    semantic-ID model shares what it learns across items with similar codes): one figure per group says where a
    model gains or loses against another.

    Args:
        ranked (`Sequence[Sequence[str]]` of shape ``[num_users, <= max(ks)]``): Per user, item ids, best first.
        targets (`Sequence[str]` of shape ``[num_users]``): Per user, the held-out item id.
        train_counts (`Mapping[str, int]`): Occurrences of each item in the training sequences (absent: 0).
        edges (`Sequence[int]`, defaults to `(1, 5, 20, 100)`): Strictly increasing positive group edges; the
            groups are ``[0, e_1)``, ``[e_1, e_2)``, ..., ``[e_last, inf)``.
        ks (`Sequence[int]`, defaults to `(5, 10)`): Cut-offs.

    Returns:
        `list[dict]`: one row per group, in order: `group` (e.g. ``"[5, 20)"``), `users`, `share` of all users, and
        the `ranking_metrics` of its users (absent for a group without users).
    """
    targets = _check_aligned(ranked, targets, "metrics_by_target_popularity")
    edges = list(edges)
    if (
        not edges
        or any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in edges)
        or edges != sorted(set(edges))
    ):
        raise ValueError(f"edges={edges!r} is invalid; pass strictly increasing integers >= 1, e.g. (1, 5, 20, 100).")
    counts = np.array([int(train_counts.get(target, 0)) for target in targets])
    bounds = [0, *edges, None]
    rows = []
    for low, high in zip(bounds[:-1], bounds[1:]):
        members = np.flatnonzero((counts >= low) & ((counts < high) if high is not None else True))
        row: dict[str, Any] = {
            "group": f"[{low}, {high})" if high is not None else f">= {low}",
            "users": int(len(members)),
            "share": float(len(members) / len(targets)) if targets else 0.0,
        }
        if len(members):
            row.update(ranking_metrics([ranked[i] for i in members], [targets[i] for i in members], ks))
        rows.append(row)
    return rows


def code_prefix_hit_rates(
    ranked: Sequence[Sequence[str]],
    targets: Sequence[str],
    item_codes: Mapping[str, Sequence[int]],
    k: int = 10,
) -> list[float]:
    """How far down the semantic-ID hierarchy a top-k list reaches the target: per level ``l = 1 .. L``, the share of
    users whose top `k` holds an item whose first ``l`` codes are the target's.

    Level 1 is the coarse cluster, level ``L`` the whole code (Recall@k when every item has its own code). Where a
    model's rate falls away from another's says at which level it loses the target.

    Args:
        ranked (`Sequence[Sequence[str]]` of shape ``[num_users, >= k]``): Per user, item ids, best first.
        targets (`Sequence[str]` of shape ``[num_users]``): Per user, the held-out item id.
        item_codes (`Mapping[str, Sequence[int]]`): Each item's codes, coarse first, all of one length ``L``
            (`SemanticIDTokenizer.item_codes` rows by `item_ids`).
        k (`int`, defaults to 10): Cut-off.

    Returns:
        `list[float]` of length ``L``: non-increasing shares.
    """
    targets = _check_aligned(ranked, targets, "code_prefix_hit_rates")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} is invalid; pass an integer >= 1.")
    if not targets:
        raise ValueError("No users to evaluate: ranked and targets are empty.")

    def codes_of(item: str) -> tuple:
        if item not in item_codes:
            raise ValueError(
                f"Item {item!r} has no semantic ID; pass the item_codes of the tokenizer the lists were ranked over."
            )
        return tuple(int(code) for code in item_codes[item])

    levels = len(codes_of(targets[0]))
    reached = np.zeros((len(targets), levels), dtype=bool)
    for user, (items, target) in enumerate(zip(ranked, targets)):
        wanted = codes_of(target)
        best = 0
        for item in list(items)[:k]:
            codes = codes_of(str(item))
            shared = 0
            while shared < levels and codes[shared] == wanted[shared]:
                shared += 1
            best = max(best, shared)
        reached[user, :best] = True
    return [float(share) for share in reached.mean(axis=0)]


def training_followers(train_sequences: Sequence[Sequence[str]]) -> dict[str, set]:
    """``{item: the items that directly follow it somewhere in the training sequences}`` (consecutive items of one
    sequence; ids as strings)."""
    followers: dict[str, set] = {}
    for sequence in train_sequences:
        sequence = [str(item) for item in sequence]
        for before, after in zip(sequence, sequence[1:]):
            followers.setdefault(before, set()).add(after)
    return followers


def top_item_follows_history(
    ranked: Sequence[Sequence[str]],
    histories: Sequence[Sequence[str]],
    followers: Mapping[str, Set[str]],
    positions: Sequence[int] = (1, 2, 3, 4),
) -> list[float]:
    """How much a model's first recommendation hangs on each recent history item: per position ``p`` (1 = the newest
    item), the share of users whose top item directly follows their ``p``-th newest history item somewhere in the
    training sequences.

    A model that reads the history in order leans on the newest item (on Amazon Beauty the held-out item follows the
    user's newest item in training for 8.6% of users, the second newest 5.2%); a model that reads it as a bag gives
    every position about the same share. Users with fewer than ``max(positions)`` history items are left out, so
    that every position counts the same users.

    Args:
        ranked (`Sequence[Sequence[str]]` of shape ``[num_users, >= 1]``): Per user, item ids, best first.
        histories (`Sequence[Sequence[str]]`): Per user, the history the list was ranked from, oldest first.
        followers (`Mapping[str, Set[str]]`): Each item's successors in training (:func:`training_followers`).
        positions (`Sequence[int]`, defaults to `(1, 2, 3, 4)`): Positions counted back from the newest item, >= 1.

    Returns:
        `list[float]`: one share per position.
    """
    if len(ranked) != len(histories):
        raise ValueError(f"top_item_follows_history: {len(ranked)} ranked lists for {len(histories)} histories.")
    positions = list(positions)
    if not positions or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in positions):
        raise ValueError(f"positions={positions!r} is invalid; pass integers >= 1 (1 = the newest history item).")
    hits, users = np.zeros(len(positions)), 0
    for items, history in zip(ranked, histories):
        if len(history) < max(positions) or not len(items):
            continue
        users += 1
        top = str(items[0])
        for column, position in enumerate(positions):
            hits[column] += top in followers.get(str(history[-position]), ())
    if not users:
        raise ValueError(f"No user has {max(positions)} or more history items and a non-empty list.")
    return [float(share) for share in hits / users]


def metrics_by_history_transition(
    ranked: Sequence[Sequence[str]],
    targets: Sequence[str],
    histories: Sequence[Sequence[str]],
    followers: Mapping[str, Set[str]],
    recent: int = 4,
    ks: Sequence[int] = (1, 5, 10),
) -> list[dict[str, Any]]:
    """`ranking_metrics` of three groups of users: those whose target directly follows their newest history item
    somewhere in the training sequences, those whose target follows one of the ``recent - 1`` items before it (but
    not the newest), and the rest.

    The first group is what an item-to-item model (SASRec, the successor baseline) is built for; on Amazon Beauty it
    holds all of SASRec's lead over OneRec (``docs/results.md``). ``followers``: each item's successors in training
    (:func:`training_followers`).

    Returns:
        `list[dict]`: one row per group, in that order: `group`, `users`, `share` of all users, and the group's
        `ranking_metrics` (absent for a group without users).
    """
    targets = _check_aligned(ranked, targets, "metrics_by_history_transition")
    if len(histories) != len(targets):
        raise ValueError(f"metrics_by_history_transition: {len(histories)} histories for {len(targets)} targets.")
    if isinstance(recent, bool) or not isinstance(recent, int) or recent < 2:
        raise ValueError(f"recent={recent!r} is invalid; pass an integer >= 2 (the newest item and those before it).")
    names = ("follows the newest item", f"follows one of the {recent - 1} before it only", "neither")
    members: list[list[int]] = [[], [], []]
    for user, (target, history) in enumerate(zip(targets, histories)):
        history = [str(item) for item in history]
        if history and target in followers.get(history[-1], ()):
            members[0].append(user)
        elif any(target in followers.get(item, ()) for item in history[-recent:-1]):
            members[1].append(user)
        else:
            members[2].append(user)
    rows = []
    for name, users in zip(names, members):
        row: dict[str, Any] = {
            "group": name,
            "users": len(users),
            "share": len(users) / len(targets) if targets else 0.0,
        }
        if users:
            row.update(ranking_metrics([ranked[i] for i in users], [targets[i] for i in users], ks))
        rows.append(row)
    return rows


@runtime_checkable
class Recommender(Protocol):
    """Anything `evaluate_recommender` can score.

    `rank(histories, k, exclude_history)` gets a batch of user histories (item ids, oldest first) and returns,
    per history, at most `k` distinct item ids best first. With `exclude_history=True` it must never return an
    item of that user's history (`evaluate_recommender` checks it).
    """

    def rank(self, histories: list[list[str]], k: int, exclude_history: bool) -> list[list[str]]: ...


def _sample_columns(samples: Any) -> tuple[list, list, list]:
    """`(user_ids, histories, targets)` of a `datasets.Dataset` or a list of dicts."""
    if hasattr(samples, "column_names"):
        missing = [name for name in ("history", "target") if name not in samples.column_names]
        if missing:
            raise ValueError(
                f"The samples lack column(s) {missing}; they have {samples.column_names}. Pass the "
                "validation/test split of trainers.data.build_session_samples."
            )
        table = samples.with_format("arrow")[:]  # whole columns at once (honours select()/shuffle() indices)
        histories, targets = table.column("history").to_pylist(), table.column("target").to_pylist()
        if "user_id" in table.column_names:
            return table.column("user_id").to_pylist(), histories, targets
        return list(range(len(histories))), histories, targets
    samples = list(samples)
    for position, sample in enumerate(samples):
        if not isinstance(sample, Mapping) or "history" not in sample or "target" not in sample:
            raise ValueError(
                f"Sample {position} is {sample!r}; each sample must be a dict with 'history' and 'target' "
                "(and optionally 'user_id')."
            )
    user_ids = [sample.get("user_id", position) for position, sample in enumerate(samples)]
    return user_ids, [s["history"] for s in samples], [s["target"] for s in samples]


def evaluate_recommender(
    recommender: Recommender,
    samples: Any,
    ks: Sequence[int] = (5, 10),
    *,
    exclude_history: bool,
    batch_size: int = 1024,
    progress: bool = True,
) -> tuple[dict[str, Any], list[list[str]]]:
    """Rank every sample's history with `recommender` and score the top `max(ks)` with `ranking_metrics`.

    This is the single evaluation path of the project: OneRec, TIGER-style models, SASRec and the baselines
    only differ by their `rank` method. Launched on several processes (`accelerate launch --num_processes N`,
    `torchrun`), each ranks its share of the users and every process returns all users' lists, in sample order
    (`trainers.distributed.map_across_processes`): the same metrics as one process.

    With `exclude_history=True`, items already in the user's history (the sample's `history` column, i.e. the
    newest `max_history` items the model sees) are never recommended; a recommender that returns one raises.
    The Amazon leave-one-out targets can be re-purchases of history items, so evaluate and report both
    `exclude_history=True` and `exclude_history=False`.

    Args:
        recommender (`Recommender`): Object with `rank(histories, k, exclude_history)`.
        samples (`datasets.Dataset` or `list[dict]`):
            Rows with `history` (item ids, oldest first), `target` (a one-item list or an id) and optionally
            `user_id`: e.g. `build_session_samples(splits)["test"]`.
        ks (`Sequence[int]`, defaults to `(5, 10)`): Cut-offs; lists of length `max(ks)` are requested.
        exclude_history (`bool`): Whether history items are excluded from the recommendations (required: say
            which protocol a number uses).
        batch_size (`int`, defaults to 1024): Histories per `rank` call.
        progress (`bool`, defaults to `True`): Show a tqdm bar over batches.

    Returns:
        `(metrics, ranked)`: `metrics` holds `recall@k`, `ndcg@k` (see `ranking_metrics`), `num_users`,
        `exclude_history` and `max_k`; `ranked` the top-`max(ks)` item ids per sample, in sample order.
    """
    ks = _check_ks(ks)
    if not callable(getattr(recommender, "rank", None)):
        raise TypeError(f"{type(recommender).__name__} has no rank(histories, k, exclude_history) method.")
    _, histories, targets = _sample_columns(samples)
    max_k = ks[-1]
    name = type(recommender).__name__

    def rank_batch(batch: list[tuple[int, list[str]]]) -> list[list[str]]:
        lists = recommender.rank([history for _, history in batch], max_k, exclude_history=exclude_history)
        if len(lists) != len(batch):
            raise ValueError(f"{name}.rank returned {len(lists)} lists for {len(batch)} histories.")
        ranked_batch = []
        for (user, history), items in zip(batch, lists):
            items = [str(item) for item in items[:max_k]]
            if exclude_history:
                leaked = set(items) & set(history)
                if leaked:
                    raise ValueError(
                        f"{name}.rank recommended history item(s) {sorted(leaked)[:5]} to user {user} although "
                        "exclude_history=True."
                    )
            ranked_batch.append(items)
        return ranked_batch

    # Under `accelerate launch` / `torchrun` each process ranks its share of the users (trainers.distributed).
    rows = [(user, [str(item) for item in history]) for user, history in enumerate(histories)]
    ranked = map_across_processes(rank_batch, rows, batch_size, progress=progress, description=f"ranking ({name})")
    metrics: dict[str, Any] = ranking_metrics(ranked, targets, ks)
    metrics.update(num_users=len(ranked), exclude_history=bool(exclude_history), max_k=max_k)
    return metrics, ranked


def write_topk_json(path: str | Path, user_ids: Sequence[Any], ranked: Sequence[Sequence[str]], k: int = 10) -> Path:
    """Write `{user_id: [item_id, ...]}` (the first `k` items per user, original dataset ids) as JSON.

    Args:
        path (`str` or `Path`): Output file (parent directories are created); gzip-compressed when it ends in
            `.gz` (e.g. `top10.json.gz`, for committing the predictions of every test user).
        user_ids (`Sequence`): Per ranked list, its user id (e.g. the samples' `user_id` column); unique.
        ranked (`Sequence[Sequence[str]]`): Per user, item ids best first.
        k (`int`, defaults to 10): Items kept per user.

    Returns:
        `Path` of the written file.
    """
    if len(user_ids) != len(ranked):
        raise ValueError(f"Got {len(user_ids)} user ids for {len(ranked)} ranked lists; pass one id per list.")
    if k < 1:
        raise ValueError(f"k={k!r} is invalid; pass an integer >= 1.")
    topk: dict[str, list[str]] = {}
    for user, items in zip(user_ids, ranked):
        user = str(user)
        if user in topk:
            raise ValueError(f"User id {user!r} appears twice; the JSON maps each user to one list.")
        topk[user] = [str(item) for item in items[:k]]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(topk).encode("utf-8")
    # mtime=0: the same predictions give the same bytes (a committed file changes only when the lists do).
    path.write_bytes(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
    return path


def read_topk_json(path: str | Path) -> dict[str, list[str]]:
    """Read a file written by `write_topk_json` (plain or `.gz`): `{user_id: [item_id, ...]}`."""
    path = Path(path)
    data = path.read_bytes()
    try:
        raw = json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} is not a readable top-k file ({type(error).__name__}: {error}); write it with write_topk_json."
        ) from None
    if not isinstance(raw, dict) or not all(isinstance(items, list) for items in raw.values()):
        raise ValueError(f"{path} is not a {{user_id: [item_id, ...]}} JSON object as written by write_topk_json.")
    return {str(user): [str(item) for item in items] for user, items in raw.items()}


def sample_users(samples: Any, num_users: int | None, seed: int = 0) -> Any:
    """A seeded random subset of `num_users` rows of `samples` (a `datasets.Dataset`), kept in their original order.

    Use it whenever only part of a split is scored (beam search over every test user is slow on a CPU). Never take
    the *first* rows instead: the public files list users by id, and the first users are not representative (on
    Scientific the first 300 test users give a trained OneRec Recall@10 0.020, 300 random ones 0.093).

    Args:
        samples (`datasets.Dataset`): Rows, one per user (e.g. `build_session_samples(splits)["test"]`).
        num_users (`int` or `None`): Rows to keep; `None` or at least `len(samples)` keeps every row.
        seed (`int`, defaults to 0): Seed of the draw; the same seed gives the same users for every model.

    Returns:
        `datasets.Dataset`: the chosen rows.
    """
    if num_users is None or num_users >= len(samples):
        return samples
    if isinstance(num_users, bool) or not isinstance(num_users, int) or num_users < 1:
        raise ValueError(f"num_users={num_users!r} is invalid; pass an integer >= 1, or None for every user.")
    chosen = np.sort(np.random.default_rng(seed).choice(len(samples), size=num_users, replace=False))
    return samples.select(chosen.tolist())


def held_out_sessions(validation: Any, test: Any) -> list[dict[str, Any]]:
    """Per user, the history the model trained on and the items the user consumed after it.

    Leave-one-out holds out two items per user (the validation and the test target), both unseen in training.
    Generating a session from the training history and counting how many of these two items it contains is the
    honest version of "how many of the session's items did the user really consume next" (`session_metrics`).

    Args:
        validation (`datasets.Dataset`): `build_session_samples(splits)["validation"]` (history = training part).
        test (`datasets.Dataset`): `build_session_samples(splits)["test"]` for the same users, in the same order.

    Returns:
        `list[dict]`: rows `{"user_id", "history", "target": [validation item, test item]}`.
    """
    if len(validation) != len(test):
        raise ValueError(
            f"validation has {len(validation)} users and test {len(test)}; pass the two splits of one "
            "build_session_samples(...) call."
        )
    rows = []
    for val, tst in zip(validation, test):
        if str(val["user_id"]) != str(tst["user_id"]):
            raise ValueError(
                f"User order differs between validation ({val['user_id']!r}) and test "
                f"({tst['user_id']!r}); pass the two splits of one build_session_samples(...) call."
            )
        rows.append(
            {
                "user_id": val["user_id"],
                "history": list(val["history"]),
                "target": list(val["target"]) + list(tst["target"]),
            }
        )
    return rows
