"""Live job state in Redis: status, progress counters, running units, cancel flag, and
each tenant's usage (unfinished jobs, open units, outstanding cost).

A job has `units` work units. Each unit is accounted for exactly once (a Redis set),
so a redelivered unit rewrites its outputs but counts nothing twice. Every transition is
a Lua script, atomic under concurrent workers and API processes; a job is ended in one
place (`_END`), whoever ends it.
"""
from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from shared.contracts import JobManifest, Progress
from shared.redis_keys import RedisKeys
from shared.settings import Settings

TTL_S = 7 * 24 * 3600  # live state of a finished job; the manifest in storage stays


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Start(StrEnum):
    """What `start_unit` says."""

    RUN = "run"              # go ahead
    EXHAUSTED = "exhausted"  # started too often (its worker died each time): count its images as failed
    SKIP = "skip"            # the job is cancelled, ended or unknown: do nothing


class Finish(StrEnum):
    """What `finish_unit` says."""

    COMPLETE = "complete"    # every unit is in and the job is not ended: the caller ends it (idempotent)
    CANCELLED = "cancelled"  # this call ended the cancelled job
    NOTHING = ""             # other units are still open, or the job had ended


@dataclass
class JobState:
    """The one shape of a job's state, from Redis or from its manifest."""

    id: str
    kind: str
    tenant: str
    status: JobStatus
    model: str
    methods: dict
    progress: Progress
    created: float
    name: str | None = None
    model_version: str | None = None
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    cost: float = 0.0

    @classmethod
    def from_hash(cls, job: str, h: dict) -> "JobState":
        num = lambda k: float(h[k]) if h.get(k) else None  # noqa: E731
        return cls(id=job, kind=h.get("kind", "job"), tenant=h.get("tenant", ""), status=JobStatus(h["status"]),
                   model=h["model"], methods=json.loads(h["methods"]),
                   progress=Progress(total=int(h["total"]), done=int(h["done"]), failed=int(h["failed"])), created=float(h["created"]),
                   name=h.get("name") or None, model_version=h.get("model_version") or None,
                   started=num("started"), finished=num("finished"), error=h.get("error") or None,
                   cost=float(h.get("cost") or 0))

    @classmethod
    def from_manifest(cls, m: JobManifest) -> "JobState":
        return cls(id=m.id, kind=m.kind, tenant=m.tenant, status=JobStatus(m.status), model=m.model,
                   methods=m.methods, progress=m.progress or Progress(total=m.inputs.count), created=m.created,
                   name=m.name, model_version=m.model_version, started=m.started, finished=m.finished,
                   error=m.error, cost=m.cost)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"], d["progress"] = str(self.status), self.progress.dump()
        return d


class LimitExceeded(Exception):
    """A tenant's limit would be passed: `what` is 'jobs', 'units' or 'gflop'."""

    def __init__(self, what: str, current: float, adding: float, limit: float):
        super().__init__(f"{what}: {current:g} in use + {adding:g} > limit {limit:g}")
        self.what, self.current, self.adding, self.limit = what, current, adding, limit


_IS_FINAL = """
local function is_final(st) return st == 'succeeded' or st == 'failed' or st == 'cancelled' end
"""

# Shared Lua: end a job in a final status once. KEYS: hash, units, running, attempts, usage,
# cancelling, stats. The tenant's usage drops what the job still held; the keys expire.
_END = _IS_FINAL + """
local function finish(keys, job, status, now, err)
  if is_final(redis.call('HGET', keys[1], 'status')) then return false end
  redis.call('HSET', keys[1], 'status', status, 'finished', now)
  if err ~= '' and redis.call('HEXISTS', keys[1], 'error') == 0 then redis.call('HSET', keys[1], 'error', err) end
  redis.call('HINCRBYFLOAT', keys[7], 'jobs_' .. status, 1)
  local left = tonumber(redis.call('HGET', keys[1], 'cost_left') or '0')
  if left > 0 then redis.call('HINCRBYFLOAT', keys[5], 'gflop', -left) end
  redis.call('HSET', keys[1], 'cost_left', 0)
  local open = tonumber(redis.call('HGET', keys[1], 'units')) - redis.call('SCARD', keys[2])
  if open > 0 then redis.call('HINCRBY', keys[5], 'units', -open) end
  redis.call('HINCRBY', keys[5], 'jobs', -1)
  redis.call('ZREM', keys[6], job)
  for i = 1, 4 do redis.call('EXPIRE', keys[i], %d) end
  return true
end
""" % TTL_S

