"""What the `xaiq` commands share: the --server flag, the client it makes, tables, and
messages on stderr (stdout is for what a script reads: ids, paths, tables, JSON)."""
from __future__ import annotations

import json
import sys
import time

from client.sdk import Client


class CliError(Exception):
    """A one-line error for the user; `code` 2: the command line or local files, 1: the rest."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def with_server(sp):
    sp.add_argument("--server", help="API URL (default: $XAIQ_SERVER or http://127.0.0.1:8000); "
                                     "the key comes from $XAIQ_API_KEY")
    return sp


def with_json(sp, what: str):
    sp.add_argument("--json", action="store_true", help=f"print {what} as the API's raw JSON")
    return sp


def client_of(args) -> Client:
    return Client(args.server)


def say(*lines: str) -> None:
    """Messages for the person at the terminal (stderr)."""
    for line in lines:
        print(line, file=sys.stderr, flush=True)


def show_json(data) -> None:
    print(json.dumps(data, indent=1))


def table(rows: list[list], headers: list[str]) -> str:
    """Columns aligned to their widest cell."""
    cells = [[str("" if c is None else c) for c in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def parse_json(value: str, flag: str, example: str):
    try:
        return json.loads(value)
    except ValueError as e:
        raise CliError(f"{flag} is not valid JSON ({e}); e.g. {flag} '{example}'") from None
