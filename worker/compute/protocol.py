"""The wire between the broker and a confined compute process: only tensors and plain JSON.

A message is a 4-byte big-endian length, a JSON header, then the raw bytes of each array the
header lists (`{"name", "dtype", "shape"}`), in order. Nothing is pickled: arrays are read
with `np.frombuffer` after their dtype is checked against a short list and their size
against the reader's limit, so a compute process that runs hostile code can send wrong
numbers, never objects. The broker checks what the numbers mean (shapes, finiteness).
"""
from __future__ import annotations

import json
import select
import socket
import struct
import time
from typing import Callable

import numpy as np

DTYPES = ("<f4", "<f8", "|u1", "<i8", "<i4", "|b1")
MAX_HEADER = 16 << 20


class ChannelClosed(Exception):
    """The other side closed the channel (or sent something that is not a message)."""


class DeadlineExceeded(Exception):
    """No answer before the deadline."""


def send(sock: socket.socket, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    arrays = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
    for name, a in arrays.items():
        if a.dtype.str not in DTYPES:
            raise TypeError(f"array {name!r}: dtype {a.dtype.str} is not sent")
    head = json.dumps({**header, "arrays": [{"name": k, "dtype": a.dtype.str, "shape": list(a.shape)}
                                            for k, a in arrays.items()]}, allow_nan=False).encode()
    sock.sendall(struct.pack(">I", len(head)) + head)
    for a in arrays.values():
        if a.nbytes:
            sock.sendall(memoryview(a).cast("B"))


class Reader:
    """Reads messages from a channel; `wait(deadline, tick)` calls `tick()` about every
    `every` seconds while it waits (the broker checks cancels and memory there)."""

    def __init__(self, sock: socket.socket, max_bytes: int):
        self.sock, self.max_bytes = sock, max_bytes

    def _exact(self, n: int, deadline: float | None, tick: Callable[[], None] | None, every: float) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            if deadline is not None or tick is not None:
                self._wait_readable(deadline, tick, every)
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ChannelClosed("the compute process closed its channel")
            got += k
        return buf

    def _wait_readable(self, deadline: float | None, tick, every: float) -> None:
        while True:
            left = every if deadline is None else min(every, deadline - time.monotonic())
            if left <= 0:
                raise DeadlineExceeded()
            ready, _, _ = select.select([self.sock], [], [], left)
            if ready:
                return
            if tick is not None:
                tick()

    def recv(self, deadline: float | None = None, tick: Callable[[], None] | None = None,
             every: float = 0.1) -> tuple[dict, dict[str, np.ndarray]]:
        (n,) = struct.unpack(">I", bytes(self._exact(4, deadline, tick, every)))
        if n > MAX_HEADER:
            raise ChannelClosed(f"a header of {n} bytes")
        try:
            header = json.loads(bytes(self._exact(n, deadline, tick, every)))
            specs = header.pop("arrays")
            if not isinstance(header, dict) or not isinstance(specs, list):
                raise ValueError("not a message")
            shapes = [(str(s["name"]), str(s["dtype"]), tuple(int(d) for d in s["shape"])) for s in specs]
        except (ValueError, KeyError, TypeError) as e:
            raise ChannelClosed(f"a malformed header ({type(e).__name__})") from None
        total = 0
        for name, dtype, shape in shapes:
            if dtype not in DTYPES or any(d < 0 for d in shape) or len(shape) > 8:
                raise ChannelClosed(f"array {name[:50]!r}: dtype {dtype[:10]!r} or shape {shape} refused")
            total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if total > self.max_bytes:
            raise ChannelClosed(f"arrays of {total} bytes (the limit is {self.max_bytes})")
        arrays = {}
        for name, dtype, shape in shapes:
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            raw = self._exact(size, deadline, tick, every) if size else bytearray()
            arrays[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
        return header, arrays
