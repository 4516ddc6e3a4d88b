"""The README documents the public contract: every method, parameter and setting."""
from __future__ import annotations

from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_method_and_parameter_is_documented():
    from shared.methods import METHODS

    for m in METHODS.values():
        assert f"`{m.name}`" in README, m.name
        for p in m.params.model_fields:
            assert f"`{p}`" in README, f"{m.name}.{p}"


def test_every_setting_is_documented():
    from shared.settings import markdown_table

    assert markdown_table() in README, "regenerate the README's table with: python -m shared.settings"


def test_every_builtin_architecture_builds():
    from torch import nn

    from shared.formats import BUILTIN_ARCHITECTURES
    from worker.models.architectures import build

    assert BUILTIN_ARCHITECTURES
    for name in BUILTIN_ARCHITECTURES:
        assert isinstance(build(name, num_classes=3, in_channels=1), nn.Module), name


def test_quick_start_has_the_two_commands():
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "bash scripts/demo" in quick and "bash scripts/test" in quick
    assert (Path(__file__).resolve().parent.parent / ".ci/run").read_text().count("scripts/test") == 1


def test_methods_table_is_the_registrys():
    from shared.methods import markdown_table

    assert markdown_table() in README, "regenerate the README's table with: python -m shared.methods"


def test_folder_list_matches_the_tree():
    root = Path(__file__).resolve().parent.parent
    folders = README.split("Folders:", 1)[1].split("## ", 1)[0]
    for pkg in ("api", "shared", "worker"):
        for path in sorted((root / pkg).glob("*.py")):
            if path.stem != "__init__":
                assert f"`{path.name}`" in folders or f"`{path.stem}`" in folders, path
    for sub in ("explain", "models", "audit"):
        assert f"`{sub}/`" in folders