_ADMIT = """
-- KEYS: hash, usage, tenant's job list; ARGV: job, now, fields (JSON), units, gflop, max_jobs, max_units, max_gflop
local function cur(f) return tonumber(redis.call('HGET', KEYS[2], f) or '0') end
local units, gflop = tonumber(ARGV[4]), tonumber(ARGV[5])
if cur('jobs') + 1 > tonumber(ARGV[6]) then return {'jobs', tostring(cur('jobs')), '1', ARGV[6]} end
if cur('units') + units > tonumber(ARGV[7]) then return {'units', tostring(cur('units')), ARGV[4], ARGV[7]} end
if cur('gflop') + gflop > tonumber(ARGV[8]) then return {'gflop', tostring(cur('gflop')), ARGV[5], ARGV[8]} end
for k, v in pairs(cjson.decode(ARGV[3])) do redis.call('HSET', KEYS[1], k, tostring(v)) end
redis.call('HSET', KEYS[1], 'cost_left', ARGV[5], 'unit_cost', gflop / units)
redis.call('HINCRBY', KEYS[2], 'jobs', 1)
redis.call('HINCRBY', KEYS[2], 'units', units)
redis.call('HINCRBYFLOAT', KEYS[2], 'gflop', gflop)
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], 0, tonumber(ARGV[2]) - %d)
return {'ok'}
""" % TTL_S

_START = _IS_FINAL + """
-- KEYS: hash, running, attempts; ARGV: unit, now, max_attempts
if redis.call('EXISTS', KEYS[1]) == 0 then return 'skip' end
local st = redis.call('HGET', KEYS[1], 'status')
if is_final(st) or redis.call('HGET', KEYS[1], 'cancel') == '1' then return 'skip' end
redis.call('SADD', KEYS[2], ARGV[1])
if st == 'queued' then redis.call('HSET', KEYS[1], 'status', 'running', 'started', ARGV[2]) end
-- every start counts, retries and restarts after a crash alike: a unit that kills its worker
-- each time (out of memory, say) must end, not loop
if redis.call('HINCRBY', KEYS[3], ARGV[1], 1) > tonumber(ARGV[3]) then return 'exhausted' end
return 'run'
"""

_FINISH = _END + """
-- KEYS: hash, units, running, attempts, usage, cancelling, stats; ARGV: job, unit, done, failed, error, now,
-- skipped, seconds
redis.call('SREM', KEYS[3], ARGV[2])
local ended = is_final(redis.call('HGET', KEYS[1], 'status'))
if redis.call('SADD', KEYS[2], ARGV[2]) == 1 and not ended then
  local per = tonumber(redis.call('HGET', KEYS[1], 'unit_cost') or '0')
  redis.call('HINCRBYFLOAT', KEYS[1], 'cost_left', -per)
  redis.call('HINCRBYFLOAT', KEYS[5], 'gflop', -per)
  redis.call('HINCRBY', KEYS[5], 'units', -1)
  if ARGV[7] == '0' then
    redis.call('HINCRBY', KEYS[1], 'done', ARGV[3])
    redis.call('HINCRBY', KEYS[1], 'failed', ARGV[4])
    if ARGV[5] ~= '' and redis.call('HEXISTS', KEYS[1], 'error') == 0 then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
    redis.call('HINCRBYFLOAT', KEYS[7], 'units', 1)
    redis.call('HINCRBYFLOAT', KEYS[7], 'images', ARGV[3])
    redis.call('HINCRBYFLOAT', KEYS[7], 'unit_seconds', ARGV[8])
  end
end
if ended then return '' end
-- a cancel wins over completion: the job ends cancelled once no unit runs
if redis.call('HGET', KEYS[1], 'cancel') == '1' then
  if redis.call('SCARD', KEYS[3]) == 0 and finish(KEYS, ARGV[1], 'cancelled', ARGV[6], '') then return 'cancelled' end
  return ''
end
-- every caller that finds all units in may end the job: ending is idempotent, so a worker that
-- dies while ending leaves it to the next one
if redis.call('SCARD', KEYS[2]) >= tonumber(redis.call('HGET', KEYS[1], 'units')) then return 'complete' end
return ''
"""

