"""The `xaiq` command line. Every error is one line on stderr (with a hint where there is
one) and an exit code: 2 for the command line and local files, 1 for the rest (the API's
answer, an unreachable server, a job that did not succeed); `XAIQ_DEBUG=1` shows tracebacks."""
from __future__ import annotations

import argparse
import os
import sys

from client.cli_admin import add_admin_commands
from client.cli_audit import add_audit_command
from client.cli_common import CliError, say
from client.cli_jobs import add_job_commands
from client.cli_models import add_model_commands
from client.cli_stack import (
    add_stack_commands,
    register_digits,
    tenant_key,
    write_digit_samples,
)
from client.inputs import InputError
from client.sdk import AmbiguousJob, ApiError, JobNotFound, Unreachable

__all__ = ["build_parser", "main", "register_digits", "tenant_key", "write_digit_samples"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xaiq", description="Explanations of PyTorch image classifiers, in bulk.",
                                epilog="The server comes from --server or $XAIQ_SERVER, the key from $XAIQ_API_KEY.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_stack_commands(sub)
    add_job_commands(sub)
    add_model_commands(sub)
    add_admin_commands(sub)
    add_audit_command(sub)
    return p


def api_error(e: ApiError) -> list[str]:
    """The API's message as it comes, then its details when they add to it."""
    lines = [f"error: {e.message}"]
    details = e.details if isinstance(e.details, list) else []
    extra = [str(d) for d in details if isinstance(d, (str, int, float)) and str(d) not in e.message]
    return lines + [f"  {d}" for d in extra[:20]]


def quiet_broken_pipe() -> int:
    """The reader went away (`xaiq results JOB | head`): stop quietly, as a pipe's writer does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    return 141


def run(fn, args) -> int:
    try:
        code = fn(args)
        sys.stdout.flush()      # inside the try: a reader gone shows here, not at exit
        return code
    except BrokenPipeError:
        return quiet_broken_pipe()
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except (CliError, InputError) as e:
        say(f"error: {e}")
        return getattr(e, "code", 2)
    except ApiError as e:
        say(*api_error(e))
        return 1
    except (Unreachable, JobNotFound, AmbiguousJob, TimeoutError, RuntimeError) as e:
        say(f"error: {e}")
        return 1
    except Exception as e:
        if os.environ.get("XAIQ_DEBUG"):
            raise
        say(f"error: {type(e).__name__}: {e} (XAIQ_DEBUG=1 shows the traceback)")
        return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
