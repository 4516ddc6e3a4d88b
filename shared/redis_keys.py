"""Every Redis key xaiq uses, spelled here and nowhere else (Lua scripts get them as KEYS or
build them from `prefix`, passed as an argument). One `RedisKeys` per deployment; tests give
each its own prefix so that they never touch the keys of a running stack."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "xaiq"

    # --- jobs (shared.jobs): a hash per job and its sets; the tenant's usage and job list
    def job(self, job: str) -> str:
        return f"{self.prefix}:job:{job}"

    def job_units(self, job: str) -> str:
        """Units accounted for (each once)."""
        return f"{self.job(job)}:units"

    def job_running(self, job: str) -> str:
        return f"{self.job(job)}:running"

    def job_attempts(self, job: str) -> str:
        """Starts per unit."""
        return f"{self.job(job)}:attempts"

    def usage(self, tenant: str) -> str:
        return f"{self.prefix}:usage:{tenant}"

    def tenant_jobs(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:jobs"

    def tenant_limits(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:limits"

    @property
    def cancelling(self) -> str:
        """Cancelled jobs whose units have not all stopped (zset by time of the cancel)."""
        return f"{self.prefix}:cancelling"

    @property
    def stats(self) -> str:
        """Service-wide counters (/metrics)."""
        return f"{self.prefix}:stats"

    # --- dispatch (shared.dispatch): tenants in turn, their waiting items, leases
    @property
    def active(self) -> str:
        return f"{self.prefix}:active"

    @property
    def leases(self) -> str:
        return f"{self.prefix}:leases"

    def pending(self, tenant: str) -> str:
        return f"{self.prefix}:pending:{tenant}"

    @property
    def pending_prefix(self) -> str:
        """What Lua prepends to a tenant's name for its list (keep equal to `pending`)."""
        return f"{self.prefix}:pending:"

    @property
    def reaper(self) -> str:
        """The lock of the one reaper pass running."""
        return f"{self.prefix}:reaper"

    # --- tenants (shared.tenants): keys by digest, ids, browser sessions
    @property
    def api_keys(self) -> str:
        return f"{self.prefix}:keys"

    @property
    def key_ids(self) -> str:
        return f"{self.prefix}:key-ids"

    def session(self, token_digest: str) -> str:
        return f"{self.prefix}:session:{token_digest}"

    # --- workers: shared measurements and remembered verdicts
    @property
    def batch_sizes(self) -> str:
        return f"{self.prefix}:batch-sizes"

    def inspected(self, content: str) -> str:
        """A model inspection's verdict, by the content it depends on."""
        return f"{self.prefix}:inspected:{content}"

    def model_lock(self, owner: str, name: str) -> str:
        return f"{self.prefix}:lock:model:{owner}:{name}"


KEYS = RedisKeys()
