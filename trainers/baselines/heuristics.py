"""Non-neural baselines scored through `trainers.evaluation.evaluate_recommender`.

- `MostPopularRecommender`: items by number of training interactions;
- `SuccessorRecommender`: item-to-item transitions counted in the other users' TRAINING sequences, queried
  with the user's last few items, topped up with popularity (a strong baseline on the Amazon leave-one-out
  benchmarks, where the next purchase often follows the previous one in other users' logs);
- `tune_successor`: picks the successor hyper-parameters by a small grid on the VALIDATION split.

Both recommenders are fit on the `train` split of `trainers.data.leave_one_out_split` (each sequence without
its last two items), so validation and test targets never enter their counts; validation/test histories are
only used as queries. Scoring is vectorised: a batch of histories becomes a sparse `(batch, |V|)` query matrix
multiplied by the sparse `(|V|, |V|)` transition matrix; the top-k are then picked from the non-zero scores
and filled from the global popularity order, without a dense `(batch, |V|)` sort.

Ranking order (both models, deterministic): items with a positive successor score first, by decreasing score;
then the rest by decreasing training popularity; ties by position in the catalogue.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..data import index_items
from ..evaluation import evaluate_recommender

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SUCCESSOR_GRID", "MostPopularRecommender", "SuccessorRecommender", "tune_successor"]

#: Default grid of `tune_successor`: (1 + 2 windows x 3 decays) x 4 gaps = 28 runs (window 1 ignores the decay).
DEFAULT_SUCCESSOR_GRID = {"window": (1, 3, 5), "decay": (0.3, 0.5, 0.8), "max_gap": (1, 2, 4, 8)}


def _training_rows(train_sequences: Any) -> list[list[str]]:
    """Item-id lists of the training split: a `Dataset` with `item_ids` or a sequence of id sequences."""
    if isinstance(train_sequences, dict):  # a DatasetDict (or a plain dict of splits)
        raise TypeError(
            "Got a DatasetDict; fit baselines on its training split only: pass splits['train'] (the output of "
            "leave_one_out_split), never the validation/test rows."
        )
    if hasattr(train_sequences, "column_names"):
        if "item_ids" not in train_sequences.column_names:
            raise ValueError(
                f"The training dataset has columns {train_sequences.column_names}; pass splits['train'] of "
                "leave_one_out_split (user sequences with an 'item_ids' column), not session samples."
            )
        rows = train_sequences.with_format("arrow")[:].column("item_ids").to_pylist()
    else:
        rows = train_sequences
    rows = [[str(item) for item in row] for row in rows]
    if not any(rows):
        raise ValueError("The training sequences hold no interaction; nothing to fit.")
    return rows


def _catalogue_ids(catalogue: Any, rows: list[list[str]]) -> list[str]:
    if catalogue is None:
        from ..data import natural_order

        return natural_order({item for row in rows for item in row})
    if hasattr(catalogue, "column_names"):
        catalogue = catalogue.with_format("arrow")[:].column("item_id").to_pylist()
    ids = [str(item) for item in catalogue]
    if len(set(ids)) != len(ids):
        raise ValueError("The catalogue lists some item ids more than once; pass each recommendable item once.")
    known = set(ids)
    unknown = sorted({item for row in rows for item in row if item not in known})
    if unknown:
        raise ValueError(
            f"{len(unknown)} training item(s) are missing from the catalogue, e.g. {unknown[:5]}; pass the full "
            "catalogue (e.g. dataset['items']['item_id'])."
        )
    return ids


class _SparseScoringRecommender:
    """Shared fitting (catalogue, popularity) and top-k selection of the baselines."""

    def __init__(self, train_sequences: Any, catalogue: Any = None):
        rows = _training_rows(train_sequences)
        self.item_ids = _catalogue_ids(catalogue, rows)
        self._item_array = np.asarray(self.item_ids, dtype=object)
        self.item_index = index_items(self.item_ids)
        lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
        self._flat = np.fromiter(
            (self.item_index[item] for row in rows for item in row), dtype=np.int64, count=int(lengths.sum())
        )
        self._row_of = np.repeat(np.arange(len(rows)), lengths)
        #: Training interactions per item, shape `(num_items,)`.
        self.popularity = np.bincount(self._flat, minlength=self.num_items).astype(np.int64)
        #: Item indices by decreasing popularity (ties: catalogue order).
        self.popularity_order = np.argsort(-self.popularity, kind="stable")
        self.popularity_position = np.empty(self.num_items, dtype=np.int64)
        self.popularity_position[self.popularity_order] = np.arange(self.num_items)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def _encode(self, histories: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(rows, items, positions_from_end)` of the known history items (unknown ids are ignored)."""
        rows, items, from_end = [], [], []
        index = self.item_index
        for row, history in enumerate(histories):
            known = [index[item] for item in map(str, history) if item in index]
            rows.extend([row] * len(known))
            items.extend(known)
            from_end.extend(range(len(known) - 1, -1, -1))
        return (
            np.asarray(rows, dtype=np.int64),
            np.asarray(items, dtype=np.int64),
            np.asarray(from_end, dtype=np.int64),
        )

    def _scores(self, rows: np.ndarray, items: np.ndarray, from_end: np.ndarray, batch: int) -> sp.csr_matrix | None:
        """Sparse `(batch, num_items)` candidate scores; `None` for popularity only."""
        return None

    def rank(self, histories: list[list[str]], k: int, exclude_history: bool) -> list[list[str]]:
        """Top-`k` item ids per history, best first (see the module docstring for the order).

        Args:
            histories (`list[list[str]]`): Item ids per user, oldest first; ids outside the catalogue are ignored.
            k (`int`): Items per list (fewer only when the catalogue minus the history is smaller).
            exclude_history (`bool`): Never recommend an item of the user's history.

        Returns:
            `list[list[str]]`: one list per history.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k={k!r} is invalid; pass an integer >= 1.")
        batch = len(histories)
        if batch == 0:
            return []
        rows, items, from_end = self._encode(histories)
        blocked = None
        if exclude_history:
            blocked = sp.csr_matrix((np.ones(len(rows)), (rows, items)), shape=(batch, self.num_items))
            blocked.data[:] = 1.0  # repeated history items were summed
        selected = self._select(self._scores(rows, items, from_end, batch), blocked, int(k), batch)
        if (selected >= 0).all():
            return self._item_array[selected].tolist()
        return [[self.item_ids[i] for i in row if i >= 0] for row in selected]

    def _select(self, scores: sp.csr_matrix | None, blocked: sp.csr_matrix | None, k: int, batch: int) -> np.ndarray:
        """Item indices `(batch, k)` (`-1` pads): positive scores first, then popularity, skipping `blocked`."""
        selected = np.full((batch, k), -1, dtype=np.int64)
        chosen_rows = chosen_items = np.zeros(0, dtype=np.int64)
        if scores is not None and scores.nnz:
            if blocked is not None:
                scores = scores - scores.multiply(blocked)
                scores.eliminate_zeros()
            scores = scores.tocoo()
            rows, items, values = scores.row.astype(np.int64), scores.col.astype(np.int64), scores.data
            counts = np.bincount(rows, minlength=batch)
            if len(values) > 4 * k * batch:
                # Prune first (one single-key sort instead of a 3-key sort of every score): keep each row's
                # entries at or above its k-th largest score; a few ulps of slack keep every tie.
                span = 2.0 * float(values.max()) + 1.0
                keys = rows * span - values
                order = np.argsort(keys)
                first = np.concatenate([[0], np.cumsum(counts)[:-1]])
                threshold = np.full(batch, -np.inf)
                full = counts >= k
                threshold[full] = values[order[first[full] + k - 1]]
                keep = values >= threshold[rows] - 64 * np.spacing(np.abs(keys).max())
                rows, items, values = rows[keep], items[keep], values[keep]
                counts = np.bincount(rows, minlength=batch)
            order = np.lexsort((self.popularity_position[items], -values, rows))
            rows, items = rows[order], items[order]
            first = np.concatenate([[0], np.cumsum(counts)[:-1]])
            slot = np.arange(len(rows)) - first[rows]
            keep = slot < k
            chosen_rows, chosen_items = rows[keep], items[keep]
            selected[chosen_rows, slot[keep]] = chosen_items
        num_chosen = np.bincount(chosen_rows, minlength=batch)
        need = k - num_chosen
        if not need.any():
            return selected
        num_blocked = num_chosen + (np.diff(blocked.indptr) if blocked is not None else 0)
        width = int(min(self.num_items, k + num_blocked.max()))
        candidates = self.popularity_order[:width]
        unavailable = np.zeros((batch, width), dtype=bool)
        if blocked is not None:
            unavailable |= blocked[:, candidates].toarray() > 0
        position = self.popularity_position[chosen_items]
        inside = position < width
        unavailable[chosen_rows[inside], position[inside]] = True
        available = ~unavailable
        running = np.cumsum(available, axis=1)
        take = available & (running <= need[:, None])
        rows, columns = np.nonzero(take)
        selected[rows, num_chosen[rows] + running[rows, columns] - 1] = candidates[columns]
        return selected


class MostPopularRecommender(_SparseScoringRecommender):
    """Recommends the items with the most training interactions (ties: catalogue order).

    Args:
        train_sequences (`Dataset` or `Sequence[Sequence[str]]`):
            The `train` split of `leave_one_out_split` (or its `item_ids` lists). Never pass validation/test
            rows: their last items are the held-out targets.
        catalogue (`Sequence[str]` or `Dataset` with `item_id`, *optional*):
            Recommendable items (full ranking: `dataset["items"]`); defaults to the training items. Items
            without training interactions rank last.
    """

    def __repr__(self) -> str:
        return f"MostPopularRecommender(num_items={self.num_items}, interactions={int(self.popularity.sum())})"


class SuccessorRecommender(_SparseScoringRecommender):
    """Scores items by how often they followed the user's last items in other users' training sequences.

    Fitting builds the sparse transition matrix `T` (`|V| x |V|`): for every training sequence `s` and every
    pair of positions `i < j` with `j - i = g <= max_gap`, `T[s_i, s_j] += 1 / g` (`max_gap=1`: immediate
    successors only). With `normalize=True` every row is divided by its sum (each history item then
    contributes a distribution over successors instead of raw counts).

    Querying a history `h` (oldest first, ids outside the catalogue dropped) weights its last `window` items,
    the newest most: `q[h_{-1-j}] += decay ** j` for `j < window`; the score of item `c` is `(q @ T)[c]`.
    Items with a positive score come first by decreasing score; the list is filled with the most popular
    training items (ties in score are broken by popularity, then catalogue order).

    Args:
        train_sequences (`Dataset` or `Sequence[Sequence[str]]`):
            The `train` split of `leave_one_out_split`: only these transitions are counted, so validation and
            test targets never leak in. Validation/test histories are only queries.
        window (`int`, defaults to 3): Newest history items used as the query.
        decay (`float`, defaults to 0.6): Weight ratio between consecutive query items (`0 < decay <= 1`).
        max_gap (`int`, defaults to 1): Largest distance `g` of a counted (item, successor) pair.
        normalize (`bool`, defaults to `False`): Row-normalise `T`.
        catalogue (`Sequence[str]` or `Dataset` with `item_id`, *optional*): Recommendable items (defaults to
            the training items).
    """

    def __init__(
        self,
        train_sequences: Any,
        window: int = 3,
        decay: float = 0.6,
        max_gap: int = 1,
        normalize: bool = False,
        catalogue: Any = None,
    ):
        for name, value in (("window", window), ("max_gap", max_gap)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid; pass an integer >= 1.")
        if not 0 < float(decay) <= 1:
            raise ValueError(f"decay={decay!r} is invalid; pass a number in (0, 1].")
        super().__init__(train_sequences, catalogue)
        self.window, self.decay, self.max_gap, self.normalize = int(window), float(decay), int(max_gap), bool(normalize)
        self.transitions = self._transition_matrix()

    def _transition_matrix(self) -> sp.csr_matrix:
        flat, row_of = self._flat, self._row_of
        sources, targets, weights = [], [], []
        for gap in range(1, self.max_gap + 1):
            same_row = np.flatnonzero(row_of[gap:] == row_of[:-gap]) if len(flat) > gap else np.zeros(0, np.int64)
            sources.append(flat[same_row])
            targets.append(flat[same_row + gap])
            weights.append(np.full(len(same_row), 1.0 / gap))
        matrix = sp.csr_matrix(
            (np.concatenate(weights), (np.concatenate(sources), np.concatenate(targets))),
            shape=(self.num_items, self.num_items),
        )
        matrix.sum_duplicates()
        if self.normalize:
            sums = np.asarray(matrix.sum(axis=1)).ravel()
            matrix = sp.csr_matrix(sp.diags(np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)) @ matrix)
        return matrix

    def with_query(self, window: int | None = None, decay: float | None = None) -> SuccessorRecommender:
        """A copy sharing the fitted matrices with other query parameters (cheap; used by `tune_successor`)."""
        clone = copy.copy(self)
        if window is not None:
            if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
                raise ValueError(f"window={window!r} is invalid; pass an integer >= 1.")
            clone.window = int(window)
        if decay is not None:
            if not 0 < float(decay) <= 1:
                raise ValueError(f"decay={decay!r} is invalid; pass a number in (0, 1].")
            clone.decay = float(decay)
        return clone

    @property
    def params(self) -> dict[str, Any]:
        return {"window": self.window, "decay": self.decay, "max_gap": self.max_gap, "normalize": self.normalize}

    def _scores(self, rows, items, from_end, batch):
        used = from_end < self.window
        query = sp.csr_matrix(
            (self.decay ** from_end[used].astype(np.float64), (rows[used], items[used])),
            shape=(batch, self.num_items),
        )
        return sp.csr_matrix(query @ self.transitions)

    def __repr__(self) -> str:
        params = ", ".join(f"{name}={value}" for name, value in self.params.items())
        return f"SuccessorRecommender({params}, num_items={self.num_items}, transitions={self.transitions.nnz})"


def tune_successor(
    train_sequences: Any,
    validation_samples: Any,
    *,
    exclude_history: bool,
    catalogue: Any = None,
    grid: dict[str, Sequence[Any]] | None = None,
    metric: str = "ndcg@10",
    ks: Sequence[int] = (5, 10),
    batch_size: int = 2048,
    progress: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Choose `SuccessorRecommender` hyper-parameters on the VALIDATION split by grid search.

    Every combination of `grid` (keys `window`, `decay`, `max_gap` and optionally `normalize`; missing keys take
    `DEFAULT_SUCCESSOR_GRID` / `False`) is fit on `train_sequences` and scored with `evaluate_recommender` on
    `validation_samples`; the best `metric` wins (ties: the earlier, simpler combination in grid order). With
    `window=1` the decay has no effect, so only the first decay of the grid is run for it. The test split is
    never touched.

    Args:
        train_sequences: The `train` split of `leave_one_out_split`.
        validation_samples: `build_session_samples(splits)["validation"]` (history = training part, target =
            the second-last item).
        exclude_history (`bool`): The protocol to tune for (tune once per reported setting).
        catalogue: Recommendable items (see `SuccessorRecommender`).
        grid (`dict[str, Sequence]`, *optional*): Values per hyper-parameter.
        metric (`str`, defaults to `"ndcg@10"`): Selection metric, a key of `ranking_metrics`.
        ks, batch_size, progress: Passed to `evaluate_recommender`.

    Returns:
        `(best_params, table)`: the chosen `window`, `decay`, `max_gap`, `normalize`; and one row per evaluated
        combination with its parameters, validation metrics and seconds, in grid order.
    """
    grid = {**DEFAULT_SUCCESSOR_GRID, "normalize": (False,), **(grid or {})}
    unknown = set(grid) - {"window", "decay", "max_gap", "normalize"}
    if unknown:
        raise ValueError(f"Unknown grid key(s) {sorted(unknown)}; use window, decay, max_gap, normalize.")
    if f"{metric}" not in {f"{name}@{k}" for name in ("recall", "ndcg") for k in ks}:
        raise ValueError(f"metric={metric!r} is not computed with ks={tuple(ks)}; use e.g. 'ndcg@{max(ks)}'.")
    rows = _training_rows(train_sequences)
    table: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any]] | None = None
    for max_gap, normalize in itertools.product(grid["max_gap"], grid["normalize"]):
        fitted = SuccessorRecommender(
            rows, window=1, decay=1.0, max_gap=max_gap, normalize=normalize, catalogue=catalogue
        )
        for window in grid["window"]:
            for decay in grid["decay"][:1] if window == 1 else grid["decay"]:
                recommender = fitted.with_query(window=window, decay=decay)
                start = time.perf_counter()
                metrics, _ = evaluate_recommender(
                    recommender,
                    validation_samples,
                    ks,
                    exclude_history=exclude_history,
                    batch_size=batch_size,
                    progress=progress,
                )
                row = {
                    **recommender.params,
                    **{name: metrics[name] for name in metrics if "@" in name},
                    "seconds": time.perf_counter() - start,
                }
                table.append(row)
                logger.info("successor %s: validation %s=%.4f", recommender.params, metric, metrics[metric])
                if best is None or metrics[metric] > best[0]:
                    best = (metrics[metric], recommender.params)
    return dict(best[1]), table
