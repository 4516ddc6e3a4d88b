"""`xaiq submit`, `status`, `wait`, `results`, `cancel` and `upload`. A job may be named
by a unique prefix of its id (`xaiq status 11672b06`)."""
from __future__ import annotations

import json
from pathlib import Path

from client.cli_common import (
    CliError,
    client_of,
    parse_json,
    say,
    show_json,
    when,
    with_json,
    with_server,
)
from client.inputs import check_unique, parse_labels, scan, skipped_summary


def bar(args) -> bool | None:
    """Progress bars: on a terminal only, never with --quiet."""
    return False if getattr(args, "quiet", False) else None


def images_of(args, mirror: bool = False) -> list[tuple[str, Path]]:
    """The images to send, after saying what the folders held that is not sent."""
    found = scan(args.images, mirror)
    say(*skipped_summary(found.skipped))
    if not found.files:
        raise CliError(f"no .png/.jpg/.jpeg images in {', '.join(args.images)}")
    return found.files


def methods_of(args) -> dict:
    methods = {m: {} for m in args.method} if args.method else {"saliency": {}}
    if args.params:
        params = parse_json(args.params, "--params", '{"lime": {"num_samples": 500}}')
        if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
            raise CliError('--params must map method names to parameter objects, e.g. {"lime": {"num_samples": 500}}')
        methods.update(params)
    return methods


def report_skipped(answer: dict) -> None:
    skipped = answer.get("skipped") or []
    if skipped:
        say(f"the server skipped {len(skipped)} file(s):",
            *[f"  {s.get('name')}: {s.get('reason')}" for s in skipped[:50]],
            *([f"  … and {len(skipped) - 50} more"] if len(skipped) > 50 else []))


def cmd_submit(args) -> int:
    methods = methods_of(args)
    files = images_of(args)
    check_unique(files)
    labels = parse_labels(args.labels) if args.labels else None
    if labels is not None and len(labels) != len(files):
        raise CliError(f"--labels: {len(labels)} label(s) for {len(files)} image(s); give one per image, in the "
                       f"order they are sent ({files[0][1]}, …: by path within folders)")
    spec = {k: v for k, v in (("name", args.name), ("unit_size", args.unit_size)) if v is not None}
    if args.skip_invalid:
        spec["skip_invalid"] = True
    client = client_of(args)
    answer = client.create_job(files, model=args.model, methods=methods, labels=labels, progress=bar(args), **spec)
    job = answer["id"]
    print(job, flush=True)
    report_skipped(answer)
    say(f"job {job[:8]}: {len(files)} image(s) sent, about {answer['cost']['estimate']:.3g} GFLOP; "
        f"`xaiq status {job[:8]}` for its progress")
    if not (args.wait or args.out):
        return 0
    state = client.wait(job, progress=bar(args))
    say(status_line(state))
    if args.out:
        print(client.download(job, Path(args.out)))
    return 0 if state["status"] == "succeeded" else 1


def status_line(st: dict) -> str:
    p = st["progress"]
    return f"{st['id']} {st['status']}: {p['done']}/{p['total']} done, {p['failed']} failed"


def status_text(st: dict) -> str:
    p = st["progress"]
    took = f" ({st['finished'] - st['started']:.1f} s)" if st.get("finished") and st.get("started") else ""
    rows = [("kind", st.get("kind", "job")), ("name", st.get("name") or "-"), ("status", st["status"]),
            ("model", f"{st['model']} (version {(st.get('model_version') or '?')[:12]})"),
            ("methods", ", ".join(st.get("methods", {}))),
            ("progress", f"{p['done']}/{p['total']} done, {p['failed']} failed"),
            ("created", when(st.get("created"))), ("started", when(st.get("started"))),
            ("finished", when(st.get("finished")) + took), ("cost", f"{st.get('cost', 0):.3g} GFLOP")]
    if st.get("error"):
        rows.append(("error", st["error"]))
    return "\n".join([f"job {st['id']}", *[f"  {k:9} {v}" for k, v in rows]])


def cmd_status(args) -> int:
    client = client_of(args)
    st = client.status(client.resolve(args.job))
    if args.json:
        show_json(st)
    else:
        print(status_text(st))
    return 0


