"""`xaiq up`, `xaiq down` and `xaiq demo`: the single-machine stack from the command line.
`up` stops everything it started on Ctrl-C, SIGTERM or SIGHUP alike (a part that does not
stop within --grace seconds is killed); `down` does the same from another terminal."""
from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path

from client.cli_common import CliError, parse_json, say
from client.sdk import ApiError, Client

DEFAULT_METHODS = {"saliency": {}, "gradcam": {}, "lime": {"num_samples": 300, "n_segments": 50},
                   "filters": {"layer": "cnn.2", "filters": [0, 1, 2, 3], "iterations": 50}}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Stopped(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP: stop."""


def register_digits(client: Client) -> dict:
    """The shipped demo model (trained on scikit-learn's digits), shared with every tenant
    (needs the admin key); kept as it is when the same weights are registered already."""
    import hashlib

    from worker.models import digits

    weights = (digits.WEIGHTS / "digits-cnn.safetensors").read_bytes()
    try:
        info = client.model("digits-cnn")
        if info["status"] == "ready" and info.get("weights_sha256") == hashlib.sha256(weights).hexdigest():
            return info
    except ApiError as e:
        if e.status != 404:
            raise
    return client.register_model(digits.manifest(), weights, replace=True, shared=True)


def tenant_key(stack, tenant: str = "local") -> str:
    """A key of an ordinary tenant for the single-machine stack (made once, kept in stack.json)."""
    if not stack.tenant_key:
        stack.tenant_key = Client(stack.api_url, stack.api_key).create_key(tenant, "made by xaiq up")["key"]
        stack.save_state()
    return stack.tenant_key


def write_digit_samples(folder: Path, n: int) -> list[Path]:
    from worker.models.digits import digit_images

    folder.mkdir(parents=True, exist_ok=True)
    images, labels = digit_images(n)
    paths = []
    for i, (img, label) in enumerate(zip(images, labels)):
        p = folder / f"digit-{i:04d}-{label}.png"
        img.save(p)
        paths.append(p)
    return paths


def _raise_stopped(signum, frame):
    raise Stopped(signal.Signals(signum).name)


@contextlib.contextmanager
def supervised(stack):
    """Run the body; whatever ends it (Ctrl-C, SIGTERM, SIGHUP, an error), stop the stack,
    with further signals ignored until everything is stopped."""
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    # SIGINT too: a shell without job control starts background commands with SIGINT ignored,
    # and Python then installs no handler of its own; `up` stops on it all the same.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stopped)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        started = bool(stack.spawned)
        if started:
            say("stopping …")
        stack.stop()
        if started:
            say("stopped")
        for sig, handler in before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def supervise(stack) -> None:
    while True:
        time.sleep(1)
        stack.restart_dead()


def make_stack(args, workers: int, gpus: list[str] | None = None):
    from client.stack import Stack

    return Stack(Path(args.dir), workers=workers, gpus=gpus or [], api_port=args.port, s3_port=args.s3_port,
                 redis_port=args.redis_port, api_key=getattr(args, "api_key", ""),
                 torch_threads=getattr(args, "torch_threads", 0), grace=args.grace)


def cmd_up(args) -> int:
    gpus = [g for g in args.gpus.split(",") if g] if args.gpus else []
    stack = make_stack(args, args.workers, gpus)
    try:
        with supervised(stack):
            stack.start()
            if not args.no_demo_model:
                register_digits(Client(stack.api_url, stack.api_key))
            key = tenant_key(stack)
            print(f"xaiq is up ({len(gpus) or args.workers} worker(s){' on GPUs ' + args.gpus if gpus else ''}); "
                  f"data and ports are kept in {stack.root}\n"
                  f"  API:         {stack.api_url}   (docs: {stack.api_url}/docs)\n"
                  f"  pages:       {stack.api_url}/ui   (sign in with a key below)\n"
                  f"  tenant key:  {key}   (tenant 'local': export XAIQ_API_KEY=...)\n"
                  f"  admin key:   {stack.api_key}   (xaiq keys create --tenant NAME)\n"
                  f"  S3:          {stack.s3_url}\n  Redis:       {stack.redis_url}\n"
                  f"  logs:        {stack.logs}\n"
                  f"Press Ctrl-C to stop (or run `xaiq down --dir {args.dir}` elsewhere).", flush=True)
            supervise(stack)
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_down(args) -> int:
    from client.stack import down

    root = Path(args.dir)
    if not (root / "stack.json").exists():
        raise CliError(f"no stack in {root} (it has no stack.json): give the folder `xaiq up --dir` used", 1)
    stopped = down(root, args.grace)
    print(f"stopped the stack in {root}: {', '.join(stopped)}" if stopped else f"no stack is running in {root}")
    return 0


def run_demo(stack, args, methods: dict) -> int:
    t0 = time.monotonic()
    stack.start()
    model = register_digits(Client(stack.api_url, stack.api_key))
    client = Client(stack.api_url, tenant_key(stack))
    print(f"registered model {model['name']} ({model['parameters']} parameters, {len(model['layers'])} layers)")
    paths = write_digit_samples(stack.root / "samples", args.images)
    job = client.submit(paths, model="digits-cnn", methods=methods, name="demo")
    print(f"submitted job {job}: {len(paths)} images × {', '.join(methods)}")
    state = client.wait(job, progress=True)
    out = client.download(job, Path(args.out))
    images = json.loads((out / "results.json").read_text())["images"]
    correct = sum(1 for it in images if it.get("prediction") and
                  it["prediction"]["class"] == Path(it["name"]).stem.rsplit("-", 1)[1])
    print(f"job {state['status']}: {state['progress']['done']} done, {state['progress']['failed']} failed, "
          f"{correct}/{len(images)} predicted right, in {time.monotonic() - t0:.1f} s in all")
    print(f"results (PNG pictures, raw .npy maps, results.json): {out.resolve()}")
    if args.keep:
        print(f"pages: {stack.api_url}/ui/jobs/{job} (sign in with the key {stack.tenant_key}) — Ctrl-C to stop")
        supervise(stack)
    return 0 if state["status"] == "succeeded" else 1


def cmd_demo(args) -> int:
    """Start the single-machine stack, submit a bulk job over HTTP, wait, fetch the results."""
    methods = parse_json(args.methods, "--methods", '{"saliency": {}}') if args.methods else DEFAULT_METHODS
    stack = make_stack(args, args.workers)
    print(f"starting Redis, the S3 server, the API and {args.workers} worker(s) under {args.dir}/ …", flush=True)
    try:
        with supervised(stack):
            return run_demo(stack, args, methods)
    except KeyboardInterrupt:
        return 0


def add_stack_flags(sp, folder: str) -> None:
    sp.add_argument("--dir", default=folder, help=f"the stack's folder: ports, keys, data and logs (default {folder})")
    sp.add_argument("--port", type=int, help="the API's port (default: the folder's, else 8000; 0: any free port)")
    sp.add_argument("--redis-port", type=int, help="Redis's port (default: the folder's, else a free one)")
    sp.add_argument("--s3-port", type=int, help="the S3 server's port (default: the folder's, else a free one)")
    sp.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                    help="on stop, how long a part may take before it is killed (default 10)")


def add_stack_commands(sub) -> None:
    sp = sub.add_parser("up", help="run the whole stack on this machine (no Docker, no root)")
    sp.add_argument("--workers", type=int, default=1, help="Celery worker processes (default 1)")
    sp.add_argument("--gpus", default="", help="e.g. 0,1: one worker per GPU with CUDA_VISIBLE_DEVICES set")
    add_stack_flags(sp, ".xaiq/up")
    sp.add_argument("--api-key", default="", help="the admin key on the first start (default: a new random one)")
    sp.add_argument("--torch-threads", type=int, default=0, help="torch threads per worker (default: torch's)")
    sp.add_argument("--no-demo-model", action="store_true", help="do not register the shared digits-cnn model")
    sp.set_defaults(fn=cmd_up)

    sp = sub.add_parser("down", help="stop the stack `xaiq up` runs in a folder (from any terminal)")
    sp.add_argument("--dir", default=".xaiq/up", help="the folder given to `xaiq up --dir` (default .xaiq/up)")
    sp.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                    help="how long a part may take to stop before it is killed (default 10)")
    sp.set_defaults(fn=cmd_down)

    sp = sub.add_parser("demo", help="the main job on the single-machine stack: a bulk job of sample images")
    sp.add_argument("--images", type=int, default=64, help="how many sample digits to explain (default 64)")
    sp.add_argument("--workers", type=int, default=1, help="Celery worker processes (default 1)")
    sp.add_argument("--methods", default="", help="JSON object of methods (default: saliency, gradcam, lime, filters)")
    add_stack_flags(sp, ".xaiq/demo")
    sp.add_argument("--out", default="xaiq-results", help="results go to OUT/<job>/ (default xaiq-results)")
    sp.add_argument("--keep", action="store_true", help="keep the stack running to browse the pages")
    sp.set_defaults(fn=cmd_demo)
