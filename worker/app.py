"""The worker entry: `celery -A worker.app worker -Q xaiq --concurrency 1`.

CUDA does not survive fork: nothing here touches the device; each worker child
initialises torch lazily when its first unit arrives."""
from __future__ import annotations

from shared.messaging import make_celery
from shared.settings import get_settings

app = make_celery(get_settings())

from worker import tasks  # noqa: E402,F401  (registers the tasks on `app`)
