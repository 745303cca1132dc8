"""Test-wide settings: offline hub, a private HF_HOME, small shared fixtures."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Remote-code loading writes modules under HF_HOME: keep that out of the user's cache.
os.environ["HF_HOME"] = os.environ.get("ONEREC_TEST_HF_HOME") or tempfile.mkdtemp(prefix="onerec-hf-home-")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LogitsProcessor  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# Trainer arguments every training test shares: on the CPU, no logging integrations, no progress bars.
CPU_TRAINING = dict(use_cpu=True, report_to=[], disable_tqdm=True)

# MovieLens may not be redistributed, so it is never bundled: the tests that need it read the copy named by this one
# variable (docs/data_format.md). .ci/run sets it; under CI (CI set) a missing copy fails instead of skipping.
ML100K_ENV = "ONEREC_ML100K_DIR"


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The MovieLens-100K folder (RecBole atomic files ``ml-100k.inter/.item/.user``) named by ``ONEREC_ML100K_DIR``.

    Skips the test on a developer machine without a copy, and fails it under CI, where a skip would hide that the
    MovieLens tests never ran.
    """
    value = os.environ.get(ML100K_ENV, "")
    folder = Path(value).expanduser() if value else None
    if folder is None or not (folder / "ml-100k.inter").is_file():
        found = f"{ML100K_ENV}={value!r} has no ml-100k.inter" if value else f"{ML100K_ENV} is not set"
        message = (
            f"MovieLens-100K not found: {found}. Point {ML100K_ENV} at a folder with ml-100k.inter, ml-100k.item and "
            "ml-100k.user (docs/data_format.md says where to get them)."
        )
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


# Prepended to a fresh process's script: any import of this project fails, so only a saved folder's own code can load.
_BLOCK_PROJECT_IMPORTS = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tokenization_semantic_id", "modeling_onerec", "trainers"):
            raise ImportError("project import blocked: " + name)
sys.meta_path.insert(0, Block())
"""


def run_without_the_project(script: str, tmp_path) -> dict:
    """Runs ``script`` (which prints one JSON line last) in a fresh Python process that cannot import this project,
    with its own HF_HOME; returns that JSON."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _BLOCK_PROJECT_IMPORTS + textwrap.dedent(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def clustered_embeddings(num_items: int, dim: int = 16, num_centres: int = 12, seed: int = 0) -> torch.Tensor:
    """Items drawn around a few centres: structured like real embeddings, tiny like a unit test."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_centres, dim, generator=generator) * 3
    which = torch.randint(num_centres, (num_items,), generator=generator)
    return centres[which] + torch.randn(num_items, dim, generator=generator)


def semantic_id_tokenizer(item_ids, num_levels: int, codebook_size: int, seed: int = 0):
    """A ``SemanticIDTokenizer`` for ``item_ids`` by residual k-means (``num_levels`` levels of ``codebook_size`` codes)
    on ``clustered_embeddings`` drawn with ``seed``: the tests' way to get a small catalogue."""
    from tokenization_semantic_id import ResidualKMeansConfig, build_semantic_ids

    item_ids = list(item_ids)
    return build_semantic_ids(
        item_ids,
        clustered_embeddings(len(item_ids), seed=seed),
        ResidualKMeansConfig(num_levels=num_levels, codebook_size=codebook_size),
        progress=False,
    )


@pytest.fixture(scope="session")
def small_tokenizer():
    return semantic_id_tokenizer([f"item{i}" for i in range(240)], num_levels=3, codebook_size=6)


@pytest.fixture(scope="session")
def forty_item_tokenizer():
    """40 items ``i0``..``i39`` on two levels of four codes: the training tests' tokenizer."""
    return semantic_id_tokenizer([f"i{i}" for i in range(40)], num_levels=2, codebook_size=4)


def tiny_onerec(tokenizer, seed=None, **config):
    """A ``OneRecForConditionalGeneration`` of the ``tiny`` preset sized for ``tokenizer`` (``config``: more
    ``OneRecConfig.from_tokenizer`` fields, e.g. ``session_length``), in training mode as constructed.

    ``seed`` seeds torch first; with None the weights come from the global generator as it stands."""
    from modeling_onerec import OneRecConfig, OneRecForConditionalGeneration

    if seed is not None:
        torch.manual_seed(seed)
    return OneRecForConditionalGeneration(OneRecConfig.from_tokenizer(tokenizer, preset="tiny", **config))


