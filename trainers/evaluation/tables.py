"""Markdown tables of ranking metrics, with the published reference rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Published full-ranking leave-one-out numbers on Amazon Beauty (TIGER paper, Table 1; `../shared/data/README.md`),
#: printed as reference rows next to our own on that dataset.
PUBLISHED_BEAUTY: dict[str, dict[str, float]] = {
    "SASRec (published)": {"recall@5": 0.0387, "ndcg@5": 0.0249, "recall@10": 0.0605, "ndcg@10": 0.0318},
    "TIGER (published)": {"recall@5": 0.0454, "ndcg@5": 0.0321, "recall@10": 0.0648, "ndcg@10": 0.0384},
}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table: `header` cells, then one line per row (cells through `str`). `align` gives one character
    per column, `"l"` or `"r"` (numbers read best right-aligned); default: all left."""
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align={align!r} needs one 'l' or 'r' per column ({len(header)} columns).")
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_table(
    rows: Iterable[tuple[Sequence[str], Mapping[str, Any]]],
    ks: Iterable[int],
    label_columns: Sequence[str] = ("model", "history"),
    references: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """A markdown table of Recall@k / NDCG@k, as the example scripts print it.

    Args:
        rows (`Iterable[tuple[Sequence[str], Mapping]]`): Per row, its text cells (one per `label_columns`) and its
            metrics (`"recall@5"`, `"ndcg@5"`, ...; other keys are ignored), e.g. from `evaluate_recommender`.
        ks (`Iterable[int]`): Cut-offs: columns Recall@k and NDCG@k for each `k`, ascending.
        label_columns (`Sequence[str]`, defaults to `("model", "history")`): Headers of the leading text columns.
        references (`Mapping[str, Mapping[str, float]]`, *optional*): Published numbers `{name: metrics}`, added
            after `rows` as rows named `name` with `-` in the other text columns.

    Returns:
        `str`: The table, metrics to 4 decimals and `-` where a row has no value.
    """
    columns = [f"{name}@{k}" for k in sorted(ks) for name in ("recall", "ndcg")]
    header = list(label_columns) + [column.replace("recall", "Recall").replace("ndcg", "NDCG") for column in columns]
    blanks = ["-"] * (len(label_columns) - 1)
    references = [([name, *blanks], metrics) for name, metrics in (references or {}).items()]
    return markdown_table(
        header,
        [
            list(labels) + [f"{metrics[column]:.4f}" if column in metrics else "-" for column in columns]
            for labels, metrics in [*rows, *references]
        ],
    )