def cmd_wait(args) -> int:
    client = client_of(args)
    state = client.wait(client.resolve(args.job), progress=bar(args), timeout=args.timeout)
    print(status_line(state))
    return 0 if state["status"] == "succeeded" else 1


def cmd_results(args) -> int:
    client = client_of(args)
    job = client.resolve(args.job)
    if args.out:
        print(client.download(job, Path(args.out)))
        return 0
    for item in client.results(job):
        print(json.dumps(item))
    return 0


def cmd_cancel(args) -> int:
    client = client_of(args)
    st = client.cancel(client.resolve(args.job))
    print(f"{st['id']} {st['status']}")
    return 0


def cmd_upload(args) -> int:
    files = images_of(args, mirror=True)
    check_unique(files, "one upload stores one file per path")
    stored = client_of(args).upload(files, folder=args.folder, progress=bar(args))
    for path in stored:
        print(path)
    say(f"stored {len(stored)} image(s) in your uploads under {args.folder or '/'}; name them in a job's "
        f"`inputs` or as an audit's dataset")
    return 0


def quiet_flag(sp) -> None:
    sp.add_argument("--quiet", "-q", action="store_true", help="no progress bars (they show only on a terminal)")


def add_submit_command(sub) -> None:
    sp = with_server(sub.add_parser("submit", help="submit images (files, or folders scanned recursively) as one job"))
    sp.add_argument("images", nargs="+", help="image files and folders (hidden files and non-images are skipped)")
    sp.add_argument("--model", required=True, help="a registered model (see `xaiq models`)")
    sp.add_argument("--method", action="append", help="method name (repeatable; default saliency)")
    sp.add_argument("--params", help='JSON: parameters per method, e.g. {"lime": {"num_samples": 500}}')
    sp.add_argument("--labels", help="target class per image, in the order sent: a file (JSON list, or one per "
                                     "line) or a comma list of indices or class names, e.g. 3,1,cat")
    sp.add_argument("--name", help="a name for the job (shown in listings and pages)")
    sp.add_argument("--unit-size", type=int, help="images per work unit (default: the server's)")
    sp.add_argument("--skip-invalid", action="store_true",
                    help="the server skips images it cannot read (and reports them) instead of refusing the job")
    sp.add_argument("--wait", action="store_true", help="wait until the job ends (exit 1 unless it succeeded)")
    sp.add_argument("--out", help="wait, then download the results into OUT/<job>/")
    quiet_flag(sp)
    sp.set_defaults(fn=cmd_submit)


def add_job_commands(sub) -> None:
    add_submit_command(sub)
    job_help = "a job id, or a unique start of one (e.g. 11672b06)"
    sp = with_json(with_server(sub.add_parser("status", help="a job's status and progress")), "the status")
    sp.add_argument("job", help=job_help)
    sp.set_defaults(fn=cmd_status)
    sp = with_server(sub.add_parser("wait", help="wait until a job ends (exit 1 unless it succeeded)"))
    sp.add_argument("job", help=job_help)
    sp.add_argument("--timeout", type=float, help="give up after this many seconds (default: never)")
    quiet_flag(sp)
    sp.set_defaults(fn=cmd_wait)
    sp = with_server(sub.add_parser("results", help="print a job's results (JSON lines) or download them"))
    sp.add_argument("job", help=job_help)
    sp.add_argument("--out", help="download into OUT/<job>/: pictures, raw maps and results.json")
    sp.set_defaults(fn=cmd_results)
    sp = with_server(sub.add_parser("cancel", help="cancel a job (finished images keep their results)"))
    sp.add_argument("job", help=job_help)
    sp.set_defaults(fn=cmd_cancel)
    sp = with_server(sub.add_parser("upload", help="store images in your uploads (folders keep their sub-folders)"))
    sp.add_argument("images", nargs="+", help="image files and folders: tree/cat/a.png is stored as FOLDER/cat/a.png")
    sp.add_argument("--folder", default="", help="where in your uploads, e.g. sets/val")
    quiet_flag(sp)
    sp.set_defaults(fn=cmd_upload)
