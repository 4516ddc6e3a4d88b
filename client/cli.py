"""The `xaiq` command line."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from client.sdk import ApiError, Client

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_METHODS = {"saliency": {}, "gradcam": {}, "lime": {"num_samples": 300, "n_segments": 50},
                   "filters": {"layer": "cnn.2", "filters": [0, 1, 2, 3], "iterations": 50}}


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


def image_paths(args: list[str]) -> list[Path]:
    """Files as given, folders as their images (sorted)."""
    return [p for a in args for p in (sorted(f for f in Path(a).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
                                      if Path(a).is_dir() else [Path(a)])]


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


def cmd_up(args) -> int:
    from client.stack import PortTaken, Stack

    gpus = [g for g in args.gpus.split(",") if g] if args.gpus else []
    stack = Stack(Path(args.dir), workers=args.workers, gpus=gpus, api_port=args.port, api_key=args.api_key,
                  torch_threads=args.torch_threads)
    try:
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
              f"  logs:        {stack.logs}\nPress Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(1)
            stack.restart_dead()
    except PortTaken as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    finally:
        stack.stop()


def cmd_demo(args) -> int:
    """Start the single-machine stack, submit a bulk job over HTTP, wait, fetch the results."""
    from client.stack import Stack

    root = Path(args.dir)
    stack = Stack(root, workers=args.workers, api_port=args.port)
    print(f"starting Redis, the S3 server, the API and {args.workers} worker(s) under {root}/ …", flush=True)
    t0 = time.monotonic()
    try:
        stack.start()
        model = register_digits(Client(stack.api_url, stack.api_key))
        client = Client(stack.api_url, tenant_key(stack))
        print(f"registered model {model['name']} ({model['parameters']} parameters, {len(model['layers'])} layers)")
        paths = write_digit_samples(root / "samples", args.images)
        methods = json.loads(args.methods) if args.methods else DEFAULT_METHODS
        job = client.submit(paths, model="digits-cnn", methods=methods, name="demo")
        print(f"submitted job {job}: {len(paths)} images × {', '.join(methods)}")
        state = client.wait(job, progress=True)
        out = client.download(job, Path(args.out) / job)
        items = json.loads((out / "results.json").read_text())
        correct = sum(1 for it in items if it.get("prediction") and
                      it["prediction"]["class"] == Path(it["name"]).stem.rsplit("-", 1)[1])
        print(f"job {state['status']}: {state['progress']['done']} done, {state['progress']['failed']} failed, "
              f"{correct}/{len(items)} predicted right, in {time.monotonic() - t0:.1f} s in all")
        print(f"results (PNG pictures, raw .npy maps, results.json): {out.resolve()}")
        if args.keep:
            print(f"pages: {stack.api_url}/ui/jobs/{job} (sign in with the key {stack.tenant_key}) — Ctrl-C to stop")
            while True:
                time.sleep(1)
                stack.restart_dead()
        return 0 if state["status"] == "succeeded" else 1
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


def cmd_submit(args) -> int:
    client = Client(args.server)
    methods = {m: {} for m in args.method} if args.method else {"saliency": {}}
    if args.params:
        methods.update(json.loads(args.params))
    paths = image_paths(args.images)
    if not paths:
        print("error: no .png/.jpg/.jpeg images given", file=sys.stderr)
        return 2
    job = client.submit(paths, model=args.model, methods=methods)
    print(job, flush=True)
    if args.wait or args.out:
        state = client.wait(job, progress=True)
        print(json.dumps(state["progress"]), state["status"])
        if args.out:
            print(client.download(job, Path(args.out) / job))
    return 0


def cmd_status(args) -> int:
    print(json.dumps(Client(args.server).status(args.job), indent=1))
    return 0


def cmd_results(args) -> int:
    client = Client(args.server)
    if args.out:
        print(client.download(args.job, Path(args.out) / args.job))
    else:
        for item in client.results(args.job):
            print(json.dumps(item))
    return 0


def cmd_cancel(args) -> int:
    print(Client(args.server).cancel(args.job)["status"])
    return 0


def cmd_models(args) -> int:
    for m in Client(args.server).models():
        print(f"{m['name']:24} {m['architecture']:14} {m['status']:11} {len(m['classes'])} classes")
    return 0


def cmd_register(args) -> int:
    spec = json.loads(Path(args.spec).read_text()) if args.spec else {}
    print("uploading; a worker then checks the model (confined) …", file=sys.stderr, flush=True)
    info = Client(args.server).register_model(spec, args.weights, replace=args.replace, shared=args.shared)
    print(json.dumps(info, indent=1))
    if info["status"] != "ready":
        print(f"error: the model is {info['status']}: {info.get('error')}", file=sys.stderr)
        return 1
    return 0


def cmd_upload(args) -> int:
    paths = image_paths(args.images)
    for path in Client(args.server).upload(paths, folder=args.folder):
        print(path)
    return 0


def cmd_keys(args) -> int:
    client = Client(args.server)
    if args.action == "create":
        made = client.create_key(args.tenant, args.name or "")
        print(f"key for tenant {made['tenant']} (id {made['id']}); it is shown only now:\n{made['key']}")
    elif args.action == "list":
        for k in client.keys():
            print(f"{k['id']}  {k['tenant']:20} {time.strftime('%Y-%m-%d %H:%M', time.localtime(k['created']))}  {k['name']}")
    else:
        print(f"revoked {client.revoke_key(args.id)['revoked']}")
    return 0


def cmd_tenants(args) -> int:
    client = Client(args.server)
    limits = {k: v for k, v in (("max_job_gflop", args.max_job_gflop), ("max_tenant_gflop", args.max_tenant_gflop),
                                ("max_tenant_units", args.max_tenant_units), ("max_tenant_jobs", args.max_tenant_jobs))
              if v is not None}
    info = client.set_limits(args.tenant, **limits) if limits else client.tenant(args.tenant)
    print(json.dumps(info, indent=1))
    return 0


def add_admin_commands(sub, with_server) -> None:
    sp = with_server(sub.add_parser("keys", help="tenants' API keys (with the admin key)"))
    sp.add_argument("action", choices=["create", "list", "revoke"])
    sp.add_argument("id", nargs="?", help="revoke: the key's id (see list)")
    sp.add_argument("--tenant", help="create: the tenant the key belongs to")
    sp.add_argument("--name", help="create: a note, e.g. who uses the key")
    sp.set_defaults(fn=cmd_keys)
    sp = with_server(sub.add_parser("tenants", help="a tenant's limits and usage; set limits (admin key)"))
    sp.add_argument("tenant")
    for name, kind in (("max-job-gflop", float), ("max-tenant-gflop", float), ("max-tenant-units", int),
                       ("max-tenant-jobs", int)):
        sp.add_argument(f"--{name}", type=kind)
    sp.set_defaults(fn=cmd_tenants)
    sp = with_server(sub.add_parser("upload", help="store images (files or folders) in your uploads"))
    sp.add_argument("images", nargs="+")
    sp.add_argument("--folder", default="", help="e.g. sets/val/cat")
    sp.set_defaults(fn=cmd_upload)


def cmd_audit(args) -> int:
    from client.audit import run_audit

    return run_audit(args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xaiq", description="Explanations of PyTorch image classifiers, in bulk.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_server(sp):
        sp.add_argument("--server", help="API URL (default: $XAIQ_SERVER or http://127.0.0.1:8000); "
                                         "the key comes from $XAIQ_API_KEY")
        return sp

    sp = sub.add_parser("up", help="run the whole stack on this machine (no Docker, no root)")
    sp.add_argument("--workers", type=int, default=1)
    sp.add_argument("--gpus", default="", help="e.g. 0,1: one worker per GPU with CUDA_VISIBLE_DEVICES set")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--api-key", default="")
    sp.add_argument("--torch-threads", type=int, default=0)
    sp.add_argument("--dir", default=".xaiq/up", help="data and logs")
    sp.add_argument("--no-demo-model", action="store_true", help="do not register digits-cnn")
    sp.set_defaults(fn=cmd_up)

    sp = sub.add_parser("demo", help="the main job on the single-machine stack: a bulk job of sample images")
    sp.add_argument("--images", type=int, default=64)
    sp.add_argument("--workers", type=int, default=1)
    sp.add_argument("--methods", default="", help="JSON object of methods (default: saliency, gradcam, lime, filters)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--dir", default=".xaiq/demo")
    sp.add_argument("--out", default="xaiq-results")
    sp.add_argument("--keep", action="store_true", help="keep the stack running to browse the pages")
    sp.set_defaults(fn=cmd_demo)

    sp = with_server(sub.add_parser("submit", help="submit images (files or folders) as one job"))
    sp.add_argument("images", nargs="+")
    sp.add_argument("--model", required=True)
    sp.add_argument("--method", action="append", help="method name (repeatable; default saliency)")
    sp.add_argument("--params", help='JSON: {"lime": {"num_samples": 500}}')
    sp.add_argument("--wait", action="store_true")
    sp.add_argument("--out", help="download the results into OUT/<job>/")
    sp.set_defaults(fn=cmd_submit)

    for name, fn, hlp in (("status", cmd_status, "a job's status"), ("cancel", cmd_cancel, "cancel a job")):
        sp = with_server(sub.add_parser(name, help=hlp))
        sp.add_argument("job")
        sp.set_defaults(fn=fn)
    sp = with_server(sub.add_parser("results", help="list or download a job's results"))
    sp.add_argument("job")
    sp.add_argument("--out")
    sp.set_defaults(fn=cmd_results)
    sp = with_server(sub.add_parser("models", help="registered models"))
    sp.set_defaults(fn=cmd_models)
    sp = with_server(sub.add_parser("register", help="register a model: weights file + JSON spec file"))
    sp.add_argument("weights")
    sp.add_argument("--spec", required=True, help="JSON file: name, architecture, input, mean, std, classes")
    sp.add_argument("--replace", action="store_true", help="register a new version of an existing model")
    sp.add_argument("--shared", action="store_true", help="a model every tenant may use (admin key)")
    sp.set_defaults(fn=cmd_register)
    add_admin_commands(sub, with_server)

    sp = with_server(sub.add_parser("audit", help="audit a dataset: a folder (one sub-folder per class), "
                                                  "a .zip, or a folder of your uploads"))
    sp.add_argument("dataset")
    sp.add_argument("--model", required=True)
    sp.add_argument("--method", action="append", help="attribution method (repeatable; default saliency)")
    sp.add_argument("--out", default="xaiq-report", help="the report goes to OUT/<audit>/")
    sp.add_argument("--workers", type=int, default=1, help="without --server: workers of the local stack")
    sp.add_argument("--weights", help="without --server: weights of --model to register (with --spec)")
    sp.add_argument("--spec", help="without --server: JSON model spec for --weights")
    sp.set_defaults(fn=cmd_audit)

    args = p.parse_args(argv)
    if args.command == "keys" and ((args.action == "create") != bool(args.tenant) or
                                   (args.action == "revoke") != bool(args.id)):
        p.error("keys create needs --tenant; keys revoke needs the key's id")
    try:
        return args.fn(args)
    except ApiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