def tiny_pretrainer(
    model,
    tokenizer,
    data_collator,
    output_dir,
    *,
    train_dataset=None,
    eval_dataset=None,
    ranking_eval_samples=None,
    callbacks=None,
    **config,
):
    """A ``OneRecPretrainer`` on the CPU (``CPU_TRAINING``) for ``model``, with ``tokenizer`` as its processing class.

    ``config``: the ``OneRecPretrainingConfig`` fields besides ``output_dir``; the config is then ``trainer.args``.
    """
    from trainers.pretraining import OneRecPretrainer, OneRecPretrainingConfig

    args = OneRecPretrainingConfig(output_dir=str(output_dir), **CPU_TRAINING, **config)
    return OneRecPretrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator,
        processing_class=tokenizer,
        ranking_eval_samples=ranking_eval_samples,
        callbacks=callbacks,
    )


def tiny_t5(vocab_size: int, seed: int = 0, **overrides):
    """A seeded one-layer ``T5ForConditionalGeneration`` in eval mode, with the tokenizer's special ids (PAD 0, EOS 1)."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = dict(
        vocab_size=vocab_size,
        d_model=32,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        d_kv=16,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        dropout_rate=0.0,
    )
    return T5ForConditionalGeneration(T5Config(**{**config, **overrides})).eval()


def every_beam(tokenizer, num_items: int, beams: int) -> dict:
    """``generate()`` arguments that return every one of ``beams`` beams, with scores, of a deterministic beam search
    long enough for a session of ``num_items`` items and its EOS."""
    return dict(
        num_beams=beams,
        num_return_sequences=beams,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        max_new_tokens=num_items * (tokenizer.num_levels + 1) + 1,
    )


class LevelLogSoftmax(LogitsProcessor):
    """A ``generate()`` logits processor: at a code position, each token of the position's level scored by the
    log-softmax of that level's slice (``-inf`` elsewhere); at a BOS/EOS position, 0 everywhere (the trie's processor
    after it keeps the one forced token). Written from the session layout ``[start] BOS c1..cL BOS ... EOS``."""

    def __init__(self, tokenizer):
        offsets = list(tokenizer.level_offsets)
        self.slices = list(zip(offsets, offsets[1:] + [tokenizer.vocab_size]))

    def __call__(self, input_ids, scores):
        within_item = (input_ids.shape[1] - 1) % (len(self.slices) + 1)  # 0: BOS or EOS comes next
        if within_item == 0:
            return torch.zeros_like(scores)
        lo, hi = self.slices[within_item - 1]
        out = torch.full_like(scores, -float("inf"))
        out[:, lo:hi] = torch.log_softmax(scores[:, lo:hi], dim=-1)
        return out


def constrained_generate(
    model,
    tokenizer,
    inputs,
    num_items,
    beams,
    forbid_repeats=True,
    exclude=None,
    length_penalty=0.0,
    renormalize_logits=False,
):
    """transformers' ``generate()`` under the tokenizer's session logits processor: every one of ``beams`` beams of
    ``num_items``-item sessions returned with its scores (the reference the native session search is tested against).
    ``renormalize_logits=False`` scores each code by its level's log-softmax (:class:`LevelLogSoftmax` before the trie's
    processor), ``True`` renormalises over the codes the trie allows (transformers' ``renormalize_logits``).
    """
    processor = tokenizer.session_logits_processor(
        num_items, forbid_repeats=forbid_repeats, exclude_items=exclude, num_beams=beams
    )
    processors = [processor] if renormalize_logits else [LevelLogSoftmax(tokenizer), processor]
    return model.generate(
        **inputs,
        **every_beam(tokenizer, num_items, beams),
        logits_processor=processors,
        renormalize_logits=renormalize_logits,
        length_penalty=length_penalty,
    )


@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib figure saved during the test, in order (the file is still written): plot tests check the data
    drawn, not just that a PNG exists."""
    from matplotlib.figure import Figure

    figures = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures
