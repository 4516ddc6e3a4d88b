"""`torch.export` programs (files written by `torch.export.save`), checked before torch
reads them and unflattened so that the original module paths take hooks.

What `torch.export.load` (torch 2.13, torch/export/pt2_archive/_package.py and
torch/_export/serde/serialize.py) can execute, and what `check_archive` refuses first:
- weights/constants flagged `use_pickle` (tensor subclasses): `torch.load(weights_only=False)`;
  constants `opaque_obj_*`: `pickle.loads`; `custom_obj_*`: TorchBind unpickling;
  legacy `data/weights/*.pt` files and the pre-2.8 zip layout: `torch.load` that falls back
  to `weights_only=False` -- all refused: only raw tensor bytes and their JSON configs;
- `data/sample_inputs/*.pt`: `torch.load(weights_only=True)`, falling back to
  `weights_only=False` when that fails -- loaded here first with `weights_only=True` and
  refused unless that succeeds, so the fallback is never reached;
- `data/aotinductor/` (compiled shared libraries, dlopen-ed), executorch, MTIA, XL weights: refused;
- symbolic shape strings (`expr_str`) go to `sympy.sympify`, i.e. `eval`: only sympy's
  shape vocabulary (Symbol, Integer, Add, Mul, Mod, FloorDiv, Max, comparisons, ...) passes;
- node targets resolve to any attribute of `torch`, `operator` or `math` (e.g. `torch.load`)
  and run when the graph runs: every target must pass `worker.models.opcheck`, in the JSON
  and again on the loaded graph;
- the graph is compiled to Python by torch.fx: module paths and names are pasted into
  `getattr(self, "...")` and stack traces into `#` comments, so strings may hold no quote,
  backslash or control character (stack traces: newlines only);
- `guards_code` strings are `exec`-ed by `ExportedProgram.module()` (used here only for a
  program that `torch.export.unflatten` cannot split into modules); they are dropped right
  after loading, so only the guards torch derives from the (typed) input shapes remain.
"""
from __future__ import annotations

import ast
import io
import json
import re
import stat
import types
import zipfile

import torch
from torch import nn
from torch.export.pt2_archive import constants as pt2

from worker.models.opcheck import check_operators

# The one program torch.export.load returns ("model") and its files, as torch names them.
GRAPH = pt2.MODELS_FILENAME_FORMAT.format("model")                       # the graph, JSON
WEIGHTS_CONFIG = pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.format("model")
CONSTANTS_CONFIG = pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.format("model")
SAMPLE_INPUTS = pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format("model")        # torch.save of tensors
MAX_BYTES = 2 * 2**30
MAX_ENTRIES = 100_000
MAX_JSON = 256 << 20
FILES = re.compile(r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
                   r"|models/model\.json|data/weights/model_weights_config\.json|data/weights/weight_\d+"
                   r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
                   r"|data/sample_inputs/model\.pt|extra/[\w.\-]+")
PLAIN = re.compile(r'[^"\\\x00-\x1f\x7f]{0,10000}')            # pasted into generated code
TRACE = re.compile(r"[^\x00-\x08\x0b-\x1f\x7f]{0,100000}")      # stack traces: newlines, tabs
JSON_FIELDS = ("in_spec", "out_spec", "from_node", "custom")     # JSON inside a string
SYMBOL = re.compile(r"[a-z]{1,5}\d{1,7}")
SYM_CALLS = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Mod", "PythonMod", "FloorDiv", "CeilDiv", "CleanDiv",
    "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "LessThan", "StrictGreaterThan",
    "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "TruncToInt", "FloorToInt", "CeilToInt",
    "IntTrueDiv", "FloatTrueDiv", "ToFloat", "Identity", "true", "false"})
SYM_FLAGS = frozenset({"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite",
                       "zero", "nonzero", "even", "odd", "commutative"})
