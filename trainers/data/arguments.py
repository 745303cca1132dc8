"""The flags the example scripts share, each defined once: the dataset (``--dataset``, ``--data_path``,
``--item_path``) and its loading, and the small groups below that several scripts take.

A script's own argument dataclass subclasses :class:`DatasetArguments` and the groups it takes, e.g.
``class EvaluateArguments(GenerativeEvaluationArguments, HistoryArguments, DatasetArguments)``, and loads with
``args.load()``. A dataclass lists inherited fields from its *last* base to its first, so ``DatasetArguments``
goes last (its three flags come first in ``--help``), then the groups, then the script's own fields. A script
whose default (or meaning) of a shared flag differs redeclares that one field with :func:`redeclare`. A group (or a
script's subclass of it) may instead be a dataclass of its own in the script's ``HfArgumentParser``, its flags then
kept together after the script's: pretrain's test evaluation, train_reward_model's sample options.

The groups, and the scripts that take them:

* :class:`UserSubsetArguments` (``--test_users``, ``--users_seed``): evaluate_alignment; extended by
  :class:`GenerativeEvaluationArguments` (+ ``--num_beams``, ``--session_eval_length``): evaluate, pretrain (its
  ``EvaluationArguments``);
* :class:`HistoryArguments` (``--max_history``): evaluate, evaluate_baselines; extended by
  :class:`SessionSampleArguments` (+ ``--session_length``): build_semantic_ids, evaluate_alignment,
  train_reward_model (its ``RewardSampleArguments``);
* :class:`ModelDirArguments` (``--model_dir``): recommend, align_ipa;
* :class:`RewardModelDirArguments` (``--reward_model_dir``): align_ipa, evaluate_alignment;
* :class:`TopKArguments` (``--ks``, ``--top_k_json``): evaluate_baselines, train_sasrec.

Every group checks its integer flags when parsed (``minimum_values``, see :class:`CheckedArguments`).
:func:`named_paths` parses the ``NAME=PATH`` lists of the evaluation scripts, :func:`named_weights` the ``NAME=WEIGHT``
lists of the alignment scripts.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

from datasets import DatasetDict

from .loaders import BUNDLED_DATASET_NAMES, NAMED_DATASETS, load_named_dataset, load_s3rec

# The names of `load_named_dataset` that read `data_path` (the other names are bundled datasets).
FILE_FORMATS: tuple[str, ...] = tuple(name for name in NAMED_DATASETS if name not in BUNDLED_DATASET_NAMES)


@dataclass
class CheckedArguments:
    """Base of the shared argument dataclasses: integer flags checked against their smallest valid value when parsed,
    before a script loads data, trains for an hour or creates its output folder.

    Each class names its own flags in ``minimum_values``; the mappings of all its bases are merged, a subclass's entry
    replacing an inherited one, so that a script lists only the flags it adds or whose minimum it changes.
    """

    minimum_values: ClassVar[Mapping[str, int]] = {}

    def __post_init__(self) -> None:
        check_minimum_values(self, inherited_minimum_values(type(self)))


def inherited_minimum_values(arguments_class: type) -> Dict[str, int]:
    """The ``minimum_values`` of ``arguments_class`` and of all its bases, a subclass's entry winning."""
    merged: Dict[str, int] = {}
    for klass in reversed(arguments_class.__mro__):
        merged.update(vars(klass).get("minimum_values", {}))
    return merged


def redeclare(arguments_class: type, name: str, *, default: Any = MISSING, help: Optional[str] = None) -> Any:
    """The shared field ``name`` of ``arguments_class`` again, with another ``default`` and/or ``help`` (the rest of its
    metadata kept), for a script whose default or meaning differs. The subclass states the type again:

        test_users: Optional[int] = redeclare(UserSubsetArguments, "test_users", default=300)

    The flag keeps its place in ``--help`` (a redeclared dataclass field stays where it was first declared).
    """
    shared = {shared_field.name: shared_field for shared_field in fields(arguments_class)}[name]
    metadata = dict(shared.metadata) if help is None else {**shared.metadata, "help": help}
    if default is MISSING and shared.default_factory is not MISSING:
        return field(default_factory=shared.default_factory, metadata=metadata)
    return field(default=shared.default if default is MISSING else default, metadata=metadata)


