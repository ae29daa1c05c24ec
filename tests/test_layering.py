"""vsr_fast's layers import downward only (docs/design.md, "Layers"): every import in the package's
source, at module level or inside a function, names a layer at or below the importer's."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vsr_fast"

# Lowest first. A module may import its own layer and the ones before it.
LAYERS = [
    {"_C", "_extension"},  # the compiled library and its loader
    {"hardware"},  # what this machine runs fast: torch only, for any layer's precision choice
    {"checkpoint"},  # file formats and key names: torch and the standard library only
    {"reference"},  # the spec; may read *_pretrained files through checkpoint
    {"ops"},  # the operators' Python side; backward recomputes the reference
    {"models"},  # the drop-in models built on the ops
    {"acceleration"},  # vsr_fast.accelerate: official / reference modules to the fast models
    {"inference"},  # the long-video engine
    {"distributed"},  # several processes
    {"cli", "io", "__main__"},  # command line, video decoding and encoding
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def layer_of(path):
    """The layer name of a source file: vsr_fast/<layer>.py or vsr_fast/<layer>/..."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_layers(path):
    """(line, layer) of every vsr_fast module the file imports."""
    tree = ast.parse(path.read_text(), str(path))
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]  # the file's package
    if path.name == "__init__.py":
        package = path.relative_to(PACKAGE.parent).parts[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            # `from . import x` / `from .. import x` name modules; `from .x import y` names .x
            targets = [module + [alias.name] for alias in node.names] if not node.module else [module]
        else:
            continue
        for target in targets:
            if target[:1] == ["vsr_fast"] and len(target) > 1:
                found.append((node.lineno, target[1]))
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_module_is_in_a_layer():
    unplaced = sorted({layer_of(p) for p in SOURCES} - RANK.keys())
    assert not unplaced, (
        f'vsr_fast modules in no layer: {unplaced}; add them to LAYERS here and to docs/design.md, "Layers"'
    )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_downward(path):
    own = layer_of(path)
    if own not in RANK:
        pytest.fail(f"{path.relative_to(PACKAGE)} is in no layer (test_every_module_is_in_a_layer)")
    upward = [
        (line, layer) for line, layer in imported_layers(path) if layer in RANK and RANK[layer] > RANK[own]
    ]
    assert not upward, f"{path.relative_to(PACKAGE)} ({own}) imports layers above it: {upward}"