SYM_NODES = (ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword, ast.BinOp, ast.UnaryOp,
             ast.Compare, ast.BoolOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.USub,
             ast.UAdd, ast.Not, ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def check_sym(expr: str) -> None:
    """ValueError unless `expr` is a sympy shape expression made of the calls above, symbol
    names, small numbers and arithmetic -- nothing `eval` could turn into other code."""
    try:
        tree = ast.parse(expr, mode="eval") if len(expr) <= 4096 else None
    except SyntaxError:
        tree = None
    ok = tree is not None
    for node in ast.walk(tree) if ok else ():
        ok = ok and isinstance(node, SYM_NODES)
        if isinstance(node, ast.Call):
            ok = ok and isinstance(node.func, ast.Name) and node.func.id in SYM_CALLS
        elif isinstance(node, ast.Name):
            ok = ok and (node.id in SYM_CALLS or bool(SYMBOL.fullmatch(node.id)))
        elif isinstance(node, ast.Constant):
            v = node.value
            ok = ok and (isinstance(v, (bool, float)) or (isinstance(v, int) and abs(v) < 2**63)
                         or (isinstance(v, str) and bool(SYMBOL.fullmatch(v))))
        elif isinstance(node, ast.keyword):
            ok = ok and node.arg in SYM_FLAGS and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, bool)
    if not ok:
        raise ValueError(f"the program holds a symbolic shape that is not a plain expression: {expr[:200]!r}")


def _plain(s: str, what: str) -> None:
    if not PLAIN.fullmatch(s):
        raise ValueError(f"the program's {what} holds a quote, backslash or control character: {s[:200]!r}")


def check_strings(obj, targets: list[str], key: str | None = None) -> None:
    """Walk a program's JSON: every string safe where torch pastes or evaluates it, every
    node's target collected into `targets`."""
    if isinstance(obj, dict):
        if isinstance(obj.get("target"), str) and "inputs" in obj and "outputs" in obj:
            targets.append(obj["target"])
        for k, v in obj.items():
            _plain(str(k), "keys")
            check_strings(v, targets, k)
    elif isinstance(obj, list):
        for v in obj:
            check_strings(v, targets, key)
    elif isinstance(obj, str):
        if key == "stack_trace":
            if not TRACE.fullmatch(obj):
                raise ValueError("the program holds a stack trace with control characters")
        elif key == "expr_str":
            check_sym(obj)
        elif key in JSON_FIELDS:
            check_strings(json.loads(obj), [], None)
        else:
            _plain(obj, key or "strings")


def _members(zf: zipfile.ZipFile, max_bytes: int) -> dict[str, zipfile.ZipInfo]:
    """{name below the archive's root folder: member}; refuses links, duplicates, unknown
    files (AOTInductor libraries, pickles, other programs) and oversized archives."""
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES or sum(i.file_size for i in infos) > max_bytes:
        raise ValueError(f"the program has more than {MAX_ENTRIES} files or {max_bytes} bytes")
    roots = {i.filename.split("/", 1)[0] for i in infos}
    if len(roots) != 1:
        raise ValueError("not a torch.export.save file (one root folder expected)")
    for i in infos:   # names stay inside the archive: relative, no '.' or '..' parts, no backslashes
        if "\\" in i.filename or any(part in ("", ".", "..") for part in i.filename.rstrip("/").split("/")):
            raise ValueError(f"the program holds {i.filename!r}, a name that leaves the archive")
    out: dict[str, zipfile.ZipInfo] = {}
    for i in infos:
        name = i.filename.split("/", 1)[1] if "/" in i.filename else ""
        if i.is_dir() and name == "":
            continue
        if stat.S_ISLNK(i.external_attr >> 16) or name in out or not FILES.fullmatch(name):
            raise ValueError(f"the program holds {i.filename!r}, which is not a plain tensor or the graph: "
                             "only torch.export.save files with raw weights are accepted (no pickles, no AOTInductor)")
        out[name] = i
    return out


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int = MAX_JSON) -> bytes:
    with zf.open(info) as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"{info.filename} is larger than {limit} bytes")
    return raw


def _check_payloads(zf: zipfile.ZipFile, members: dict, name: str, prefix: str) -> None:
    """A weights/constants config: raw tensors only (no `use_pickle`, no custom objects)."""
    if name not in members:
        return
    config = json.loads(_read(zf, members[name])).get("config", {})
    for fqn, meta in config.items():
        _plain(fqn, "tensor names")
        if meta.get("use_pickle") or not re.fullmatch(prefix + r"\d+", str(meta.get("path_name"))):
            raise ValueError(f"{fqn}: the program stores it pickled or as an object; only plain tensors are accepted")