@dataclass
class DatasetArguments(CheckedArguments):
    """Which dataset a script reads.

    * ``dataset`` a bundled name (``beauty``, ``scientific``) and no ``data_path``: the bundled dataset;
    * ``dataset`` a file format (``ml-100k`` / ``recbole``, ``s3rec``, ``inter-json``): ``data_path`` in that
      format, with ``item_path`` as optional item metadata (``s3rec``, ``inter-json``);
    * any other ``dataset`` (a bundled name included) with a ``data_path``: an S3-Rec line file
      (``user item item ...``, time order), ``dataset`` being only its label.
    """

    dataset: str = field(
        default="beauty",
        metadata={
            "help": f"Bundled {' or '.join(repr(name) for name in BUNDLED_DATASET_NAMES)}; or a format read from "
            "--data_path: 'ml-100k' / 'recbole' (RecBole atomic files), 's3rec' ('user item item ...' lines), "
            "'inter-json' ({user: [items]} JSON); with --data_path any other name is only a label for an S3-Rec "
            "line file."
        },
    )
    data_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "Data file or folder in the --dataset format; with a bundled or label --dataset, an S3-Rec line file "
            "('user item item ...', time order) instead of the bundled dataset."
        },
    )
    item_path: Optional[str] = field(
        default=None, metadata={"help": "Optional item-metadata file (s3rec, inter-json)."}
    )

    def load(self) -> DatasetDict:
        """The dataset as the loaders return it (``"sequences"`` and ``"items"`` splits).

        Raises:
            ValueError: ``dataset`` is neither bundled nor a file format and there is no ``data_path``, or a file
                format has no ``data_path``.
        """
        if self.data_path is not None and self.dataset not in FILE_FORMATS:
            return load_s3rec(self.data_path, self.item_path)
        return load_named_dataset(self.dataset, self.data_path, self.item_path)


@dataclass
class UserSubsetArguments(CheckedArguments):
    """Which test users a script scores: a seeded random subset (:func:`trainers.evaluation.sample_users`), the same
    users in every script for the same dataset, ``--test_users`` and ``--users_seed``."""

    test_users: Optional[int] = field(
        default=None,
        metadata={
            "help": "Score a seeded random subset of N test users (None = all). The same N and --users_seed give the "
            "same users in examples/pretrain.py, evaluate.py and evaluate_alignment.py."
        },
    )
    users_seed: int = field(default=0, metadata={"help": "Seed of the test-user subset."})

    minimum_values: ClassVar[Mapping[str, int]] = {"test_users": 1}


@dataclass
class GenerativeEvaluationArguments(UserSubsetArguments):
    """How a generative model is scored on the test users: full-catalogue beam search, and the sessions it generates
    (:func:`trainers.evaluation.generative.evaluate_generative_model`)."""

    num_beams: Optional[int] = field(
        default=None,
        metadata={"help": "Beam width of the ranking beam search (default: the first level's codebook size)."},
    )
    renormalize_logits: Optional[bool] = field(
        default=None,
        metadata={
            "help": "Score each code by its probability renormalised over the trie's valid codes (true) or by the "
            "model's softmax over the code's level (false). Default: the model's generation_config."
            "renormalize_logits, which examples/pretrain.py chooses on validation users."
        },
    )
    session_eval_length: int = field(
        default=5,
        metadata={"help": "m of the generated sessions scored by the session metrics (0 = no session metrics)."},
    )

    minimum_values: ClassVar[Mapping[str, int]] = {"num_beams": 1, "session_eval_length": 0}


@dataclass
class HistoryArguments(CheckedArguments):
    """How much of a user's history each sample keeps (``build_session_samples(max_history=...)``)."""

    max_history: int = field(default=50, metadata={"help": "n: newest history items a sample keeps."})

    minimum_values: ClassVar[Mapping[str, int]] = {"max_history": 1}


