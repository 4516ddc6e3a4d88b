"""`xaiq audit PATH_OR_PREFIX --model NAME [--server URL]`: against a server it uploads,
submits and polls; without one it runs the audit on the single-machine stack. Either
way the report lands in a local folder and its path is printed."""
from __future__ import annotations

import json
import os
from pathlib import Path

from client.cli_common import CliError, parse_json, say, with_server
from client.sdk import Client

OPTION_FLAGS = ("faithfulness_steps", "sanity_sample", "seed")


def options_of(args) -> dict:
    """The spec's `options`: --option key=value (values read as JSON, else as text), then the named flags."""
    options = {}
    for pair in args.option or []:
        key, eq, raw = pair.partition("=")
        if not eq or not key.strip():
            raise CliError(f"--option {pair!r}: give key=value, e.g. --option precision=\"fp32\"")
        try:
            options[key.strip()] = json.loads(raw)
        except ValueError:
            options[key.strip()] = raw
    options.update({k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k) is not None})
    if args.no_shortcuts:
        options["shortcuts"] = False
    return options


def audit_with(client: Client, args) -> int:
    methods = {m: {} for m in args.method} if args.method else {"saliency": {}}
    if args.params:
        methods.update(parse_json(args.params, "--params", '{"integrated_gradients": {"steps": 16}}'))
    spec = {"options": options_of(args), **({"name": args.name} if args.name else {})}
    audit = client.audit(args.dataset, model=args.model, methods=methods, progress=False if args.quiet else None,
                         **spec)
    say(f"audit {audit}: {client.audit_status(audit)['progress']['total']} images")
    state = client.wait(audit, progress=False if args.quiet else None, path="/v1/audits")
    if state["status"] != "succeeded":
        raise CliError(f"audit {audit} {state['status']}: {state.get('error')}", 1)
    html = client.download_report(audit, Path(args.out) / audit)
    report = json.loads((html.parent / "report.json").read_text())
    near = (report.get("shortcuts") or {}).get("near_misses", [])
    print(f"accuracy {report['accuracy']:.3f} on {report['n_images']} images; {len(report['flags'])} flag(s), "
          f"{len(near)} near-miss(es)")
    for flag in report["flags"] + near:
        ev = flag["evidence"]
        print(f"  {flag['kind']} in class {flag['class_name']!r}: region {ev['region']['pixels']}, removal "
              f"{ev['removal']['accuracy_effect']:+.2f} [{ev['removal']['low']:+.2f}, {ev['removal']['high']:+.2f}], "
              f"paste {ev['paste']['accuracy_effect']:+.2f} [{ev['paste']['low']:+.2f}, {ev['paste']['high']:+.2f}]")
    print(f"report: {html.resolve()}")
    return 0


def local_audit(args) -> int:
    from client.cli_stack import register_digits, supervised, tenant_key
    from client.stack import Stack

    stack = Stack(Path(args.dir), workers=args.workers, api_port=0, s3_port=0, redis_port=0)
    say(f"no --server: starting the single-machine stack with {args.workers} worker(s) in {args.dir} …")
    with supervised(stack):
        stack.start()
        if args.model == "digits-cnn" and not args.weights:
            register_digits(Client(stack.api_url, stack.api_key))
        client = Client(stack.api_url, tenant_key(stack))
        if args.weights:
            info = client.register_model(parse_json(Path(args.spec).read_text(), "--spec", "{}"), args.weights,
                                         replace=True)
            if info["status"] != "ready":
                raise CliError(f"the model is {info['status']}: {info.get('error')}", 1)
        return audit_with(client, args)


def run_audit(args) -> int:
    if args.dataset.endswith(".zip") and not Path(args.dataset).is_file():
        raise CliError(f"no such file: {args.dataset}")
    if args.weights and not (args.spec and Path(args.spec).is_file() and Path(args.weights).is_file()):
        raise CliError("--weights needs --spec, and both files must exist")
    if args.server or os.environ.get("XAIQ_SERVER"):
        return audit_with(Client(args.server), args)
    try:
        return local_audit(args)
    except KeyboardInterrupt:
        return 130


def add_audit_command(sub) -> None:
    sp = with_server(sub.add_parser("audit", help="audit a dataset: a folder (one sub-folder per class), "
                                                  "a .zip, or a folder of your uploads"))
    sp.add_argument("dataset", help="a local folder (one sub-folder per class), a .zip, or a folder of your uploads")
    sp.add_argument("--model", required=True, help="a registered model whose classes are the sub-folders' names")
    sp.add_argument("--method", action="append", help="attribution method (repeatable; default saliency)")
    sp.add_argument("--params", help='JSON: parameters per method, e.g. {"integrated_gradients": {"steps": 16}}')
    sp.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="an audit option (repeatable; the value is read as JSON), e.g. precision=\"fp32\", "
                         "shortcut_candidates=20, shortcut_fill=blur, shortcut_min_effect=0.3")
    sp.add_argument("--faithfulness-steps", type=int, help="deletion/insertion steps (default 16)")
    sp.add_argument("--sanity-sample", type=int, help="images in the weight-randomisation check (default 16; 0: none)")
    sp.add_argument("--no-shortcuts", action="store_true", help="skip the shortcut search (regions the maps propose, "
                                                                    "tested on the model)")
    sp.add_argument("--seed", type=int, help="seed of the random parts (default 0)")
    sp.add_argument("--name", help="a name for the audit")
    sp.add_argument("--out", default="xaiq-report", help="the report goes to OUT/<audit>/ (default xaiq-report)")
    sp.add_argument("--workers", type=int, default=1, help="without --server: workers of the local stack")
    sp.add_argument("--dir", default=".xaiq/audit", help="without --server: the local stack's folder")
    sp.add_argument("--weights", help="without --server: weights of --model to register (with --spec)")
    sp.add_argument("--spec", help="without --server: JSON model spec for --weights")
    sp.add_argument("--quiet", "-q", action="store_true", help="no progress bars (they show only on a terminal)")
    sp.set_defaults(fn=run_audit)
