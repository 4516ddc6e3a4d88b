"""A confined compute process (see `worker.confine`): it receives one model and runs every
pass of it that the broker asks for, until the broker closes the channel.

The first message is `{"op": "load", "info", "device", "options", "sizes", "measure_s"}`
with the model's bytes (array `weights`), or `{"op": "inspect", "info", "memory_mb"}`:
inspect the model, answer, exit. Then each message names an operation of
`worker.compute.ops.OPS`; the operation answers with one or more messages, the last one of
kind `done` or `error`. An error says the stage and the exception's type, never its text
(model code writes that text; it goes to this process's output, which the broker logs).

    python -m worker.compute.server --fd N --limits JSON --workdir DIR [--drop-to UID:GID]

starts one in a fresh interpreter (without the zygote).
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback

from worker.compute import protocol

MAX_REQUEST = 8 << 30    # bytes of arrays one request may carry (a unit's pixels, a model's weights)


class State:
    """What a compute process holds: its model, loaded once, and the batch sizes it knows."""

    def __init__(self, sock: socket.socket, limits):
        self.sock, self.limits = sock, limits
        self.reader = protocol.Reader(sock, MAX_REQUEST)
        self.model = None         # worker.models.loading.LoadedModel
        self.sizes: dict = {}     # batch sizes measured here or handed over by the broker
        self.new_sizes: dict = {}
        self.measure_s = 0.0

    def reply(self, header: dict, arrays: dict | None = None) -> None:
        protocol.send(self.sock, header, arrays)

    def ask(self, header: dict, arrays: dict | None = None) -> tuple[dict, dict]:
        """Ask the broker for data in the middle of an operation (an audit's images)."""
        self.reply({**header, "kind": "ask"}, arrays)
        return self.reader.recv()


def failure(stage: str, e: BaseException) -> dict:
    """What may leave about an exception: its stage and type (and the reason of a rule the
    service checks, which its own code words)."""
    from worker.compute.ops import Misbehaved

    t = type(e)
    name = t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    if isinstance(e, Misbehaved):
        return {"kind": "error", "stage": stage, "type": "Misbehaved", "reason": e.reason}
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e)):
        return {"kind": "error", "stage": stage, "type": "MemoryError"}
    return {"kind": "error", "stage": stage, "type": name[:80]}


def load(state: State, header: dict, arrays: dict) -> None:
    from worker.models.loading import LoadedModel, build_model, pick_device
    from worker.models.prepare import Options, prepare

    t0 = time.perf_counter()
    info = header["info"]
    device = pick_device(str(header.get("device", "auto")))
    model = build_model(info, arrays["weights"].tobytes(), scratch=os.getcwd()).to(device)
    state.model = LoadedModel(model, info, device, prepare(model, Options(**header.get("options", {}))))
    state.sizes, state.measure_s = dict(header.get("sizes") or {}), float(header.get("measure_s", 0))
    state.reply({"kind": "done", "seconds": round(time.perf_counter() - t0, 4)})


def inspect(state: State, header: dict, arrays: dict) -> None:
    from worker.models.inspection import run_inspection

    result = run_inspection(header["info"], arrays["weights"].tobytes(), int(header["memory_mb"]))
    state.reply({"kind": "done", "result": result})


def serve(sock: socket.socket, limits) -> None:
    """Answer the broker until it closes the channel."""
    from worker.compute.ops import OPS

    state = State(sock, limits)
    while True:
        try:
            header, arrays = state.reader.recv()
        except protocol.ChannelClosed:
            return
        op = header.get("op")
        try:
            if op == "load":
                load(state, header, arrays)
            elif op == "inspect":
                inspect(state, header, arrays)
                return
            elif op in OPS and state.model is not None:
                OPS[op](state, header, arrays)
            else:
                state.reply({"kind": "error", "stage": "request", "type": "UnknownOperation"})
        except protocol.ChannelClosed:
            return
        except BaseException as e:  # noqa: BLE001 - model code may raise anything: its type goes back
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            state.reply(failure(str(op), e))


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from worker import confine

    p = argparse.ArgumentParser(prog="python -m worker.compute.server")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--limits", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--drop-to", default=None)
    args = p.parse_args(argv)
    parent = os.getppid()
    import torch  # noqa: F401  (every import before the switch of user and the filter)

    import worker.compute.ops  # noqa: F401
    import worker.models.inspection  # noqa: F401
    if args.drop_to:
        confine.keep_imports_working()
        confine.drop_to(*(int(x) for x in args.drop_to.split(":")))
    limits = confine.Limits(**json.loads(args.limits))
    confine.confine_self(limits, args.workdir, parent)
    serve(socket.socket(fileno=args.fd), limits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