@dataclass
class SessionSampleArguments(HistoryArguments):
    """History and session length of ``(history, session)`` samples."""

    session_length: int = field(default=5, metadata={"help": "m: items per session (paper: 5)."})

    minimum_values: ClassVar[Mapping[str, int]] = {"session_length": 1}


@dataclass
class ModelDirArguments(CheckedArguments):
    """A trained OneRec model to load."""

    model_dir: str = field(
        default="outputs/beauty/onerec/final",
        metadata={"help": "Folder with the model and its tokenizer (examples/pretrain.py writes <output_dir>/final)."},
    )


@dataclass
class RewardModelDirArguments(CheckedArguments):
    """A trained session reward model to load."""

    reward_model_dir: str = field(
        default="outputs/reward/ml-100k",
        metadata={"help": "Session reward model + reward_item_vocab.json (examples/train_reward_model.py)."},
    )


@dataclass
class TopKArguments(CheckedArguments):
    """The cut-offs of the ranking metrics and the length of the written top-k lists."""

    ks: List[int] = field(default_factory=lambda: [5, 10], metadata={"help": "Cut-offs of Recall/NDCG."})
    top_k_json: int = field(default=10, metadata={"help": "Items per user in the written top-k JSON files."})

    minimum_values: ClassVar[Mapping[str, int]] = {"top_k_json": 1}


def check_minimum_values(arguments, minimum_values: Mapping[str, int]) -> None:
    """Raise a ``ValueError`` naming the flag when an integer field of ``arguments`` is below its minimum.

    ``None`` passes (optional flags left unset); a non-integer (a float, a bool) is an error.
    """
    for name, minimum in minimum_values.items():
        value = getattr(arguments, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"--{name} {value!r} is invalid; pass an integer >= {minimum}.")


def check_local_dir(path: str, option: str) -> str:
    """``path`` if it is a directory, or if it can only be a Hub repo id (``org/name`` whose first part is no local
    folder); a missing local directory is a ``FileNotFoundError`` naming ``option`` (transformers would report it as
    a malformed Hub repo id)."""
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        return path
    first = Path(path).parts[0] if Path(path).parts else path
    looks_local = path.startswith(("/", ".", "~")) or Path(first).exists() or len(Path(path).parts) != 2
    if looks_local:
        raise FileNotFoundError(
            f"{option} {path}: no such directory. Pass the folder a run saved (e.g. outputs/run/final for "
            "examples/pretrain.py, the tokenizer folder of examples/build_semantic_ids.py)."
        )
    return path


def named_weights(values: Sequence[str], option: str) -> Optional[Dict[str, float]]:
    """``["liked=1", "engaged=0.5"]`` -> ``{"liked": 1.0, "engaged": 0.5}`` (``None`` for an empty list: the default
    weights). Raises ``ValueError`` naming ``option`` for a value that is not ``NAME=NUMBER``."""
    if not values:
        return None
    weights = {}
    for value in values:
        name, sep, number = value.partition("=")
        try:
            weights[name] = float(number)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ValueError(f"{option} expects NAME=WEIGHT, got {value!r}; e.g. {option} liked=1 engaged=1")
    return weights


def named_paths(values: Sequence[str], option: str) -> List[Tuple[str, Path]]:
    """``["OneRec=outputs/run/final", ...]`` -> ``[("OneRec", Path("outputs/run/final")), ...]``.

    Raises:
        ValueError: a value is not ``NAME=PATH``.
        FileNotFoundError: a path does not exist (also what a ``=`` inside NAME looks like); names ``option``.
    """
    pairs = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{option} expects NAME=PATH, got {value!r}; e.g. {option} OneRec=outputs/run/final")
        if not Path(path).exists():
            raise FileNotFoundError(f"{option} {value!r}: {path} does not exist (NAME may not contain '=').")
        pairs.append((name, Path(path)))
    return pairs
