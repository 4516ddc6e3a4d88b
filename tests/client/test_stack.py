"""The supervised single-machine stack keeps its ports and data: a second start on the same
folder finds its Redis state (append-only file) and its stored objects on the same ports,
and a port that is taken is an error that says so."""
from __future__ import annotations

import socket

import pytest
import redis


def test_a_second_start_reuses_ports_and_data(tmp_path):
    from client.stack import Stack
    from shared.settings import Settings
    from shared.storage import Storage

    first = Stack(tmp_path, workers=0, api_port=0, s3_port=0, redis_port=0)
    first.start(api=False)
    ports = (first.redis_port, first.s3_port, dict(first.s3_extra), first.secret_key, first.api_key)
    try:
        redis.Redis.from_url(first.redis_url).set("xaiq:test:kept", "yes")
        settings = Settings(s3_endpoint=first.s3_url, s3_access_key=first.access_key, s3_secret_key=first.secret_key)
        Storage(settings).put("kept.txt", b"still here")
    finally:
        first.stop()
    second = Stack(tmp_path, workers=0)          # the folder's ports win over the defaults
    assert (second.redis_port, second.s3_port, second.s3_extra, second.secret_key, second.api_key) == ports
    second.start(api=False)
    try:
        assert redis.Redis.from_url(second.redis_url).get("xaiq:test:kept") == b"yes"
        assert Storage(settings).get("kept.txt") == b"still here"
    finally:
        second.stop()


def test_a_taken_port_is_an_error_that_says_so(tmp_path):
    from client.stack import PortTaken, Stack

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        s = Stack(tmp_path, workers=0, redis_port=port, s3_port=0, api_port=0)
        with pytest.raises(PortTaken, match=f"port {port} is taken"):
            s.start_redis()
        assert s.redis_port == port                   # nothing moved
    s.stop()