def check_archive(data: bytes, max_bytes: int = MAX_BYTES) -> list[str]:
    """Everything `torch.export.load` would read, checked without running any of it (see
    the module docstring); returns the graph's node targets as opcheck reads them
    ('torch.ops.aten.conv2d.default', '<built-in function getitem>')."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ValueError("not a torch.export.save file (not a zip archive)") from None
    with zf:
        members = _members(zf, max_bytes)
        fmt = members.get(pt2.ARCHIVE_FORMAT_PATH)
        if GRAPH not in members or fmt is None or _read(zf, fmt, 16) != pt2.ARCHIVE_FORMAT_VALUE.encode():
            raise ValueError("not a torch.export.save file of torch >= 2.8 (no models/model.json)")
        _check_payloads(zf, members, WEIGHTS_CONFIG, pt2.WEIGHT_FILENAME_PREFIX)
        _check_payloads(zf, members, CONSTANTS_CONFIG, pt2.TENSOR_CONSTANT_FILENAME_PREFIX)
        if SAMPLE_INPUTS in members:
            try:
                torch.load(io.BytesIO(_read(zf, members[SAMPLE_INPUTS])), weights_only=True)
            except Exception:  # noqa: BLE001 - anything but plain tensors: refused before torch falls back to pickle
                raise ValueError("the program's sample inputs are not plain tensors") from None
        targets: list[str] = []
        check_strings(json.loads(_read(zf, members[GRAPH])), targets)
    # as str(target) will read once loaded: operator.getitem is '<built-in function getitem>'
    return [f"<built-in function {t[10:]}>" if t.startswith("_operator.") else t for t in targets]


def operators(ep) -> list[str]:
    """`str(target)` of every call_function node of the program's graph and of its
    subgraphs ('aten.conv2d.default', '<built-in function getitem>'), as opcheck reads them."""
    return sorted({str(n.target) for gm in ep.graph_module.modules() if isinstance(gm, torch.fx.GraphModule)
                   for n in gm.graph.nodes if n.op == "call_function"})


def _input_shape(ep) -> tuple[int, int, int]:
    """(C, H, W) of the program's one image input, whose batch size must be dynamic."""
    users = ep.graph_signature.user_inputs
    vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in users]
    if len(vals) != 1 or not torch.is_tensor(vals[0]) or vals[0].dim() != 4 or len(ep.graph_signature.user_outputs) != 1:
        raise ValueError("the program must take one image batch (N, C, H, W) and return one logits tensor")
    n, *chw = vals[0].shape
    if isinstance(n, int) or not all(isinstance(d, int) for d in chw):
        raise ValueError("export the program with a dynamic batch size and a fixed image size: "
                         "torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))")
    return tuple(chw)


def _module_types(model: nn.Module, ep) -> None:
    """Unflattened modules are InterpreterModules: give each the class name it had when exported
    (from the graph's nn_module_stack) as `original_name`, as TorchScript modules carry it."""
    modules = dict(model.named_modules())
    for node in ep.graph.nodes:
        for path, kind in (node.meta.get("nn_module_stack") or {}).values():
            name = (kind if isinstance(kind, str) else getattr(kind, "__name__", "")).rsplit(".", 1)[-1]
            if path in modules and path and name:
                modules[path].original_name = name


def load(data: bytes) -> nn.Module:
    """A torch.export.save file as an nn.Module with the original module paths (hooks work
    on them), in eval mode. Every operator must pass `worker.models.opcheck`. Sets
    `xaiq_input` (C, H, W) and `xaiq_hooks` (False when no module path survived, e.g. a
    program without nn_module_stack metadata: then no layer can be read)."""
    check_operators(check_archive(data))      # before torch resolves any of them
    ep = torch.export.load(io.BytesIO(data))
    ep._guards_code = []                      # strings that ep.module() would exec: never needed here
    check_operators(operators(ep))
    c, h, w = _input_shape(ep)
    try:
        model = torch.export.unflatten(ep)
        _module_types(model, ep)
        hooks = any(True for _ in model.children())
    except (AssertionError, KeyError, RuntimeError, ValueError):
        # no module hierarchy recorded (nn_module_stack): a flat graph whose layers no hook can read
        model, hooks = ep.module(), False
        # its train()/eval() raise (the mode is baked into the graph): plain flags, as `evaluating` sets them
        model.train, model.eval = types.MethodType(nn.Module.train, model), types.MethodType(nn.Module.eval, model)
    model.eval()
    model.xaiq_input = (c, h, w)
    model.xaiq_hooks = hooks
    return model