_CANCEL = _END + """
-- KEYS: hash, units, running, attempts, usage, cancelling, stats; ARGV: job, now
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local st = redis.call('HGET', KEYS[1], 'status')
if is_final(st) then return st end
if redis.call('HGET', KEYS[1], 'cancel') ~= '1' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1])
end
if redis.call('SCARD', KEYS[3]) == 0 then
  finish(KEYS, ARGV[1], 'cancelled', ARGV[2], '')
  return 'cancelled'
end
return 'cancelling'
"""

_SET_FINAL = _END + """
-- KEYS: hash, units, running, attempts, usage, cancelling, stats; ARGV: job, status, now, error
if finish(KEYS, ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return 1 end
return 0
"""


class _Gated(Retry):
    """Retries a broken connection once, at once; but first asks `down()` (the API's health
    probe), and while it names an outage fails at once, before any socket is touched. Every
    command and every connect of a connection passes through here."""

    def __init__(self, down: Callable[[], str]):
        super().__init__(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        self.down = down

    def __deepcopy__(self, memo):   # each connection copies its Retry; the probe is shared, not copied
        return _Gated(self.down)

    def call_with_retry(self, do, fail, *args, **kwargs):
        why = self.down()
        if why:
            raise redis.ConnectionError(why)
        return super().call_with_retry(do, fail, *args, **kwargs)


def redis_client(s: Settings, patient: bool, down: Callable[[], str] | None = None) -> redis.Redis:
    """Workers (`patient`) retry with backoff for about as long as storage. The API waits at most
    `api_wait_s` for one answer and retries only a broken connection (a restarted Redis), at once:
    a timeout is not retried, so a hung Redis costs one wait; while `down()` names an outage (the
    API's health probe), calls fail at once."""
    if patient:
        return redis.Redis.from_url(s.redis_url, decode_responses=True, socket_timeout=5,
                                    socket_connect_timeout=2, health_check_interval=15,
                                    retry=Retry(ExponentialBackoff(cap=5, base=0.2), 25),
                                    retry_on_error=[redis.ConnectionError, redis.TimeoutError])
    return redis.Redis.from_url(s.redis_url, decode_responses=True, socket_timeout=s.api_wait_s,
                                socket_connect_timeout=s.api_wait_s, health_check_interval=15,
                                retry=_Gated(down or (lambda: "")))


def release_waiting(r: redis.Redis) -> None:
    """Shut (not close: their threads do that) the sockets of `r`'s connections in use, so that
    calls waiting on a hung server fail now, as lost connections, rather than at their timeout."""
    for conn in list(getattr(r.connection_pool, "_in_use_connections", ())):
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class JobStore:
    """A job's live state in Redis (every transition one Lua script) and the tenants' usage.
    Callers go through `shared.lifecycle.JobLifecycle`, which adds what storage and the
    dispatcher must do at each step."""

    def __init__(self, s: Settings, client: redis.Redis | None = None, patient: bool = False):
        self.r = client or redis_client(s, patient)
        self.k = RedisKeys(s.redis_prefix)
        self._admit = self.r.register_script(_ADMIT)
        self._start = self.r.register_script(_START)
        self._finish = self.r.register_script(_FINISH)
        self._cancel = self.r.register_script(_CANCEL)
        self._set_final = self.r.register_script(_SET_FINAL)

    def keys_of(self, job: str, tenant: str) -> list[str]:
        """Hash, units accounted for, running units, starts per unit, the tenant's usage, the
        cancels in flight, the service's counters (the KEYS of the scripts that end a job)."""
        k = self.k
        return [k.job(job), k.job_units(job), k.job_running(job), k.job_attempts(job), k.usage(tenant),
                k.cancelling, k.stats]

    def create(self, job: str, *, tenant: str, kind: str, model: str, methods: dict, total: int, units: int,
               name: str | None = None, model_version: str = "", gflop: float = 0.0,
               limits: dict | None = None) -> None:
        """Record a queued job, unless the tenant's limits (jobs, units, gflop) would be passed
        (LimitExceeded); atomically with the tenant's usage."""
        lim = {"jobs": 1e18, "units": 1e18, "gflop": 1e300, **(limits or {})}
        fields = {"kind": kind, "tenant": tenant, "model": model, "model_version": model_version,
                  "methods": json.dumps(methods), "name": name or "", "status": JobStatus.QUEUED.value,
                  "total": total, "done": 0, "failed": 0, "units": units, "created": time.time(), "cost": gflop}
        out = self._admit(keys=[self.k.job(job), self.k.usage(tenant), self.k.tenant_jobs(tenant)],
                          args=[job, fields["created"], json.dumps(fields), units, repr(float(gflop)),
                                lim["jobs"], lim["units"], repr(float(lim["gflop"]))])
        if out[0] != "ok":
            raise LimitExceeded(out[0], float(out[1]), float(out[2]), float(out[3]))
        self.count(**{f"{kind}s_submitted": 1})

    def get(self, job: str) -> JobState | None:
        h = self.r.hgetall(self.k.job(job))
        return JobState.from_hash(job, h) if h.get("status") else None

    def ids(self, tenant: str, offset: int = 0, limit: int = 50) -> list[str]:
        """The tenant's jobs and audits, newest first."""
        return self.r.zrevrange(self.k.tenant_jobs(tenant), offset, offset + limit - 1)

    def start_unit(self, job: str, tenant: str, unit: int, max_attempts: int = 1000) -> Start:
        k = self.k
        return Start(self._start(keys=[k.job(job), k.job_running(job), k.job_attempts(job)],
                                 args=[unit, time.time(), max_attempts]))

    def finish_unit(self, job: str, tenant: str, unit: int, done: int, failed: int, error: str = "",
                    skipped: bool = False, seconds: float = 0.0) -> Finish:
        """Accounts the unit once (its images only if it ran: not `skipped`)."""
        return Finish(self._finish(keys=self.keys_of(job, tenant), args=[
            job, unit, done, failed, error[:2000], time.time(), int(skipped), seconds]))

    def cancel(self, job: str, tenant: str) -> str:
        """'cancelled' (ended now), 'cancelling' (units still run), a final status, or 'missing'."""
        return self._cancel(keys=self.keys_of(job, tenant), args=[job, time.time()])

    def cancelled(self, job: str) -> bool:
        return self.r.hget(self.k.job(job), "cancel") == "1"

    def stuck_cancels(self, older_than_s: float) -> list[str]:
        """Cancelled jobs whose running units have not reported for `older_than_s`."""
        return self.r.zrangebyscore(self.k.cancelling, 0, time.time() - older_than_s)

    def set_final(self, job: str, tenant: str, status: JobStatus, error: str | None = None) -> bool:
        """End the job in `status` unless it already ended (then False)."""
        return bool(self._set_final(keys=self.keys_of(job, tenant), args=[job, str(status), time.time(),
                                                                           (error or "")[:2000]]))

    def usage(self, tenant: str) -> dict[str, float]:
        u = self.r.hgetall(self.k.usage(tenant))
        return {"jobs": int(u.get("jobs", 0)), "units": int(u.get("units", 0)),
                "gflop": max(0.0, round(float(u.get("gflop", 0)), 3))}

    # Service-wide counters (read by the API's /metrics, so they add up across processes).
    def count(self, **amounts: float) -> None:
        pipe = self.r.pipeline()
        for field, amount in amounts.items():
            pipe.hincrbyfloat(self.k.stats, field, amount)
        pipe.execute()

    def stats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.r.hgetall(self.k.stats).items()}

    def ping(self) -> None:
        self.r.ping()
