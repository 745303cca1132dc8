"""`# Copied from <module>.<name>` marks code that must stay self-contained in a package loaded with
`trust_remote_code` (the model files travel without the tokenizer package and vice versa): each marked definition must
equal its original, as transformers' `utils/check_copies.py` enforces for its models.

`# Adapted from <module>.<name>` marks code derived from transformers (T5, Switch Transformers) but changed: it must
stand above a definition, and the original must still exist (a transformers upgrade that renames it fails here, so
the adaptation gets looked at again)."""

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modeling_onerec", "tokenization_semantic_id", "trainers", "benchmarks")
MARK = re.compile(r"^# Copied from ([\w.]+)\s*$")
ADAPTED = re.compile(r"^\s*# Adapted from ([\w.]+)\s*$")


def _definitions(path: Path) -> dict:
    """Top-level name -> (node, source text) of a module: functions, classes and simple assignments."""
    text = path.read_text(encoding="utf-8")
    found = {}
    for node in ast.parse(text).body:
        names = (
            [node.name]
            if isinstance(node, (ast.FunctionDef, ast.ClassDef))
            else [target.id for target in getattr(node, "targets", []) if isinstance(target, ast.Name)]
        )
        for name in names:
            found[name] = (node, ast.get_source_segment(text, node))
    return found


def _marked_lines(pattern: re.Pattern):
    """``(path, line number, the original it names, the file's lines)`` for every line of the packages that
    ``pattern`` matches."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = path.read_text(encoding="utf-8").splitlines()
            for number, line in enumerate(lines, start=1):
                match = pattern.match(line)
                if match:
                    yield path, number, match.group(1), lines


def marked_copies():
    for path, number, original, _ in _marked_lines(MARK):
        definitions = {node.lineno: (name, source) for name, (node, source) in _definitions(path).items()}
        name, source = definitions.get(number + 1, (None, None))
        yield pytest.param(path, number, original, name, source, id=f"{path.relative_to(ROOT)}:{number}")


COPIES = list(marked_copies())


def test_the_self_contained_copies_are_marked():
    # The known copies (fixed-shape trie children, exclusion counts and dedupe, token layout): removing a mark must fail here too.
    targets = {param.values[2] for param in COPIES}
    assert {
        "tokenization_semantic_id.trie.fixed_children",
        "tokenization_semantic_id.trie.FixedChildren",
        "tokenization_semantic_id.trie.excluded_below",
        "tokenization_semantic_id.constrained_decoding.drop_duplicate_items",
        "tokenization_semantic_id.constrained_decoding.SessionConstraint",
        "modeling_onerec.configuration_onerec.level_offsets",
        "modeling_onerec.configuration_onerec.NUM_SPECIAL_TOKENS",
        "modeling_onerec.configuration_onerec.load_saved_folder",
        "modeling_onerec.configuration_onerec.SavedFolderLoading",
    } <= targets


@pytest.mark.parametrize("path, line, original, name, copy", COPIES)
def test_copy_matches_its_original(path, line, original, name, copy):
    assert copy is not None, f"{path}:{line}: '# Copied from' must stand right above a def, class or assignment."
    module_name, original_name = original.rsplit(".", 1)
    assert original_name == name, f"{path}:{line}: the copy is named {name!r}, the original {original_name!r}."
    module = importlib.import_module(module_name)
    definitions = _definitions(Path(module.__file__))
    assert original_name in definitions, f"{original} does not exist."
    expected = definitions[original_name][1]
    assert copy == expected, f"{path}:{line} has drifted from {original}: make them equal again (edit the original)."


def adapted_markers():
    for path, number, original, lines in _marked_lines(ADAPTED):
        following = lines[number].strip() if number < len(lines) else ""
        yield pytest.param(path, number, original, following, id=f"{path.relative_to(ROOT)}:{number}")


ADAPTED_MARKERS = list(adapted_markers())


def test_the_t5_adaptations_are_marked():
    targets = {param.values[2] for param in ADAPTED_MARKERS}
    assert {
        "transformers.models.t5.modeling_t5.T5ForConditionalGeneration.forward",
        "transformers.models.t5.modeling_t5.T5ForConditionalGeneration.__init__",
        "transformers.models.t5.modeling_t5.T5LayerFF",
    } <= targets


@pytest.mark.parametrize("path, line, original, following", ADAPTED_MARKERS)
def test_adapted_code_names_an_existing_original(path, line, original, following):
    assert following.startswith(("def ", "class ", "@")), (
        f"{path}:{line}: '# Adapted from' must stand above a definition."
    )
    parts = original.split(".")
    for split in range(len(parts) - 1, 0, -1):  # the longest importable module prefix, then attributes
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            assert hasattr(found, name), f"{path}:{line}: {original} does not exist (transformers renamed it?)."
            found = getattr(found, name)
        return
    raise AssertionError(f"{path}:{line}: no module of {original} imports.")
