"""The dataset flags the example scripts share (``--dataset``, ``--data_path``, ``--item_path``) and their loading.

A script's own argument dataclass subclasses :class:`DatasetArguments` (so that the three flags come first in
``--help``) and loads with ``args.load()``. :func:`named_paths` parses the ``NAME=PATH`` lists of the evaluation
scripts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, List, Mapping, Optional, Sequence, Tuple

from datasets import DatasetDict

from .loaders import BUNDLED_DATASET_NAMES, NAMED_DATASETS, load_named_dataset, load_s3rec

# The names of `load_named_dataset` that read `data_path` (the other names are bundled datasets).
FILE_FORMATS: tuple[str, ...] = tuple(name for name in NAMED_DATASETS if name not in BUNDLED_DATASET_NAMES)


@dataclass
class DatasetArguments:
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
    # A subclass's integer flags and their smallest valid value, checked when the arguments are parsed: before a
    # script loads data, trains for an hour or creates its output folder.
    minimum_values: ClassVar[Mapping[str, int]] = {}

    def __post_init__(self) -> None:
        check_minimum_values(self, self.minimum_values)

    def load(self) -> DatasetDict:
        """The dataset as the loaders return it (``"sequences"`` and ``"items"`` splits).

        Raises:
            ValueError: ``dataset`` is neither bundled nor a file format and there is no ``data_path``, or a file
                format has no ``data_path``.
        """
        if self.data_path is not None and self.dataset not in FILE_FORMATS:
            return load_s3rec(self.data_path, self.item_path)
        return load_named_dataset(self.dataset, self.data_path, self.item_path)


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
