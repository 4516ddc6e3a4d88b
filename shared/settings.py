"""One way to configure xaiq: environment variables `XAIQ_*` (or a `.env` file)."""
from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XAIQ_", env_file=".env", extra="ignore",
                                      use_attribute_docstrings=True)

    # --- Redis: the Celery broker and the live state of jobs.
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis for job state, broker and results; keep its append-only file on."""
    queue: str = "xaiq"
    """Celery queue that workers consume."""
    redis_prefix: str = Field("xaiq", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    """Prefix of every Redis key of this deployment (two deployments may share one Redis)."""

    # --- Object storage (MinIO or any S3).
    s3_endpoint: str = "http://127.0.0.1:9000"
    """S3 endpoint the API and workers talk to."""
    s3_access_key: str = "xaiq"
    """S3 access key (compose: also the MinIO root user)."""
    s3_secret_key: str = "xaiq-secret"
    """S3 secret key; `xaiq up` makes a random one."""
    s3_region: str = "us-east-1"
    """Region used to sign requests (given, so no location lookup)."""
    bucket: str = "xaiq"
    """One bucket holds every tenant's objects under tenants/{name}/ and the shared models under models/."""
    url_expiry_s: int = Field(900, ge=1, le=7 * 24 * 3600)
    """Lifetime of the signed result URLs the API gives (`?exp=&sig=`); a URL also stops working as soon
    as the key it was made for is revoked."""
    storage_timeout_s: float = Field(5.0, gt=0)
    """Connect and read timeout of one storage request of a worker (the API's: `api_wait_s`)."""
    storage_retry_s: float = Field(120.0, ge=0)
    """How long a worker keeps retrying storage (with backoff) before a unit fails; the API gives up
    after twice `api_wait_s` and answers 503."""

    # --- API.
    api_key: str = ""
    """The admin key: manages tenants' keys (`xaiq keys`) and is itself tenant 'admin'. Empty: no
    authentication at all, one tenant 'default' (for a laptop only)."""
    max_upload_mb: int = 256
    """Largest body of a request that is not streamed (a model's weights); larger ones get 413."""
    max_dataset_gb: float = Field(64.0, gt=0)
    """Largest streamed request (a job's images, an upload, a dataset archive); it is never held in memory."""
    max_image_mb: int = Field(64, ge=1)
    """Largest image file (or archive entry, inflated); larger ones are refused or skipped."""
    max_json_mb: int = Field(16, ge=1)
    """Largest JSON body or `spec` field; larger ones get 413 before they are parsed."""
    max_json_depth: int = Field(32, ge=4)
    """Deepest nesting of a JSON body or `spec` field; deeper ones get 400 before they are parsed."""
    max_image_pixels: int = 4096 * 4096
    """Largest input image (width x height); larger ones get 413."""
    max_images_per_job: int = 1_000_000
    """Most images in one job or audit (also files in one multipart request); more get 413."""
    decode_gflop_per_mpixel: float = Field(0.1, ge=0)
    """What decoding costs, counted in the estimate: GFLOP per million decoded pixels (read from the images'
    headers at submit), so that large images are bounded by the cost limits like model passes."""
    session_hours: float = Field(12.0, gt=0)
    """Lifetime of a browser sign-in."""
    api_wait_s: float = Field(1.0, gt=0, le=30)
    """Longest the API waits for one Redis or storage answer (connect, then read; storage gets twice this
    in all, retries included). Each API process asks both every quarter of it in a background probe that
    gives up after half of it: once two probes in a row got no answer, calls to that part fail at once
    (503 with Retry-After), requests already waiting on it are released, and /readyz answers from the probe."""
    metrics_public: bool = False
    """Whether /metrics answers without a key (for a scraper inside a private network). By default it
    needs the admin key (`Authorization: Bearer`), since even service-wide totals (jobs, images, queue
    depth) tell one tenant about the others' activity. It never shows a tenant's name or own numbers."""

    # --- Costs: estimates in GFLOP (forward passes of one image x the model's GFLOP per image).
    max_job_gflop: float = Field(3e7, gt=0)
    """Largest estimated cost of one job or audit; larger ones get 413 with the estimate."""
    max_tenant_gflop: float = Field(1e8, gt=0)
    """Most estimated cost a tenant may have queued or running; beyond it 429 (per tenant: `xaiq tenants`)."""
    max_tenant_units: int = Field(10000, ge=1)
    """Most work units a tenant may have queued or running; a job with more gets 413, beyond it 429."""
    max_tenant_jobs: int = Field(100, ge=1)
    """Most unfinished jobs and audits of one tenant; beyond it 429."""

    # --- Work units.
    unit_size: int = Field(0, ge=0, le=4096)
    """Images per work unit; 0: sized by cost, so that each unit is about `unit_gflop` of work (at least
    8 images, at most 1024), big enough to fill the device and make storage requests few, small enough
    to spread over workers."""
    unit_gflop: float = Field(2000.0, gt=0)
    """The work of one unit when units are sized by cost (GFLOP of the estimate)."""
    unit_retries: int = 3
    """Retries of a failing work unit before its images count as failed."""
    lease_s: float = Field(30.0, ge=3)
    """A running unit's lease in Redis, renewed every third of it; a unit whose lease lapses (its
    process died) is queued again by the reaper of any worker or API process."""
    reap_every_s: float = Field(10.0, gt=0)
    """How often a reaper looks for lapsed leases, missing queue tokens and stuck cancels."""
    cancel_grace_s: float = Field(3.0, ge=0)
    """A cancelled job whose running units have not stopped after this long is ended by the reaper."""
    task_time_limit_s: int = 1800
    """Hard limit of one work unit; must stay below visibility_timeout_s."""
    visibility_timeout_s: int = 3600
    """Last resort: Redis redelivers a Celery message unacknowledged this long (leases act sooner)."""

    # --- Worker.
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""
    torch_threads: int = 0
    """Intra-op threads per worker process; 0 leaves torch's default."""
    model_inspect_timeout_s: float = Field(60.0, gt=0)
    """Wall-clock limit of loading and checking an uploaded model in its confined process."""
    model_inspect_memory_mb: int = Field(4096, ge=512)
    """Address-space limit of that process."""
    model_inspect_warm: bool = True
    """Keep one warm, equally confined process per worker (the zygote) that forks the confined compute
    processes and inspections (a fork instead of about 10 s of imports; costs some 0.5 GB of memory)."""
    compute_memory_mb: int = Field(8192, ge=256)
    """Resident memory a model's compute process may hold; past it the process is killed and its unit's
    images fail with that reason."""
    compute_warm: int = Field(2, ge=1, le=16)
    """Compute processes a worker keeps loaded (one per tenant and model version)."""
    compute_grace_s: float = Field(60.0, gt=0)
    """The fixed part of a unit's time budget (loading, measuring batch sizes, the first passes)."""
    compute_min_gflops: float = Field(10.0, gt=0)
    """The slowest device speed assumed when a unit's estimated cost becomes its time budget (GFLOP/s):
    budget = compute_grace_s + unit GFLOP / compute_min_gflops. Past it the compute process is killed."""
    worker_metrics_port: int = 0
    """If set, each worker serves Prometheus metrics on this port (+ its process index)."""

    # --- Throughput: what runs beside the device, and how models run (see bench/README.md).
    io_threads: int = Field(8, ge=1, le=64)
    """Threads per worker process that read, decode, encode and write beside the device work (at most
    eight tasks per thread wait; beyond that the device waits, so memory stays bounded)."""
    unit_figure: bool = True
    """Render each unit's composite figure (`figure.png`), in the I/O threads; off saves its CPU."""
    png_level: int = Field(1, ge=0, le=9)
    """zlib level of the pictures: 1 is several times faster than 6 (PIL's default) for a few % more bytes."""
    fold_batchnorm: bool = True
    """Fold eval-mode batch norm into the convolution before it, in the copy that forward-only passes use
    (LIME's scoring, audit curves, predictions); gradients always use the model as registered."""
    channels_last: Literal["auto", "on", "off"] = "auto"
    """NHWC weights and inputs for forward-only passes; 'auto': on for models with a Conv2d (faster with
    oneDNN and tensor cores), off otherwise."""
    compile: Literal["off", "on", "cuda-graphs"] = "off"
    """torch.compile the forward-only copies ('on': a dynamic batch dimension; 'cuda-graphs': mode
    reduce-overhead, batches padded to powers of two). Each worker then pays the compilation on its first
    unit of a model (about 30 s on a 2-core CPU for a 35% faster food-11 forward): for long-running
    workers, where bench/throughput.py --compile shows a gain on that device."""
    batch_measure_s: float = Field(8.0, ge=0)
    """Seconds one batch-size measurement may take: the fastest batch is measured once per model, input
    shape, device, method and precision (median of 3 timings per size) and shared through Redis. 0: no
    measuring, a default from the input size."""


@lru_cache
def get_settings() -> Settings:
    return Settings()


def markdown_table() -> str:
    """The README's configuration table, from the fields above."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, f in Settings.model_fields.items():
        default = f"`{f.default!r}`" if f.default not in ("", None) else "empty"
        text = " ".join((f.description or "").split()).replace("|", "\\|")
        rows.append(f"| `XAIQ_{name.upper()}` | {default} | {text} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
