"""The API's health probe (a pure test: the probed part is a function): one late answer is
not an outage, two missed probes in a row are, and the first answer ends it."""
from __future__ import annotations

import threading

from api.connections import Probe
from tests.conftest import wait_until


class Part:
    """Answers a ping, or fails it, as the test says; counts the pings."""

    def __init__(self):
        self.failing, self.pings, self.lock = 0, 0, threading.Lock()

    def ping(self):
        """`failing` > 0: that many pings fail; < 0: every ping fails."""
        with self.lock:
            self.pings += 1
            if self.failing == 0:
                return
            if self.failing > 0:
                self.failing -= 1
            raise TimeoutError("late")


def probe_of(part: Part, downs: list) -> Probe:
    p = Probe("storage", lambda: part.ping, every=0.01, on_down=lambda: downs.append(part.pings))
    assert p.state(5) == "ok"
    return p


def test_one_late_answer_is_not_an_outage():
    part, downs = Part(), []
    p = probe_of(part, downs)
    for _ in range(5):
        part.failing = 1
        wait_until(lambda: part.failing == 0, 5, "the failing ping")
        seen = part.pings
        wait_until(lambda seen=seen: part.pings >= seen + 2, 5, "two more pings")
        assert p.down() == ""
    assert downs == []


def test_two_missed_probes_in_a_row_are_and_the_first_answer_ends_it():
    part, downs = Part(), []
    p = probe_of(part, downs)
    part.failing = -1                                  # fails until told otherwise
    wait_until(lambda: p.down(), 5, "the outage noticed")
    assert p.down() == "storage is down (its probe got TimeoutError)"
    assert len(downs) == 1 and p.state(1).startswith("error: storage is down")
    part.failing = 0
    wait_until(lambda: not p.down(), 5, "the answer noticed")
    assert p.state(1) == "ok" and len(downs) == 1
