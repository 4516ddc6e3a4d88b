"""The compute boundary: a broker (the Celery worker, holding Redis, storage and leases) and
confined compute processes that hold tenants' models (`worker.confine`). `protocol` is the
wire, `server` and `ops` run inside a compute process, `client` is the broker's side."""
