"""Model formats and built-in architectures are named once, in `shared.formats`: the
README's table is generated from it and no other source file spells a second list."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_formats_table_is_the_registrys():
    from shared.formats import markdown_table

    assert markdown_table() in (ROOT / "README.md").read_text(), \
        "regenerate the README's formats table with: python -m shared.formats"


def test_every_format_has_a_loader_and_every_architecture_a_spec():
    from shared.formats import ARCHITECTURES, BUILTIN_ARCHITECTURES, MODEL_FORMATS, format_of
    from shared.schemas import ModelSpec
    from worker.models.loading import LOADERS

    assert set(LOADERS) == set(MODEL_FORMATS)
    assert {format_of(a, b"\0" * 16) for a in ARCHITECTURES} == set(MODEL_FORMATS) - {"safetensors"}
    assert format_of(next(iter(BUILTIN_ARCHITECTURES)), b"\x02\0\0\0\0\0\0\0{}") == "safetensors"
    for a in ARCHITECTURES:
        spec = {"name": "m", "architecture": a, "input": {"channels": 1, "height": 8, "width": 8}, "mean": [0],
                "std": [1], "classes": ["a", "b"]}
        assert ModelSpec.model_validate(spec).architecture == a


def test_no_second_list_of_builtin_architectures():
    """Outside shared/formats.py, no source line names two built-in architectures (a list of them)."""
    from shared.formats import BUILTIN_ARCHITECTURES

    names = [re.escape(n) for n in BUILTIN_ARCHITECTURES]
    found = []
    for folder in ("api", "shared", "worker", "client"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.relative_to(ROOT).as_posix() == "shared/formats.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if sum(bool(re.search(rf"['\"`]{n}['\"`]", line)) for n in names) >= 2:
                    found.append(f"{path.relative_to(ROOT)}:{number}")
    assert not found, found
