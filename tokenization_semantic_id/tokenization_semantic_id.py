"""``SemanticIDTokenizer``: items <-> level-tagged semantic-ID tokens, as a transformers tokenizer.

Vocabulary layout (token ids)::

    0 <pad>   1 </s> (EOS)   2 <s> (BOS, the paper's s_[BOS] before each session item)
    3 ...     <a_0> ... <a_{K1-1}>  <b_0> ... <b_{K2-1}>  <c_0> ...  [<d_0> ... disambiguation level]

An item is the ``L'`` tokens of its code, one per level (``L`` semantic levels plus, when codes
collided, one disambiguation level). A history is the items' tokens in time order (newest kept)
followed by EOS; a session is ``BOS + item tokens`` per item followed by EOS (paper Eq. 3).

Files written by ``save_pretrained``: ``tokenizer_config.json`` (layout and build report),
``semantic_ids.safetensors`` (codebooks, the ``[N, L']`` item code table and, for the ``rqvae`` and ``opq``
quantizers, the tensors that place new items: ``quantizer.encoder.*`` or ``quantizer.rotation``) and ``item_ids.json``
(the catalogue's original item ids, in code-table order).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from safetensors.torch import load_file, save_file
from transformers import BatchEncoding
from transformers.tokenization_python import AddedToken, PreTrainedTokenizer

from .code_assignment import assign_codes, check_quantizer_tensors, embedding_dim
from .constrained_decoding import SessionConstrainedLogitsProcessor, SessionPrefixAllowedTokensFn
from .quantization import validate_item_embeddings
from .statistics import codebook_report
from .trie import SemanticIDTrie

logger = logging.getLogger(__name__)

SEMANTIC_IDS_FILE = "semantic_ids.safetensors"
# Keys of semantic_ids.safetensors holding a quantizer's cold-start tensors (an RQ-VAE encoder, an OPQ rotation).
QUANTIZER_PREFIX = "quantizer."
ITEM_IDS_FILE = "item_ids.json"
# This file travels with a saved tokenizer but without the model package (trust_remote_code): the token layout and the
# loading helpers are copied from the model's config module (tests/test_copies.py fails when a copy drifts).
# Copied from modeling_onerec.configuration_onerec.NUM_SPECIAL_TOKENS
NUM_SPECIAL_TOKENS = 3
LEVEL_NAMES = "abcdefghijklmnopqrstuvwxyz"


def check_item_list(value, where: str, tokenizer=None, allow_empty: bool = False) -> List[str]:
    """``value`` as a list of item-id strings, or an error whose message starts with ``where`` (e.g. ``"Row 3, column
    'chosen'"``).

    * A string (it would be read as one item id per character), a mapping or a non-iterable: a ``TypeError``, usually
      one history passed where a list of histories was expected, or the reverse.
    * An empty list, unless ``allow_empty``: a ``ValueError``.
    * Given a ``tokenizer``, an item id outside its catalogue: its :class:`UnknownItemError` (a ``KeyError``).
    """
    items = _as_list(value, where)
    if not items and not allow_empty:
        raise ValueError(f"{where} is empty: it needs at least one item id.")
    if tokenizer is not None:
        for item in items:
            try:
                tokenizer.item_index(item)
            except KeyError as error:
                raise type(error)(f"{where}: {error}") from None
    return [str(item) for item in items]


def _as_list(value, where: str) -> list:
    """``value`` as a list, unchanged; the ``TypeError`` of :func:`check_item_list` for a string, a mapping or a
    non-iterable (the tokenizer's own inputs: item lists keep their ids' types, lists of histories their lists)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(
            f"{where} must be a list of item ids, e.g. ['12', '7'], got {type(value).__name__} {value!r:.60}. "
            "(A string would be read as one item id per character.)"
        )
    return list(value)


def _swap_in(new_files: List[Path], target: Path, backup: Path) -> None:
    """Move ``new_files`` into ``target`` all or nothing: the files they replace are first moved to ``backup`` and are
    moved back if any move fails, so a failed save leaves the previous tokenizer whole."""
    backup.mkdir()
    replaced, moved = [], []
    try:
        for path in new_files:
            if (target / path.name).exists():
                os.replace(target / path.name, backup / path.name)
                replaced.append(path.name)
        for path in new_files:
            os.replace(path, target / path.name)
            moved.append(path.name)
    except BaseException:
        for name in moved:
            (target / name).unlink(missing_ok=True)
        for name in replaced:
            os.replace(backup / name, target / name)
        raise


# Copied from modeling_onerec.configuration_onerec.load_saved_folder
def load_saved_folder(path, load):
    """``load()`` (a ``from_pretrained`` of ``path``) with the two errors transformers (5.24) leaves unclear made clear.

    * A ``path`` that can only mean a local folder (it starts with ``/``, ``.`` or ``~``, has more than two parts, or
      its first part exists here) and is missing: a ``FileNotFoundError`` naming it (transformers reads it as a Hub
      repo id: "Repo id must be in the form ...").
    * A truncated or corrupted JSON or safetensors file of the folder (the parsers' errors name no file): a
      ``ValueError`` naming the first file that does not parse. The ValueErrors this package raises, which name
      their file already, pass through.
    """
    if isinstance(path, (str, os.PathLike)) and not os.path.isdir(os.path.expanduser(path)):
        text = os.fspath(path)
        parts = [part for part in text.replace(os.sep, "/").split("/") if part]
        if text.startswith(("/", ".", "~")) or len(parts) > 2 or (len(parts) == 2 and os.path.exists(parts[0])):
            raise FileNotFoundError(
                f"{text}: no such folder. Pass a folder written by save_pretrained() (a Hub repo id has the form "
                "'org/name')."
            )
    try:
        return load()
    except Exception as error:  # JSONDecodeError, SafetensorError, ...
        if type(error) is ValueError or not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
            raise
        import json

        from safetensors import safe_open

        for name in sorted(os.listdir(path)):
            file = os.path.join(path, name)
            try:
                if name.endswith(".json"):
                    with open(file, encoding="utf-8") as handle:
                        json.load(handle)
                elif name.endswith(".safetensors"):
                    with safe_open(file, framework="pt") as handle:
                        for key in handle.keys():
                            handle.get_slice(key)
            except Exception as problem:  # any parser error: this file is the one to name
                raise ValueError(
                    f"{file} is not readable ({type(problem).__name__}: {problem}); it may be truncated or "
                    "corrupted. Copy the folder again from where it was saved, or save it again."
                ) from error
        raise


# Copied from modeling_onerec.configuration_onerec.SavedFolderLoading
class SavedFolderLoading:
    """Mixin for a class with transformers' ``from_pretrained`` (the model, the tokenizer): the same loading, with
    :func:`load_saved_folder`'s clear errors. List it before the transformers base class."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' ``from_pretrained``; a missing local folder is a ``FileNotFoundError`` naming it, a truncated
        or corrupted file of the folder a ``ValueError`` naming the file."""
        return load_saved_folder(
            pretrained_model_name_or_path,
            lambda: super(SavedFolderLoading, cls).from_pretrained(pretrained_model_name_or_path, *args, **kwargs),
        )


# Copied from modeling_onerec.configuration_onerec.level_offsets
def level_offsets(codebook_sizes: List[int]) -> List[int]:
    """Token id of code 0 at each level: the special tokens first, then each level's codes in turn."""
    offsets, start = [], NUM_SPECIAL_TOKENS
    for size in codebook_sizes:
        offsets.append(start)
        start += size
    return offsets


_CODE_TOKEN = re.compile(r"<([a-z])_(\d+)>")


class UnknownItemError(KeyError):
    """An item id that is not in the tokenizer's catalogue."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class SemanticIDTokenizer(SavedFolderLoading, PreTrainedTokenizer):
    """Maps catalogue items to semantic-ID tokens and back.

    Build one from item embeddings with :func:`~tokenization_semantic_id.builder.build_semantic_ids` (offline); load a saved one with ``from_pretrained``
    (or ``AutoTokenizer.from_pretrained(dir, trust_remote_code=True)``).

    Args:
        semantic_ids_file: Path of ``semantic_ids.safetensors`` (filled in by ``from_pretrained``).
        item_ids_file: Path of ``item_ids.json`` (filled in by ``from_pretrained``).
        codebook_sizes: ``K`` of every code level, disambiguation level included.
        num_semantic_levels: ``L``, the levels learned by k-means (the rest are disambiguation).
        max_history_items: ``n``, the newest items a history keeps (paper: 256).
        build_info: JSON-serialisable record of how the codes were built (quantiser config,
            statistics); informational.
        quantizer_type: How new items get codes (:meth:`add_items`): ``"balanced_rkmeans"`` or ``"rkmeans"``
            (nearest centroid level by level; the default, and what a folder saved without this field means),
            ``"rqvae"`` (the stored encoder, then residual codewords in its latent space) or ``"opq"`` (the stored
            rotation, then the nearest centroid in each sub-space). See ``code_assignment.py``.
        item_ids / item_codes / codebooks / quantizer_tensors: In-memory catalogue, used by ``build_semantic_ids``
            instead of files: ``item_ids`` (``N`` strings), ``item_codes`` (``[N, L']`` long), ``codebooks``
            (``L`` tensors ``[K_l, d_l]``), ``quantizer_tensors`` (name -> tensor, the quantizer's cold-start tensors).
    """

    vocab_files_names = {"semantic_ids_file": SEMANTIC_IDS_FILE, "item_ids_file": ITEM_IDS_FILE}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"

    def __init__(
        self,
        semantic_ids_file: Optional[str] = None,
        item_ids_file: Optional[str] = None,
        codebook_sizes: Optional[Sequence[int]] = None,
        num_semantic_levels: Optional[int] = None,
        max_history_items: int = 50,
        build_info: Optional[dict] = None,
        quantizer_type: Optional[str] = None,
        pad_token: str = "<pad>",
        eos_token: str = "</s>",
        bos_token: str = "<s>",
        item_ids: Optional[Sequence[str]] = None,
        item_codes: Optional[torch.Tensor] = None,
        codebooks: Optional[Sequence[torch.Tensor]] = None,
        quantizer_tensors: Optional[Dict[str, torch.Tensor]] = None,
        **kwargs,
    ):
        saved_fingerprint = kwargs.pop("semantic_ids_fingerprint", None)
        from_files = item_ids is None or item_codes is None
        if from_files:
            item_ids, item_codes, codebooks, quantizer_tensors = self._load_catalogue(
                semantic_ids_file, item_ids_file, kwargs
            )
        if codebook_sizes is None or num_semantic_levels is None:
            raise ValueError(
                "SemanticIDTokenizer needs codebook_sizes and num_semantic_levels; they are stored in "
                "tokenizer_config.json by save_pretrained. Build a tokenizer with tokenization_semantic_id.build_semantic_ids(...)."
            )
        if len(codebook_sizes) > len(LEVEL_NAMES):
            raise ValueError(
                f"{len(codebook_sizes)} code levels, but code tokens are named <a_..> to <z_..>: at most "
                f"{len(LEVEL_NAMES)} levels (including a disambiguation level); use fewer, larger codebooks."
            )
        self.codebook_sizes = [int(size) for size in codebook_sizes]
        self.num_semantic_levels = int(num_semantic_levels)
        self.max_history_items = int(max_history_items)
        self.build_info = build_info or {}
        # A folder saved before quantizer_type existed was built by residual k-means (its build_info says which).
        balanced = (self.build_info.get("quantizer") or {}).get("balanced", True)
        self.quantizer_type = quantizer_type or ("balanced_rkmeans" if balanced else "rkmeans")
        self.quantizer_tensors = {
            name: torch.as_tensor(tensor, dtype=torch.float32) for name, tensor in (quantizer_tensors or {}).items()
        }
        check_quantizer_tensors(self.quantizer_type, codebooks or [], self.quantizer_tensors)
        self._set_catalogue(
            list(item_ids),
            torch.as_tensor(item_codes, dtype=torch.long),
            [torch.as_tensor(c, dtype=torch.float32) for c in (codebooks or [])],
        )
        if from_files and saved_fingerprint is not None and saved_fingerprint != self.catalogue_fingerprint():
            raise ValueError(
                f"The tokenizer files in {kwargs.get('name_or_path', 'the tokenizer directory')} do not belong "
                f"together: {ITEM_IDS_FILE} and {SEMANTIC_IDS_FILE} hold another catalogue than the one "
                f"tokenizer_config.json was saved with (fingerprint {saved_fingerprint}, files "
                f"{self.catalogue_fingerprint()}), e.g. after an interrupted save over an older tokenizer. Copy the "
                "whole folder again from where it was saved, or rebuild the tokenizer."
            )
        self._added_tokens_decoder = {
            index: token if isinstance(token, AddedToken) else AddedToken(token, special=True)
            for index, token in enumerate((pad_token, eos_token, bos_token))
        }
        kwargs.setdefault("model_max_length", self.max_history_items * self.num_levels + 1)
        super().__init__(
            pad_token=pad_token,
            eos_token=eos_token,
            bos_token=bos_token,
            codebook_sizes=self.codebook_sizes,
            num_semantic_levels=self.num_semantic_levels,
            max_history_items=self.max_history_items,
            build_info=self.build_info,
            quantizer_type=self.quantizer_type,
            **kwargs,
        )

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained``, made safe for an existing folder: the files are written to a staging
        folder beside it and moved in only when all of them are complete, and ``tokenizer_config.json`` records the
        catalogue's fingerprint, so that a folder mixing files of two saves is refused on load."""
        self.init_kwargs["semantic_ids_fingerprint"] = self.catalogue_fingerprint()
        target = Path(save_directory)
        if target.is_file():
            raise ValueError(f"save_directory {target} is a file; pass a folder.")
        target.parent.mkdir(parents=True, exist_ok=True)
        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", target.name)  # not the staging folder's name
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
        try:
            written = super().save_pretrained(str(staging), *args, **kwargs)
            target.mkdir(exist_ok=True)
            _swap_in(sorted(p for p in staging.iterdir() if p.is_file()), target, staging / ".previous")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return tuple(str(target / Path(path).name) for path in written)

    # ------------------------------------------------------------------ catalogue and layout
    @staticmethod
    def _load_catalogue(semantic_ids_file, item_ids_file, kwargs):
        directory = kwargs.get("name_or_path", "the tokenizer directory")
        missing = [
            name
            for name, path in ((SEMANTIC_IDS_FILE, semantic_ids_file), (ITEM_IDS_FILE, item_ids_file))
            if path is None or not os.path.isfile(path)
        ]
        if missing:
            # A ValueError, not FileNotFoundError: transformers replaces OSErrors raised here with a vaguer message.
            raise ValueError(
                f"{directory} is missing {', '.join(missing)}. A SemanticIDTokenizer directory holds "
                f"tokenizer_config.json, {SEMANTIC_IDS_FILE} and {ITEM_IDS_FILE}, as written by "
                "save_pretrained(); copy the whole directory, or rebuild with tokenization_semantic_id.build_semantic_ids(...)."
            )
        try:
            tensors = load_file(semantic_ids_file)
        except Exception as error:  # safetensors raises its own error types, naming no file
            raise ValueError(
                f"{semantic_ids_file} is not a readable safetensors file ({error}); it may be truncated or "
                "corrupted. Copy it again from where the tokenizer was saved, or rebuild the tokenizer."
            ) from error
        if "item_codes" not in tensors:
            raise ValueError(
                f"{semantic_ids_file} has no 'item_codes' tensor; it was not written by SemanticIDTokenizer."
            )
        codebooks = [tensors[f"codebook_{level}"] for level in range(len(tensors)) if f"codebook_{level}" in tensors]
        quantizer_tensors = {
            name[len(QUANTIZER_PREFIX) :]: tensor
            for name, tensor in tensors.items()
            if name.startswith(QUANTIZER_PREFIX)
        }
        try:
            with open(item_ids_file, encoding="utf-8") as handle:
                item_ids = json.load(handle)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"{item_ids_file} is not valid UTF-8 JSON ({error}); it may be truncated or corrupted. Copy it "
                "again from where the tokenizer was saved, or rebuild the tokenizer."
            ) from error
        if not isinstance(item_ids, list):
            raise ValueError(f"{item_ids_file} must hold a JSON list of item ids, got a {type(item_ids).__name__}.")
        return item_ids, tensors["item_codes"], codebooks, quantizer_tensors

    def _set_catalogue(self, item_ids: List[str], item_codes: torch.Tensor, codebooks: List[torch.Tensor]) -> None:
        if len(item_ids) == 0:
            raise ValueError("The catalogue is empty: pass at least one item.")
        if item_codes.dim() != 2 or item_codes.shape != (len(item_ids), len(self.codebook_sizes)):
            raise ValueError(
                f"item_codes has shape {tuple(item_codes.shape)} but {len(item_ids)} items and "
                f"{len(self.codebook_sizes)} code levels were declared; the tokenizer files are inconsistent."
            )
        sizes = torch.tensor(self.codebook_sizes)
        if (item_codes < 0).any() or (item_codes >= sizes).any():
            raise ValueError(f"item_codes hold codes outside the codebook sizes {self.codebook_sizes}.")
        item_ids = [str(item) for item in item_ids]
        index = {item: position for position, item in enumerate(item_ids)}
        if len(index) != len(item_ids):
            duplicates = sorted({item for item in item_ids if item_ids.count(item) > 1})[:5]
            raise ValueError(f"item ids must be unique; duplicated: {duplicates}.")
        self._item_ids = item_ids
        self._item_index = index
        self.item_codes = item_codes
        self.codebooks = codebooks
        self._trie: Optional[SemanticIDTrie] = None
        self._fingerprints: Dict[int, str] = {}

    @property
    def num_levels(self) -> int:
        """``L'``: tokens per item (semantic levels plus any disambiguation level)."""
        return len(self.codebook_sizes)

    @property
    def level_offsets(self) -> List[int]:
        """Token id of code 0 at each level."""
        return level_offsets(self.codebook_sizes)

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL_TOKENS + sum(self.codebook_sizes)

    @property
    def item_ids(self) -> List[str]:
        """The catalogue, in code-table order."""
        return list(self._item_ids)

    @property
    def num_items(self) -> int:
        return len(self._item_ids)

    @property
    def item_tokens(self) -> torch.Tensor:
        """``[N, L']`` vocabulary token ids of every item's code."""
        return self.item_codes + torch.tensor(self.level_offsets)

    def catalogue_fingerprint(self, num_items: Optional[int] = None) -> str:
        """A short hash of the first ``num_items`` items (default: all) and their codes. A model records it when
        its config is built (``OneRecConfig.from_tokenizer``), so that a tokenizer with the same layout but another
        catalogue, or other codes, is told apart; items added later with :meth:`add_items` do not change it."""
        num_items = self.num_items if num_items is None else int(num_items)
        if not 0 < num_items <= self.num_items:
            raise ValueError(f"num_items={num_items} must be in [1, {self.num_items}] (this catalogue's size).")
        if num_items not in self._fingerprints:
            digest = hashlib.sha256("\n".join(self._item_ids[:num_items]).encode("utf-8"))
            digest.update(self.item_codes[:num_items].to(torch.int64).contiguous().numpy().tobytes())
            self._fingerprints[num_items] = digest.hexdigest()[:16]
        return self._fingerprints[num_items]

    @property
    def trie(self) -> SemanticIDTrie:
        """The CSR trie of valid item codes (built on first use, rebuilt after :meth:`add_items`)."""
        if self._trie is None:
            self._trie = SemanticIDTrie(self.item_tokens, self.vocab_size)
        return self._trie

    # ------------------------------------------------------------------ transformers tokenizer API
    def get_vocab(self) -> Dict[str, int]:
        vocab = {str(token): index for index, token in self._added_tokens_decoder.items()}
        for level, (offset, size) in enumerate(zip(self.level_offsets, self.codebook_sizes)):
            for code in range(size):
                vocab[f"<{LEVEL_NAMES[level]}_{code}>"] = offset + code
        return vocab

    def _tokenize(self, text: str, **kwargs) -> List[str]:
        tokens = _CODE_TOKEN.findall(text)
        leftover = _CODE_TOKEN.sub("", text).strip()
        if leftover:
            raise ValueError(
                f"Cannot tokenize {leftover[:40]!r}: a SemanticIDTokenizer reads code tokens like '<a_12><b_3><c_7>'. "
                "To encode items, use encode_items / encode_history / encode_session with item ids."
            )
        return [f"<{level}_{code}>" for level, code in tokens]

    def _convert_token_to_id(self, token: str) -> int:
        match = _CODE_TOKEN.fullmatch(token)
        if match:
            level = LEVEL_NAMES.find(match.group(1))
            code = int(match.group(2))
            if 0 <= level < self.num_levels and code < self.codebook_sizes[level]:
                return self.level_offsets[level] + code
        raise ValueError(
            f"Unknown token {token!r}: valid code tokens are <{LEVEL_NAMES[0]}_0> ... "
            f"<{LEVEL_NAMES[self.num_levels - 1]}_{self.codebook_sizes[-1] - 1}> (levels "
            f"{', '.join(f'{LEVEL_NAMES[level]}: {k}' for level, k in enumerate(self.codebook_sizes))})."
        )

    def _convert_id_to_token(self, index: int) -> str:
        level, code = self.token_level(index)
        if level < 0:
            raise ValueError(f"Token id {index} is outside the vocabulary (size {self.vocab_size}).")
        return f"<{LEVEL_NAMES[level]}_{code}>"

    def convert_tokens_to_string(self, tokens: List[str]) -> str:
        return "".join(tokens)

    def token_level(self, token_id: int) -> Tuple[int, int]:
        """``(level, code)`` of a code token id; ``(-1, -1)`` for special or out-of-range ids."""
        for level, (offset, size) in enumerate(zip(self.level_offsets, self.codebook_sizes)):
            if offset <= token_id < offset + size:
                return level, token_id - offset
        return -1, -1

    def save_vocabulary(self, save_directory: str, filename_prefix: Optional[str] = None) -> Tuple[str, str]:
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        ids_path = os.path.join(save_directory, prefix + SEMANTIC_IDS_FILE)
        items_path = os.path.join(save_directory, prefix + ITEM_IDS_FILE)
        tensors = {"item_codes": self.item_codes.contiguous()}
        tensors.update({f"codebook_{level}": c.contiguous() for level, c in enumerate(self.codebooks)})
        tensors.update({QUANTIZER_PREFIX + name: t.contiguous() for name, t in self.quantizer_tensors.items()})
        save_file(tensors, ids_path, metadata={"format": "pt", "codebook_sizes": json.dumps(self.codebook_sizes)})
        with open(items_path, "w", encoding="utf-8") as handle:
            json.dump(self._item_ids, handle)
        return ids_path, items_path

    # ------------------------------------------------------------------ items <-> tokens
    def item_index(self, item_id) -> int:
        """Row of ``item_id`` in the code table; raises :class:`UnknownItemError` for unknown ids."""
        try:
            return self._item_index[str(item_id)]
        except KeyError:
            raise UnknownItemError(
                f"Unknown item id {item_id!r}: it is not in this tokenizer's catalogue of {self.num_items} items. "
                "Add new items with tokenizer.add_items(item_ids, embeddings), or drop them from the input."
            ) from None

    def encode_items(self, item_ids: Sequence) -> torch.Tensor:
        """``n`` item ids -> ``[n, L']`` token ids."""
        return self._item_token_rows(_as_list(item_ids, "item_ids"))

    def _item_token_rows(self, item_ids: List) -> torch.Tensor:
        """``encode_items`` of an already checked list."""
        rows = torch.tensor([self.item_index(item) for item in item_ids], dtype=torch.long)
        return self.item_tokens[rows] if len(rows) else torch.zeros((0, self.num_levels), dtype=torch.long)

    def decode_items(self, token_ids, strict: bool = True) -> List[Optional[str]]:
        """``[n, L']`` token ids -> item ids. With ``strict=False`` an invalid code gives ``None``."""
        token_ids = torch.as_tensor(token_ids, dtype=torch.long)
        if token_ids.numel() % self.num_levels:
            raise ValueError(
                f"decode_items needs {self.num_levels} code tokens per item (one per level), got {token_ids.numel()} "
                f"tokens (shape {list(token_ids.shape)}): pass [n, {self.num_levels}] ids, without BOS/EOS "
                "(decode_session reads whole generated sessions)."
            )
        token_ids = token_ids.reshape(-1, self.num_levels)
        trie = self.trie
        leaves = trie.walk(token_ids.to(trie.device)).cpu()
        items = []
        for row, leaf in enumerate(leaves.tolist()):
            item = trie.leaf_item[leaf].item() if leaf >= 0 else -1
            if item < 0:
                if strict:
                    raise ValueError(
                        f"Tokens {token_ids[row].tolist()} ({''.join(self.convert_ids_to_tokens(token_ids[row].tolist()))}) "
                        "are not the code of any catalogue item; decode with strict=False to get None instead."
                    )
                items.append(None)
            else:
                items.append(self._item_ids[item])
        return items

    def set_max_history_items(self, max_history_items: int) -> None:
        """Keeps the newest ``max_history_items`` items of a history from now on, and saves that number: what a
        training script calls when its model reads another history cap than the tokenizer was built with, so
        that the tokenizer saved beside the model encodes histories as the model reads them."""
        if isinstance(max_history_items, bool) or not isinstance(max_history_items, int) or max_history_items < 1:
            raise ValueError(f"max_history_items must be a positive integer, got {max_history_items!r}.")
        self.max_history_items = max_history_items
        self.model_max_length = max_history_items * self.num_levels + 1
        self.init_kwargs.update(max_history_items=max_history_items, model_max_length=self.model_max_length)

    def encode_history(self, item_ids: Sequence, max_items: Optional[int] = None, add_eos: bool = True) -> List[int]:
        """Token ids of a history: the newest ``max_items`` items (default ``max_history_items``) in
        time order, then EOS. An empty history is a ValueError (the model needs some context)."""
        return self._encode_history(_as_list(item_ids, "the history"), max_items, add_eos)

    def _encode_history(self, item_ids: List, max_items: Optional[int], add_eos: bool) -> List[int]:
        """``encode_history`` of an already checked list."""
        if len(item_ids) == 0:
            raise ValueError("Empty history: a user needs at least one past item to be encoded.")
        limit = self.max_history_items if max_items is None else max_items
        if limit < 1:
            raise ValueError(f"max_items must be >= 1, got {limit}.")
        tokens = self._item_token_rows(item_ids[-limit:]).reshape(-1).tolist()
        return tokens + [self.eos_token_id] if add_eos else tokens

    def encode_session(self, item_ids: Sequence, add_eos: bool = True) -> List[int]:
        """Token ids of a session (paper Eq. 3): ``BOS c1..cL'`` per item, then EOS."""
        item_ids = _as_list(item_ids, "the session")
        if len(item_ids) == 0:
            raise ValueError("Empty session: pass at least one item.")
        codes = self._item_token_rows(item_ids)
        bos = torch.full((codes.shape[0], 1), self.bos_token_id, dtype=torch.long)
        tokens = torch.cat([bos, codes], dim=1).reshape(-1).tolist()
        return tokens + [self.eos_token_id] if add_eos else tokens

    def decode_session(self, token_ids: Sequence[int], prefix_length: int = 0) -> List[Optional[str]]:
        """Items of one generated session (``None`` for a slot that is not a valid item).

        Args:
            token_ids: ``[T]`` decoder tokens, for example a row of ``generate()`` output.
            prefix_length: Leading tokens to skip (1 for T5's decoder start token).
        """
        tokens = [int(t) for t in torch.as_tensor(token_ids).tolist()][prefix_length:]
        period = self.num_levels + 1
        items = []
        for start in range(0, len(tokens), period):
            chunk = tokens[start : start + period]
            if not chunk or chunk[0] != self.bos_token_id:
                break  # EOS or padding: the session has ended
            items.append(self.decode_items([chunk[1:]], strict=False)[0] if len(chunk) == period else None)
        return items

    def batch_encode_histories(
        self, histories: Sequence[Sequence], max_items: Optional[int] = None, return_tensors: Optional[str] = "pt"
    ) -> BatchEncoding:
        """Right-padded encoder inputs for a batch of histories: ``input_ids`` and ``attention_mask``,
        each ``[B, T]`` with ``T`` the longest encoded history."""
        histories = _as_list(histories, "histories")
        if not histories:
            raise ValueError("histories is empty: pass one list of item ids per user, e.g. [['12', '7'], ['3']].")
        encoded = []
        for user, history in enumerate(histories):
            try:
                encoded.append(self._encode_history(_as_list(history, f"histories[{user}]"), max_items, True))
            except ValueError as error:  # e.g. an empty history: name the user
                raise type(error)(f"histories[{user}]: {error}") from None
        width = max(len(row) for row in encoded)
        input_ids = [row + [self.pad_token_id] * (width - len(row)) for row in encoded]
        attention = [[1] * len(row) + [0] * (width - len(row)) for row in encoded]
        return BatchEncoding({"input_ids": input_ids, "attention_mask": attention}, tensor_type=return_tensors)

    # ------------------------------------------------------------------ constrained decoding
    def _excluded_indices(self, exclude_items: Optional[Sequence[Sequence]]) -> Optional[List[List[int]]]:
        if exclude_items is None:
            return None
        rows = _as_list(exclude_items, "exclude_items")
        return [
            [self.item_index(item) for item in _as_list(items, f"exclude_items[{row}]")]
            for row, items in enumerate(rows)
        ]

    def session_logits_processor(
        self,
        num_items: int = 1,
        *,
        prefix_length: int = 1,
        forbid_repeats: bool = True,
        exclude_items: Optional[Sequence[Sequence]] = None,
        num_beams: Optional[int] = None,
    ) -> SessionConstrainedLogitsProcessor:
        """The fast (vectorised) constraint for ``generate(logits_processor=[...])``.

        Args:
            num_items: Items per generated session ``m``.
            prefix_length: Decoder tokens before the session (1 for T5's decoder start token).
            forbid_repeats: No item twice in one session.
            exclude_items: Per input row, item ids never to generate (for example the history).
            num_beams: Required with ``exclude_items``: the ``num_beams`` given to ``generate()``
                (``num_return_sequences`` when sampling).
        """
        return SessionConstrainedLogitsProcessor(
            self.trie,
            num_beams=num_beams,
            **self._constraint_arguments(num_items, prefix_length, forbid_repeats, exclude_items),
        )

    def prefix_allowed_tokens_fn(
        self,
        num_items: int = 1,
        *,
        prefix_length: int = 1,
        forbid_repeats: bool = True,
        exclude_items: Optional[Sequence[Sequence]] = None,
    ) -> SessionPrefixAllowedTokensFn:
        """The same constraint for ``generate(prefix_allowed_tokens_fn=...)``; same arguments and results as
        :meth:`session_logits_processor` (no ``num_beams``: generate() passes each row's input), but a Python call
        per beam (slow)."""
        return SessionPrefixAllowedTokensFn(
            self.trie, **self._constraint_arguments(num_items, prefix_length, forbid_repeats, exclude_items)
        )

    def _constraint_arguments(
        self, num_items: int, prefix_length: int, forbid_repeats: bool, exclude_items: Optional[Sequence[Sequence]]
    ) -> dict:
        """The session constraint's arguments (both generate() interfaces): this tokenizer's special tokens and the
        excluded items' catalogue rows."""
        return dict(
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            num_items=num_items,
            prefix_length=prefix_length,
            forbid_repeats=forbid_repeats,
            excluded_items=self._excluded_indices(exclude_items),
        )

    # ------------------------------------------------------------------ cold start
    @property
    def embedding_dim(self) -> int:
        """Width of the item embeddings :meth:`add_items` reads (the catalogue's embedding width)."""
        if not self.codebooks:
            raise ValueError("This tokenizer has no codebooks saved, so new items cannot be encoded.")
        return embedding_dim(self.quantizer_type, self.codebooks, self.quantizer_tensors)

    def add_items(self, item_ids: Sequence, embeddings) -> torch.Tensor:
        """Cold start: codes for new items from the frozen quantizer, decodable at once.

        Each new item gets the semantic code its quantizer assigns (``quantizer_type``: for residual k-means the
        nearest centroid level by level; for an RQ-VAE the stored encoder, then the nearest codeword level by level
        in its latent space; for OPQ the stored rotation, then the nearest centroid of each sub-space); if that code
        is already used it takes the next free code of the disambiguation level. Vocabulary and trained models are
        unchanged.

        Args:
            item_ids: New, previously unknown item ids.
            embeddings: ``[n, D]`` embeddings from the same embedding pipeline as the catalogue.
        Returns:
            ``[n, L']`` token ids of the new items.
        """
        item_ids = [str(item) for item in item_ids]
        if not item_ids:
            return torch.zeros((0, self.num_levels), dtype=torch.long)
        width = self.embedding_dim
        known = [item for item in item_ids if item in self._item_index]
        if known or len(set(item_ids)) != len(item_ids):
            raise ValueError(f"add_items got ids already in the catalogue or repeated: {(known or item_ids)[:5]}.")
        embeddings = validate_item_embeddings(embeddings, num_items=len(item_ids), dim=width)
        semantic = assign_codes(self.quantizer_type, embeddings, self.codebooks, self.quantizer_tensors)
        new_codes = self._disambiguate(semantic)
        self._set_catalogue(self._item_ids + item_ids, torch.cat([self.item_codes, new_codes]), self.codebooks)
        return self.item_tokens[-len(item_ids) :]

    def _disambiguate(self, semantic: torch.Tensor) -> torch.Tensor:
        """Appends the first free disambiguation code to each new ``[n, L]`` semantic code."""
        if self.num_levels == self.num_semantic_levels:
            taken = {tuple(code) for code in self.item_codes.tolist()}
            clashes = [code for code in semantic.tolist() if tuple(code) in taken]
            if clashes or len({tuple(c) for c in semantic.tolist()}) < len(semantic):
                raise ValueError(
                    f"{max(len(clashes), 1)} new item(s) collide with existing codes (e.g. {(clashes or semantic.tolist())[0]}) "
                    "and this tokenizer has no disambiguation level. Rebuild it with disambiguation_size > 0."
                )
            return semantic
        used: Dict[tuple, set] = {}
        for code in self.item_codes.tolist():
            used.setdefault(tuple(code[: self.num_semantic_levels]), set()).add(code[-1])
        size = self.codebook_sizes[-1]
        extra = []
        for code in semantic.tolist():
            taken = used.setdefault(tuple(code), set())
            free = next((value for value in range(size) if value not in taken), None)
            if free is None:
                raise ValueError(
                    f"All {size} disambiguation codes of semantic code {code} are taken; rebuild the tokenizer "
                    "with a larger disambiguation_size to add more items under it."
                )
            taken.add(free)
            extra.append(free)
        return torch.cat([semantic, torch.tensor(extra, dtype=torch.long)[:, None]], dim=1)

    # ------------------------------------------------------------------ statistics
    def statistics(self) -> dict:
        """Per-level utilisation and cluster sizes, prefix counts and collision rates (see
        :func:`~tokenization_semantic_id.statistics.codebook_report`)."""
        return codebook_report(self.item_codes, self.codebook_sizes, self.num_semantic_levels)
