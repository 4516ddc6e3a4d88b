"""`xaiq models [NAME]` and `xaiq register`: models as tables and short summaries (the
API's JSON with --json)."""
from __future__ import annotations

from pathlib import Path

from client.cli_common import (
    CliError,
    client_of,
    parse_json,
    say,
    show_json,
    table,
    when,
    with_json,
    with_server,
)
from client.sdk import ApiError


def shape(model: dict) -> str:
    i = model.get("input") or {}
    return f"{i.get('channels')}x{i.get('height')}x{i.get('width')}" if i else "-"


def models_table(models: list[dict]) -> str:
    rows = [[m["name"], m["status"], m.get("format", "-"), len(m.get("classes") or []), shape(m),
             len(m.get("versions") or []) or 1, "yes" if m.get("shared") else "-"] for m in models]
    return table(rows, ["NAME", "STATUS", "FORMAT", "CLASSES", "INPUT", "VERSIONS", "SHARED"])


def model_text(m: dict) -> str:
    classes = m.get("classes") or []
    shown = ", ".join(classes[:12]) + (f", … ({len(classes) - 12} more)" if len(classes) > 12 else "")
    rows = [("status", m["status"] + (f": {m['error']}" if m.get("error") else "")),
            ("shared", "yes: every tenant may use it" if m.get("shared") else "no"),
            ("format", f"{m.get('format')} (architecture {m.get('architecture')})"),
            ("version", m.get("version", "-")),
            ("input", f"{shape(m)}, mean {m.get('mean')}, std {m.get('std')}"),
            ("classes", f"{len(classes)}: {shown}"),
            ("size", f"{m.get('parameters') or '?'} parameters, {m.get('gflops') or 0:.3g} GFLOP per image"),
            ("hooks", "yes" if m.get("hooks", True) else "no (filters and gradcam are refused)"),
            ("created", when(m.get("created")))]
    versions = [[v["version"][:16], v["status"], when(v.get("created")), v.get("error") or ""]
                for v in m.get("versions") or []]
    layers = [[layer["path"], layer["type"], layer.get("out_channels") or "",
               "x".join(map(str, layer.get("shape") or [])), "conv" if layer.get("conv") else
               "tokens" if layer.get("tokens") else ""] for layer in m.get("layers") or []]
    parts = [f"model {m['name']}", *[f"  {k:8} {v}" for k, v in rows]]
    if versions:
        parts += ["", "versions:", table(versions, ["VERSION", "STATUS", "CREATED", "WHY INVALID"])]
    if layers:
        parts += ["", "layers (for filters and gradcam):", table(layers, ["PATH", "TYPE", "CHANNELS", "SHAPE", "KIND"])]
    return "\n".join(parts)


def cmd_models(args) -> int:
    client = client_of(args)
    data = client.model(args.name) if args.name else client.models()
    if args.json:
        show_json(data)
    elif args.name:
        print(model_text(data))
    else:
        print(models_table(data) if data else "no models yet: `xaiq register WEIGHTS --spec SPEC.json`")
    return 0


def register_summary(m: dict) -> str:
    if m["status"] != "ready":
        return f"model {m['name']} is {m['status']}"
    return (f"model {m['name']} (version {m['version'][:12]}) is ready: {len(m.get('classes') or [])} classes, "
            f"input {shape(m)}, {len(m.get('layers') or [])} layers, {m.get('gflops') or 0:.3g} GFLOP per image; "
            f"`xaiq models {m['name']}` for its layers")


def cmd_register(args) -> int:
    spec_path, weights = Path(args.spec), Path(args.weights)
    for path, what in ((weights, "weights file"), (spec_path, "spec file")):
        if not path.is_file():
            raise CliError(f"no such {what}: {path}")
    spec = parse_json(spec_path.read_text(), f"the spec file {spec_path}", '{"name": ..., "architecture": ...}')
    say("uploading; a worker then checks the model (confined) …")
    try:
        info = client_of(args).register_model(spec, weights, replace=args.replace, shared=args.shared,
                                              progress=False if args.quiet else None)
    except ApiError as e:
        if e.status == 409 and "replace" in e.message:
            raise CliError(f"model {spec.get('name')!r} exists already; use --replace to register a new version", 1)
        raise
    if args.json:
        show_json(info)
    else:
        print(register_summary(info))
    if info["status"] != "ready":
        raise CliError(f"the model is {info['status']}: {info.get('error')}", 1)
    return 0


def add_model_commands(sub) -> None:
    sp = with_json(with_server(sub.add_parser("models", help="the models you may use, or one model in detail")),
                   "the models")
    sp.add_argument("name", nargs="?", help="a model's name: its versions, input, classes and layers")
    sp.set_defaults(fn=cmd_models)
    sp = with_json(with_server(sub.add_parser("register", help="register a model: weights file + JSON spec file")),
                   "the model")
    sp.add_argument("weights", help="safetensors or state_dict file, TorchScript, torch.export .pt2, or a zip of a "
                                    "Hugging Face save_pretrained folder")
    sp.add_argument("--spec", required=True, help="JSON file: name, architecture, input, mean, std, classes")
    sp.add_argument("--replace", action="store_true", help="register a new version of an existing model")
    sp.add_argument("--shared", action="store_true", help="a model every tenant may use (admin key)")
    sp.add_argument("--quiet", "-q", action="store_true", help="no progress bar (it shows only on a terminal)")
    sp.set_defaults(fn=cmd_register)
