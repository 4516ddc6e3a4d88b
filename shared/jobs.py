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

# Shared Lua: end a job in a final status once (TTL on its keys, a service-wide count).
_END = """
local function finish(keys, status, now, err)
  local st = redis.call('HGET', keys[1], 'status')
  if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return false end
  redis.call('HSET', keys[1], 'status', status, 'finished', now)
  if err ~= '' then redis.call('HSET', keys[1], 'error', err) end
  redis.call('HINCRBYFLOAT', 'xaiq:stats', 'jobs_' .. status, 1)
  for _, k in ipairs(keys) do redis.call('EXPIRE', k, %d) end
  return true
end
""" % TTL_S

_START = """
-- KEYS: hash, running, attempts; ARGV: unit, now, max_attempts
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 'cancelled' end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return st end
-- every start counts, retries and redeliveries after a crash alike: a unit that kills
-- its worker each time (out of memory, say) must end, not loop
if redis.call('HINCRBY', KEYS[3], ARGV[1], 1) > tonumber(ARGV[3]) then return 'exhausted' end
redis.call('SADD', KEYS[2], ARGV[1])
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started', ARGV[2])
end
return 'ok'
"""

_FINISH = _END + """
-- KEYS: hash, units, running, attempts; ARGV: unit, done, failed, error, now, skipped, seconds
redis.call('SREM', KEYS[3], ARGV[1])
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 and ARGV[6] == '0' then
  redis.call('HINCRBY', KEYS[1], 'done', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
  if ARGV[4] ~= '' and redis.call('HEXISTS', KEYS[1], 'error') == 0 then
    redis.call('HSET', KEYS[1], 'error', ARGV[4])
  end
  redis.call('HINCRBYFLOAT', 'xaiq:stats', 'units', 1)
  redis.call('HINCRBYFLOAT', 'xaiq:stats', 'images', ARGV[2])
  redis.call('HINCRBYFLOAT', 'xaiq:stats', 'unit_seconds', ARGV[7])
end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return '' end
local complete = redis.call('SCARD', KEYS[2]) >= tonumber(redis.call('HGET', KEYS[1], 'units'))
if redis.call('HGET', KEYS[1], 'cancel') == '1' and not complete then
  if redis.call('SCARD', KEYS[3]) == 0 then
    finish(KEYS, 'cancelled', ARGV[5], '')
    return 'cancelled'
  end
  return ''
end
-- every caller that finds all units in and the job not final may finish it: finishing is
-- idempotent, so a worker that dies while finishing leaves it to the next redelivery
if complete then return 'complete' end
return ''
"""

_CANCEL = _END + """
-- KEYS: hash, units, running, attempts; ARGV: now
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return st end
-- every unit is in: the job is finishing (an audit writes its report); too late to cancel
if redis.call('SCARD', KEYS[2]) >= tonumber(redis.call('HGET', KEYS[1], 'units')) then return st end
redis.call('HSET', KEYS[1], 'cancel', '1')
if redis.call('SCARD', KEYS[3]) == 0 then
  finish(KEYS, 'cancelled', ARGV[1], '')
  return 'cancelled'
end
return 'cancelling'
"""

_SET_FINAL = _END + """
-- KEYS: hash, units, running, attempts; ARGV: status, now, error
if finish(KEYS, ARGV[1], ARGV[2], ARGV[3]) then return 1 end
return 0
"""


class JobStore:
    def __init__(self, s: Settings, client: redis.Redis | None = None):
        self.r = client or redis.Redis.from_url(s.redis_url, decode_responses=True,
                                                socket_timeout=10, socket_connect_timeout=5)
        self._start = self.r.register_script(_START)
        self._finish = self.r.register_script(_FINISH)
        self._cancel = self.r.register_script(_CANCEL)
        self._set_final = self.r.register_script(_SET_FINAL)

    @staticmethod
    def _keys(job: str) -> list[str]:
        """The job's hash, its set of units accounted for, its running units, attempts per unit."""
        return [f"xaiq:job:{job}", f"xaiq:job:{job}:units", f"xaiq:job:{job}:running", f"xaiq:job:{job}:attempts"]

    def create(self, job: str, *, kind: str, model: str, methods: dict, total: int, units: int,
               name: str | None = None) -> None:
        h = self._keys(job)[0]
        now = time.time()
        self.r.hset(h, mapping={
            "kind": kind, "model": model, "methods": json.dumps(methods), "name": name or "",
            "status": "queued", "total": total, "done": 0, "failed": 0, "units": units,
            "created": now,
        })
        self.r.zadd("xaiq:jobs", {job: now})
        self.r.zremrangebyscore("xaiq:jobs", 0, now - TTL_S)  # the list follows the live state's TTL
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

    def start_unit(self, job: str, unit: int, max_attempts: int = 1000) -> str:
        """'ok' to run; else why not: 'cancelled', 'missing', a final status, or
        'exhausted' when the unit already started `max_attempts` times."""
        h, _, running, attempts = self._keys(job)
        return self._start(keys=[h, running, attempts], args=[unit, time.time(), max_attempts])

    def finish_unit(self, job: str, unit: int, done: int, failed: int, error: str = "",
                    skipped: bool = False, seconds: float = 0.0) -> str:
        """Accounts the unit once. Returns 'complete' when every unit is accounted for and
        the job is not final yet (finishing is idempotent), 'cancelled' when this call
        ended a cancelled job, else ''."""
        return self._finish(keys=self._keys(job),
                            args=[unit, done, failed, error[:2000], time.time(), int(skipped), seconds])

    def cancel(self, job: str) -> str:
        return self._cancel(keys=self._keys(job), args=[time.time()])

    def cancelled(self, job: str) -> bool:
        return self.r.hget(self._keys(job)[0], "cancel") == "1"

    def set_final(self, job: str, status: str, error: str | None = None) -> bool:
        """End the job in `status` unless it already ended (then False)."""
        return bool(self._set_final(keys=self._keys(job), args=[status, time.time(), (error or "")[:2000]]))

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
