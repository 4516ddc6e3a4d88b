"""Live job state in Redis: status, progress counters, running units, cancel flag.

A job has `units` work units. Each unit is accounted for exactly once (a Redis set),
so a redelivered unit rewrites its outputs but counts nothing twice. Transitions are
Lua scripts, atomic under concurrent workers.
"""
from __future__ import annotations

import json
import time

import redis

from shared.settings import Settings

FINAL = ("succeeded", "failed", "cancelled")
TTL_S = 7 * 24 * 3600  # live state of a finished job; the manifest in storage stays

_START = """
-- KEYS: hash, running; ARGV: unit, now
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 'cancelled' end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return st end
redis.call('SADD', KEYS[2], ARGV[1])
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started', ARGV[2])
end
return 'ok'
"""

_FINISH = """
-- KEYS: hash, units, running; ARGV: unit, done, failed, error, now, skipped
redis.call('SREM', KEYS[3], ARGV[1])
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 and ARGV[6] == '0' then
  redis.call('HINCRBY', KEYS[1], 'done', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
  if ARGV[4] ~= '' and redis.call('HEXISTS', KEYS[1], 'error') == 0 then
    redis.call('HSET', KEYS[1], 'error', ARGV[4])
  end
end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return '' end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then
  if redis.call('SCARD', KEYS[3]) == 0 then
    redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished', ARGV[5])
    return 'cancelled'
  end
  return ''
end
if redis.call('SCARD', KEYS[2]) >= tonumber(redis.call('HGET', KEYS[1], 'units')) then
  if redis.call('HSETNX', KEYS[1], 'complete', '1') == 1 then return 'complete' end
end
return ''
"""

_CANCEL = """
-- KEYS: hash, running; ARGV: now
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return st end
redis.call('HSET', KEYS[1], 'cancel', '1')
if redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished', ARGV[1])
  return 'cancelled'
end
return 'cancelling'
"""


class JobStore:
    def __init__(self, s: Settings, client: redis.Redis | None = None):
        self.r = client or redis.Redis.from_url(s.redis_url, decode_responses=True,
                                                socket_timeout=10, socket_connect_timeout=5)
        self._start = self.r.register_script(_START)
        self._finish = self.r.register_script(_FINISH)
        self._cancel = self.r.register_script(_CANCEL)

    @staticmethod
    def _keys(job: str) -> tuple[str, str, str]:
        return f"xaiq:job:{job}", f"xaiq:job:{job}:units", f"xaiq:job:{job}:running"

    def create(self, job: str, *, kind: str, model: str, methods: dict, total: int, units: int,
               name: str | None = None) -> None:
        h, _, _ = self._keys(job)
        now = time.time()
        self.r.hset(h, mapping={
            "kind": kind, "model": model, "methods": json.dumps(methods), "name": name or "",
            "status": "queued", "total": total, "done": 0, "failed": 0, "units": units,
            "created": now,
        })
        self.r.zadd("xaiq:jobs", {job: now})
        self.count(**{f"{kind}s_submitted": 1})

    def get(self, job: str) -> dict | None:
        h = self.r.hgetall(self._keys(job)[0])
        if not h:
            return None
        return {
            "id": job, "kind": h.get("kind", "job"), "name": h.get("name") or None,
            "status": h["status"], "model": h["model"], "methods": json.loads(h["methods"]),
            "progress": {"total": int(h["total"]), "done": int(h["done"]), "failed": int(h["failed"])},
            "created": float(h["created"]),
            "started": float(h["started"]) if h.get("started") else None,
            "finished": float(h["finished"]) if h.get("finished") else None,
            "error": h.get("error") or None,
        }

    def ids(self, offset: int = 0, limit: int = 50) -> list[str]:
        """Newest first."""
        return self.r.zrevrange("xaiq:jobs", offset, offset + limit - 1)

    def start_unit(self, job: str, unit: int) -> str:
        """'ok' to run; else why not ('cancelled', 'missing' or a final status)."""
        h, _, running = self._keys(job)
        return self._start(keys=[h, running], args=[unit, time.time()])

    def finish_unit(self, job: str, unit: int, done: int, failed: int, error: str = "",
                    skipped: bool = False) -> str:
        """Accounts the unit once. Returns 'complete' to exactly one caller when every unit
        is accounted for, 'cancelled' when this call ended a cancelled job, else ''."""
        h, units, running = self._keys(job)
        return self._finish(keys=[h, units, running],
                            args=[unit, done, failed, error[:2000], time.time(), int(skipped)])

    def cancel(self, job: str) -> str:
        h, _, running = self._keys(job)
        return self._cancel(keys=[h, running], args=[time.time()])

    def cancelled(self, job: str) -> bool:
        return self.r.hget(self._keys(job)[0], "cancel") == "1"

    def set_final(self, job: str, status: str, error: str | None = None) -> None:
        keys = self._keys(job)
        mapping = {"status": status, "finished": time.time()}
        if error:
            mapping["error"] = error[:2000]
        self.r.hset(keys[0], mapping=mapping)
        self.count(**{f"jobs_{status}": 1})
        for k in keys:
            self.r.expire(k, TTL_S)

    # Service-wide counters (read by the API's /metrics, so they add up across processes).
    def count(self, **amounts: float) -> None:
        pipe = self.r.pipeline()
        for field, amount in amounts.items():
            pipe.hincrbyfloat("xaiq:stats", field, amount)
        pipe.execute()

    def stats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.r.hgetall("xaiq:stats").items()}

    def ping(self) -> None:
        self.r.ping()
