"""Fair dispatch and leases: what a worker runs next, and what happens when it dies.

Work items (a job's unit, an audit's report, a model's inspection) wait in one list per
tenant; tenants with waiting items take turns (round robin), so a small job of one
tenant starts within one unit of another tenant's long queue. Celery carries anonymous
*tokens* (`xaiq.work`), one per waiting item: a worker that receives a token takes the
next item fairly, under a lease in Redis that it renews while it works. A process that
dies, whichever it is, stops renewing: a reaper (in every worker and API process, one at
a time) puts items with lapsed leases back at the front of their tenant's list and sends
new tokens; it also tops tokens up when some were lost with a killed Celery process.
A token that finds no item does nothing, so extra tokens are harmless.
"""
from __future__ import annotations

import json
import time

import redis

from shared.contracts import WorkItem
from shared.redis_keys import RedisKeys


def item_json(item: WorkItem) -> str:
    """The one spelling of an item (it is also its lease's member)."""
    return json.dumps(item.dump(), sort_keys=True, separators=(",", ":"))


_PUSH = """
-- KEYS: the tenant's list, active; ARGV: tenant, front (1/0), items...
for i = 3, #ARGV do
  if ARGV[2] == '1' then redis.call('LPUSH', KEYS[1], ARGV[i]) else redis.call('RPUSH', KEYS[1], ARGV[i]) end
end
if not redis.call('LPOS', KEYS[2], ARGV[1]) then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return #ARGV - 2
"""

_TAKE = """
-- KEYS: active, leases; ARGV: now, lease_s, prefix of the tenants' lists. The next tenant's oldest item, leased.
for _ = 1, redis.call('LLEN', KEYS[1]) do
  local tenant = redis.call('LPOP', KEYS[1])
  if not tenant then return false end
  local list = ARGV[3] .. tenant
  local item = redis.call('LPOP', list)
  if redis.call('LLEN', list) > 0 then redis.call('RPUSH', KEYS[1], tenant) end
  if item then
    redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[2]), item)
    return item
  end
end
return false
"""

_REAP = """
-- KEYS: active, leases; ARGV: now, prefix of the tenants' lists. Items whose lease lapsed go back to
-- the front of their list (a job's own state is not touched here: its unit runs again and is
-- counted once; a cancelled job whose unit went silent is ended by the lifecycle's reaper).
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 500)
for _, item in ipairs(lapsed) do
  redis.call('ZREM', KEYS[2], item)
  local it = cjson.decode(item)
  redis.call('LPUSH', ARGV[2] .. it.tenant, item)
  if not redis.call('LPOS', KEYS[1], it.tenant) then redis.call('RPUSH', KEYS[1], it.tenant) end
end
return #lapsed
"""

_WAITING = """
-- KEYS: active; ARGV: prefix of the tenants' lists. Items waiting in all tenants' lists.
local n = 0
for _, tenant in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do n = n + redis.call('LLEN', ARGV[1] .. tenant) end
return n
"""


class Dispatcher:
    def __init__(self, r: redis.Redis, keys: RedisKeys = RedisKeys()):
        self.r, self.k = r, keys
        self._push = r.register_script(_PUSH)
        self._take = r.register_script(_TAKE)
        self._reap = r.register_script(_REAP)
        self._waiting = r.register_script(_WAITING)

    def push(self, tenant: str, items: list[WorkItem], front: bool = False) -> int:
        """Queue items of one tenant (in order; `front`: before its waiting items)."""
        for i in range(0, len(items), 1000):
            chunk = items[i:i + 1000]
            self._push(keys=[self.k.pending(tenant), self.k.active],
                       args=[tenant, int(front), *[item_json(it) for it in (reversed(chunk) if front else chunk)]])
        return len(items)

    def take(self, lease_s: float) -> WorkItem | None:
        """The next item in fair order, leased for `lease_s`; None when nothing waits."""
        raw = self._take(keys=[self.k.active, self.k.leases], args=[time.time(), lease_s, self.k.pending_prefix])
        return WorkItem.model_validate_json(raw) if raw else None

    def renew(self, item: WorkItem, lease_s: float) -> bool:
        """Extend a held lease; False if it lapsed meanwhile (the item was queued again)."""
        member = item_json(item)
        return bool(self.r.zadd(self.k.leases, {member: time.time() + lease_s}, xx=True, ch=True)) or \
            self.r.zscore(self.k.leases, member) is not None

    def release(self, item: WorkItem) -> None:
        self.r.zrem(self.k.leases, item_json(item))

    def reap(self) -> int:
        """Queue again every item whose lease lapsed; returns how many (send that many tokens)."""
        return int(self._reap(keys=[self.k.active, self.k.leases], args=[time.time(), self.k.pending_prefix]))

    def waiting(self) -> int:
        return int(self._waiting(keys=[self.k.active], args=[self.k.pending_prefix]))

    def leased(self) -> int:
        return int(self.r.zcard(self.k.leases))

    def drop_tenant_job(self, tenant: str, job: str) -> int:
        """Remove a cancelled job's waiting items (they would be skipped anyway)."""
        key = self.k.pending(tenant)
        pipe = self.r.pipeline(transaction=False)   # one round trip, however many units the job has
        for raw in self.r.lrange(key, 0, -1):
            if json.loads(raw).get("job") == job:
                pipe.lrem(key, 1, raw)
        return sum(pipe.execute())
