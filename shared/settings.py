"""One way to configure xaiq: environment variables `XAIQ_*` (or a `.env` file)."""
from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XAIQ_", env_file=".env", extra="ignore")

    # --- Redis: the Celery broker and the live state of jobs.
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis for job state, broker and results (XAIQ_REDIS_URL)."""
    queue: str = "xaiq"
    """Celery queue that workers consume (XAIQ_QUEUE)."""

    # --- Object storage (MinIO or any S3).
    s3_endpoint: str = "http://127.0.0.1:9000"
    """S3 endpoint the API and workers talk to (XAIQ_S3_ENDPOINT)."""
    s3_public_endpoint: str = ""
    """Endpoint that clients reach; presigned URLs are signed for it. Empty: s3_endpoint."""
    s3_access_key: str = "xaiq"
    """S3 access key (compose: also the MinIO root user)."""
    s3_secret_key: str = "xaiq-secret"
    """S3 secret key; `xaiq up` makes a random one."""
    s3_region: str = "us-east-1"
    """Region used to sign requests (given, so no location lookup)."""
    bucket: str = "xaiq"
    """One bucket holds inputs/, models/, jobs/, audits/ (XAIQ_BUCKET)."""
    url_expiry_s: int = Field(3600, ge=1, le=7 * 24 * 3600)
    """Lifetime of presigned result URLs (at most 7 days)."""

    # --- API.
    api_key: str = ""
    """If set, every /v1 request needs `Authorization: Bearer <key>` (or X-API-Key)."""
    max_upload_mb: int = 256
    """Largest request body; larger uploads get 413."""
    max_image_pixels: int = 4096 * 4096
    """Largest input image (width x height); larger ones get 413."""
    max_images_per_job: int = 20000
    """Most images in one job or audit; more get 413."""
    model_inspect_timeout_s: float = 60.0
    """How long POST /v1/models waits for a worker to load and inspect the weights."""

    # --- Work units.
    unit_size: int = Field(32, ge=1, le=4096)
    """Images per work unit: big enough to fill the device, small enough to spread."""
    unit_retries: int = 3
    """Retries of a failing work unit before its images count as failed."""
    task_time_limit_s: int = 1800
    """Hard limit of one work unit; must stay below visibility_timeout_s."""
    visibility_timeout_s: int = 3600
    """Redis redelivers an unacknowledged unit after this long."""

    # --- Worker.
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""
    torch_threads: int = 0
    """Intra-op threads per worker process; 0 leaves torch's default."""
    model_cache_size: int = 4
    """Models kept loaded per worker process."""
    worker_metrics_port: int = 0
    """If set, each worker serves Prometheus metrics on this port (+ its process index)."""


@lru_cache
def get_settings() -> Settings:
    return Settings()
