"""`xaiq audit PATH_OR_PREFIX --model NAME [--server URL]`: against a server it uploads,
submits and polls; without one it runs the audit on the single-machine stack. Either
way the report lands in a local folder and its path is printed."""
from __future__ import annotations

import json
import os
from pathlib import Path

from client.sdk import Client


def audit_with(client: Client, args) -> int:
    methods = {m: {} for m in args.method} if args.method else {"saliency": {}}
    audit = client.audit(args.dataset, model=args.model, methods=methods)
    print(f"audit {audit}: {client.audit_status(audit)['progress']['total']} images", flush=True)
    state = client.wait(audit, progress=True, path="/v1/audits")
    if state["status"] != "succeeded":
        print(f"audit {state['status']}: {state.get('error')}")
        return 1
    html = client.download_report(audit, Path(args.out) / audit)
    report = json.loads((html.parent / "report.json").read_text())
    print(f"accuracy {report['accuracy']:.3f} on {report['n_images']} images; {len(report['flags'])} flag(s)")
    for flag in report["flags"]:
        print(f"  {flag['kind']} in class {flag['class_name']!r}: region {flag['evidence']['region']}")
    print(f"report: {html.resolve()}")
    return 0


def run_audit(args) -> int:
    server = args.server or os.environ.get("XAIQ_SERVER")
    if server:
        return audit_with(Client(server), args)
    from client.cli import register_digits, tenant_key
    from client.stack import Stack

    stack = Stack(Path(".xaiq/audit"), workers=args.workers, api_port=0, s3_port=0, redis_port=0)
    print(f"no --server: starting the single-machine stack with {args.workers} worker(s) …", flush=True)
    try:
        stack.start()
        if args.model == "digits-cnn" and not args.weights:
            register_digits(Client(stack.api_url, stack.api_key))
        client = Client(stack.api_url, tenant_key(stack))
        if args.weights:
            info = client.register_model(json.loads(Path(args.spec).read_text()), args.weights, replace=True)
            if info["status"] != "ready":
                print(f"error: the model is {info['status']}: {info.get('error')}")
                return 1
        return audit_with(client, args)
    finally:
        stack.stop()
