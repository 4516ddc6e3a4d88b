"""The shortcut search's options from the command line reach the audit spec, and bad ones are refused."""
import argparse

import pydantic
import pytest

from client.cli_audit import add_audit_command, options_of
from shared.schemas import AuditSpec


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_audit_command(parser.add_subparsers())
    return parser.parse_args(["audit", "data.zip", "--model", "m", *argv])


def test_option_flags_become_audit_options():
    args = parse("--option", "shortcut_candidates=20", "--option", "shortcut_fill=blur",
                 "--option", "shortcut_min_effect=0.3", "--option", "shortcut_alpha=0.01")
    opts = options_of(args)
    assert opts == {"shortcut_candidates": 20, "shortcut_fill": "blur", "shortcut_min_effect": 0.3,
                    "shortcut_alpha": 0.01}
    spec = AuditSpec(model="m", options=opts)
    assert spec.options.shortcut_fill == "blur" and spec.options.shortcut_candidates == 20
    with pytest.raises(pydantic.ValidationError, match="shortcut_fill"):
        AuditSpec(model="m", options=options_of(parse("--option", "shortcut_fill=noise")))
