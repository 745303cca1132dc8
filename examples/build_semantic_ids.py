"""Stage 1 of the OneRec pipeline: a real catalogue -> balanced semantic IDs.

Loads a dataset, splits it leave-one-out, builds item embeddings (text and/or collaborative signal
from TRAINING interactions only), learns balanced residual k-means codebooks (paper Algorithm 1) or
another quantizer (``--quantizer rkmeans | rqvae | opq``), resolves collisions, saves a ``SemanticIDTokenizer``
and prints / saves its statistics and plots.

    python examples/build_semantic_ids.py --dataset beauty --output_dir outputs/beauty
    python examples/build_semantic_ids.py --dataset scientific --compare_unbalanced
    python examples/build_semantic_ids.py --dataset beauty --compare_quantizers rkmeans rqvae opq
    python examples/build_semantic_ids.py --dataset ml-100k --data_path "$ONEREC_ML100K_DIR"
    python examples/build_semantic_ids.py --dataset s3rec --data_path my_log.txt --embedding_source collaborative
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from transformers import HfArgumentParser

from tokenization_semantic_id import (
    QUANTIZERS,
    ItemEmbeddingConfig,
    build_item_embeddings,
    build_semantic_ids,
    plot_codebook_report,
    plot_quantizer_comparison,
    quantizer_config,
    quantizer_statistics,
)
from trainers.data import build_session_samples, describe, leave_one_out_split
from trainers.data.arguments import DatasetArguments, SessionSampleArguments
from trainers.evaluation import markdown_table

logger = logging.getLogger("build_semantic_ids")


@dataclass
class DataArguments(SessionSampleArguments, DatasetArguments):
    """The dataset and its session samples (``--max_history`` is also the tokenizer's ``max_history_items``)."""


@dataclass
class SemanticIDArguments:
    num_levels: int = field(default=3, metadata={"help": "L, residual levels."})
    codebook_size: int = field(default=256, metadata={"help": "K, codes per level."})
    balanced: bool = field(default=True, metadata={"help": "Balanced k-means (Algorithm 1); False = plain k-means."})
    max_iterations: int = field(default=30, metadata={"help": "Assignment sweeps per level at most."})
    seed: int = field(default=0, metadata={"help": "Seed of the centroid initialisation."})
    disambiguation_size: Optional[int] = field(
        default=None,
        metadata={"help": "Codes of the collision level; default: automatic (only when items collide, with headroom)."},
    )
    compare_unbalanced: bool = field(
        default=False, metadata={"help": "Also fit plain residual k-means and report / plot both side by side."}
    )
    device: Optional[str] = field(default=None, metadata={"help": "cuda / cpu (default: cuda when available)."})
    quantizer: Optional[str] = field(
        default=None,
        metadata={
            "help": f"Quantizer of the saved tokenizer: {' | '.join(QUANTIZERS)} (default: balanced_rkmeans, or "
            "rkmeans with --balanced false)."
        },
    )
    compare_quantizers: List[str] = field(
        default_factory=list,
        metadata={"help": "Also fit these quantizers; report them and plot them in quantizer_comparison.png."},
    )
    kmeans_backend: str = field(default="torch", metadata={"help": "rkmeans only: torch | faiss (as peers run it)."})
    rqvae_hidden_sizes: List[int] = field(default_factory=lambda: [512, 256, 128], metadata={"help": "RQ-VAE MLP."})
    rqvae_latent_dim: int = field(default=32, metadata={"help": "RQ-VAE latent width."})
    rqvae_num_steps: int = field(default=3000, metadata={"help": "RQ-VAE optimizer steps."})
    rqvae_batch_size: int = field(default=1024, metadata={"help": "RQ-VAE items per step."})
    rqvae_learning_rate: float = field(default=1e-3, metadata={"help": "RQ-VAE step size (Adam)."})
    opq_rotation: bool = field(default=True, metadata={"help": "OPQ's learned rotation (false: plain PQ)."})

    def quantizer_names(self) -> List[str]:
        """The quantizers to fit, the saved one first; a ValueError for an unknown or contradictory choice."""
        main = self.quantizer or ("balanced_rkmeans" if self.balanced else "rkmeans")
        if self.quantizer is not None and not self.balanced and self.quantizer != "rkmeans":
            raise ValueError(
                f"--balanced false means --quantizer rkmeans; it contradicts --quantizer {self.quantizer}."
            )
        names = [main] + (["rkmeans"] if self.compare_unbalanced and main == "balanced_rkmeans" else [])
        names += [name for name in self.compare_quantizers if name not in names]
        unknown = [name for name in names if name not in QUANTIZERS]
        if unknown:
            raise ValueError(f"Unknown quantizer {unknown[0]!r}; choose from {', '.join(QUANTIZERS)}.")
        return names

    def config(self, name: str):
        """The config of quantizer ``name`` from these flags."""
        common = dict(num_levels=self.num_levels, codebook_size=self.codebook_size, seed=self.seed)
        if name == "rqvae":
            return quantizer_config(
                name,
                **common,
                hidden_sizes=tuple(self.rqvae_hidden_sizes),
                latent_dim=self.rqvae_latent_dim,
                num_steps=self.rqvae_num_steps,
                batch_size=self.rqvae_batch_size,
                learning_rate=self.rqvae_learning_rate,
                device=self.device,
            )
        if name == "opq":
            return quantizer_config(name, **common, rotation=self.opq_rotation)
        backend = self.kmeans_backend if name == "rkmeans" else "torch"
        return quantizer_config(name, **common, max_iterations=self.max_iterations, device=self.device, backend=backend)


@dataclass
class EmbeddingArguments:
    embedding_source: str = field(default="concat", metadata={"help": "text | collaborative | array | concat."})
    concat_sources: List[str] = field(default_factory=lambda: ["text", "collaborative"])
    collaborative_dim: int = field(default=64)
    embedding_array: Optional[str] = field(default=None, metadata={"help": ".npy/.pt/.safetensors for 'array'."})


@dataclass
class RunArguments:
    output_dir: str = field(default="outputs/beauty", metadata={"help": "Where the tokenizer and reports go."})


def format_table(rows: List[dict], num_semantic_levels: int) -> str:
    header = ["variant", "level", "used / K", "smallest", "largest", "std", "collisions before", "after", "build s"]
    table = []
    for row in rows:
        stats, name = row["stats"], row["name"]
        for level in stats["levels"]:
            table.append(
                [
                    name,
                    f"{level['level'] + 1}{' (collisions)' if level['level'] >= num_semantic_levels else ''}",
                    f"{level['used_codes']} / {level['codebook_size']}",
                    level["min_cluster"],
                    level["max_cluster"],
                    f"{level['std_cluster']:.1f}",
                    f"{100 * stats['collision_rate_before']:.2f}%",
                    f"{100 * stats['collision_rate_after']:.2f}%",
                    f"{row['seconds']:.1f}",
                ]
            )
    return markdown_table(header, table)


def format_quantizer_table(rows: List[dict]) -> str:
    """One row per variant: its quantizer, codes used per level, spread, collisions and reconstruction error."""
    header = ["variant", "quantizer", "codes used per level", "std / mean per level", "items sharing a code"]
    header += ["relative reconstruction error", "build s"]
    table = []
    for row in rows:
        stats = row["stats"]
        levels = stats["levels"][: stats["num_semantic_levels"]]
        table.append(
            [
                row["name"],
                row["quantizer"],
                " / ".join(str(level["used_codes"]) for level in levels),
                " / ".join(f"{level['cv_cluster']:.2f}" for level in levels),
                f"{stats['colliding_items_before']} ({100 * stats['collision_rate_before']:.2f}%)",
                f"{stats['reconstruction']['relative_error']:.4f}",
                f"{row['seconds']:.1f}",
            ]
        )
    return markdown_table(header, table)


def main(argv=None) -> dict:
    parser = HfArgumentParser((DataArguments, SemanticIDArguments, EmbeddingArguments, RunArguments))
    data_args, sid_args, emb_args, run_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output_dir = Path(run_args.output_dir)
    # Every setting is checked before the data is read (and the text model run for minutes).
    names = sid_args.quantizer_names()
    # The k-means flags alone (no --quantizer / --compare_quantizers) keep their variant names.
    legacy = sid_args.quantizer is None and not sid_args.compare_quantizers
    display = {"balanced_rkmeans": "balanced", "rkmeans": "unbalanced"} if legacy else {}
    quantizer_configs = {display.get(name, name): sid_args.config(name) for name in names}
    embedding_config = ItemEmbeddingConfig(
        source=emb_args.embedding_source,
        concat_sources=tuple(emb_args.concat_sources),
        collaborative_dim=emb_args.collaborative_dim,
        array_path=emb_args.embedding_array,
        cache_dir=str(output_dir / "embedding_cache"),
        seed=sid_args.seed,
        device=sid_args.device,
    )

    data = data_args.load()
    splits = leave_one_out_split(data["sequences"])
    samples = build_session_samples(splits, max_history=data_args.max_history, session_length=data_args.session_length)
    summary = describe(data)
    logger.info("dataset %s: %s", data_args.dataset, summary)
    logger.info("session samples: %s", {name: len(split) for name, split in samples.items()})

    items = data["items"]
    item_ids = list(items["item_id"])
    start = time.perf_counter()
    # Only the training part of each sequence feeds the collaborative signal: no validation/test leakage.
    embeddings = build_item_embeddings(
        embedding_config, item_ids, texts=list(items["text"]), train_sequences=list(splits["train"]["item_ids"])
    )
    embedding_seconds = time.perf_counter() - start
    logger.info("item embeddings %s in %.1fs", tuple(embeddings.shape), embedding_seconds)

    rows, tokenizers = [], {}
    for name, config in quantizer_configs.items():
        start = time.perf_counter()
        tokenizer = build_semantic_ids(
            item_ids,
            embeddings,
            config,
            disambiguation_size=sid_args.disambiguation_size,
            max_history_items=data_args.max_history,
            extra_build_info={
                "dataset": data_args.dataset,
                "embedding": embedding_config.__dict__ | {"concat_sources": list(embedding_config.concat_sources)},
            },
        )
        seconds = time.perf_counter() - start
        tokenizers[name] = tokenizer
        rows.append(
            {
                "name": name,
                "seconds": seconds,
                "quantizer": tokenizer.quantizer_type,
                "stats": quantizer_statistics(tokenizer),
                "collisions": tokenizer.build_info["collisions"],
                "levels": tokenizer.build_info.get("levels"),
                "fit": tokenizer.build_info.get("fit"),
            }
        )

    main_name = next(iter(quantizer_configs))
    tokenizer = tokenizers[main_name]
    tokenizer.save_pretrained(output_dir / "tokenizer")
    plot_path = plot_codebook_report(
        {r["name"]: r["stats"] for r in rows},
        {name: tok.item_codes for name, tok in tokenizers.items()},
        output_dir / "codebook_balance.png",
        title=f"{data_args.dataset}: {len(item_ids)} items, {sid_args.num_levels} x {sid_args.codebook_size}",
    )
    comparison_path = plot_quantizer_comparison(
        {r["name"]: r["stats"] for r in rows},
        output_dir / "quantizer_comparison.png",
        title=f"{data_args.dataset}: {len(item_ids)} items, {sid_args.num_levels} x {sid_args.codebook_size}",
    )
    # A sanity check that the saved tokenizer encodes a real sample end to end.
    example = samples["test"][0]
    history_tokens = tokenizer.encode_history(example["history"])
    report = {
        "dataset": summary,
        "samples": {n: len(s) for n, s in samples.items()},
        "embedding_shape": list(embeddings.shape),
        "embedding_seconds": embedding_seconds,
        "variants": rows,
        "example": {"user_id": example["user_id"], "history_tokens": len(history_tokens), "target": example["target"]},
    }
    (output_dir / "semantic_id_report.json").write_text(json.dumps(report, indent=2, default=str))
    table = format_table(rows, sid_args.num_levels) + "\n\n" + format_quantizer_table(rows)
    print(
        f"\nSemantic IDs for {data_args.dataset}: {len(item_ids)} items, embeddings {tuple(embeddings.shape)} "
        f"({embedding_config.source}), {sid_args.num_levels} x {sid_args.codebook_size} codes"
    )
    print(table)
    for row in rows:
        c = row["collisions"]
        fit = (
            f"k-means sweeps per level {[lvl['iterations'] for lvl in row['levels']]}"
            if row["levels"]
            else f"fit {json.dumps({k: v for k, v in row['fit'].items() if k != 'loss_curve'})}"
        )
        print(
            f"{row['name']}: {c['colliding_items']} colliding items ({100 * c['collision_rate']:.2f}%), largest "
            f"group {c['max_group_size']}, disambiguation level of {c['disambiguation_size']} codes; {fit}"
        )
    print(
        f"tokenizer -> {output_dir / 'tokenizer'}\nplot -> {plot_path}\ncomparison -> {comparison_path}\n"
        f"report -> {output_dir / 'semantic_id_report.json'}"
    )
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
