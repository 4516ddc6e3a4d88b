"""Hugging Face image classifiers as uploaded: a zip of a `save_pretrained` folder.

Pure stdlib (the API reads the configs without torch): which zip members a classifier
needs (`plan`), its `config.json` / `preprocessor_config.json` (`read_configs`), and the
model spec the service needs from them (`spec_from_configs`): input size, mean/std,
classes and how to resize inputs (`preprocess`, followed by `worker.images.decode`).

Pixels reach a model as (x/255 - mean)/std. HF's processors compute
((x * rescale_factor + offset) - image_mean) / image_std, which is the same with
mean = (image_mean - offset) / (255 * rescale_factor) and std = image_std / (255 * rescale_factor):
exact for every rescale factor. Resizing follows the processors' PIL backend (PIL filter
on the 8-bit image, HF's shortest-edge rounding and centre crop); the torchvision ("fast")
processors antialias differently, so their pixels can differ by a few 1/255.
"""
from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import PurePosixPath

MAX_ENTRIES = 10_000          # zip members listed (a zip bomb of tiny entries)
MAX_CONFIG_BYTES = 16 << 20   # one config JSON (id2label of 21k classes is ~1 MB)
WANTED = ("config.json", "preprocessor_config.json", "model.safetensors.index.json")
PICKLED = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# The processors' default filters when the JSON leaves `resample` out.
DEFAULT_RESAMPLE = {"ConvNext": "bicubic", "Bit": "bicubic", "CLIP": "bicubic", "Deit": "bicubic",
                    "Swin": "bicubic", "Beit": "bicubic", "EfficientNet": "nearest"}


def _safe_name(info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path; ValueError for absolute paths, '..', drive letters, links."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or ".." in path.parts or ":" in name or "\0" in name:
        raise ValueError(f"unsafe path in the zip: {info.filename!r}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ValueError(f"the zip holds a symbolic link: {info.filename!r}")
    return path


def _wanted(path: PurePosixPath) -> bool:
    return path.name in WANTED or path.suffix == ".safetensors"


def open_zip(data: bytes) -> zipfile.ZipFile:
    """The uploaded bytes as a zip; ValueError when they are none."""
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ValueError("a Hugging Face model is uploaded as a zip of its save_pretrained folder") from None


def plan(zf: zipfile.ZipFile) -> tuple[str, list[zipfile.ZipInfo]]:
    """(folder holding config.json, '' or 'name/'; the members to extract from it).

    Refuses unsafe names and pickled weights ("weights must be safetensors"); config.json
    may sit at the top or one folder deep; other files (README, tokenizer, ...) are skipped.
    """
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise ValueError(f"the zip lists {len(infos)} entries; at most {MAX_ENTRIES}")
    paths = [(_safe_name(i), i) for i in infos if not i.is_dir()]
    for path, _ in paths:
        if path.suffix.lower() in PICKLED and (path.suffix != ".bin" or path.name.startswith("pytorch_model")):
            raise ValueError(f"{path}: pickled weights are refused; weights must be safetensors "
                             "(model.save_pretrained(folder) writes model.safetensors)")
    configs = [p for p, _ in paths if p.name == "config.json" and len(p.parts) <= 2]
    if len(configs) != 1:
        raise ValueError("the zip must hold one config.json, at the top or one folder deep "
                         f"(found {len(configs)}); zip the folder written by save_pretrained")
    folder = configs[0].parent
    members = [i for p, i in paths if p.parent == folder and _wanted(p)]
    if not any(PurePosixPath(i.filename).suffix == ".safetensors" for i in members):
        raise ValueError("the zip holds no *.safetensors weights next to config.json; weights must be safetensors")
    return ("" if str(folder) == "." else f"{folder}/"), members


def _read_json(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict:
    with zf.open(info) as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)    # the header's size may lie: bound the read itself
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"{info.filename} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        out = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{info.filename} is not valid JSON: {e}") from None
    if not isinstance(out, dict):   # a bad upload: the API answers ValueErrors with 422
        raise ValueError(f"{info.filename} must hold a JSON object")  # noqa: TRY004 - callers report ValueErrors
    return out


def read_configs(data: bytes) -> tuple[dict, dict | None]:
    """(config.json, preprocessor_config.json or None) of a zipped save_pretrained folder,
    read in memory with a size limit; ValueError for a zip the worker would refuse."""
    with open_zip(data) as zf:
        _, members = plan(zf)
        by_name = {PurePosixPath(i.filename).name: i for i in members}
        pre = by_name.get("preprocessor_config.json")
        return _read_json(zf, by_name["config.json"]), (_read_json(zf, pre) if pre else None)


def _classes(config: dict) -> list[str]:
    labels = config.get("id2label")
    if not labels:
        n = config.get("num_labels")
        if not isinstance(n, int) or n < 2:
            raise ValueError("config.json has no id2label (and no num_labels)")
        return [f"LABEL_{i}" for i in range(n)]
    try:
        ordered = sorted((int(k), str(v)) for k, v in labels.items())
    except (TypeError, ValueError):
        raise ValueError("config.json: id2label keys must be class indices") from None
    if [k for k, _ in ordered] != list(range(len(ordered))):
        raise ValueError("config.json: id2label must number the classes 0..n-1")
    return [v for _, v in ordered]


def _hw(size, what: str) -> tuple[int, int]:
    """(height, width) of an int, [h, w] or {"height", "width"}."""
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    if isinstance(size, dict) and "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    raise ValueError(f"unsupported {what}: {size!r}")


def _resize_plan(config: dict, pre: dict) -> tuple[dict, tuple[int, int] | None]:
    """(resize step, crop (h, w) or None) as the processor does it."""
    size = pre.get("size")
    crop = _hw(pre["crop_size"], "crop_size") if pre.get("do_center_crop") and pre.get("crop_size") else None
    if isinstance(size, int) and "crop_pct" in pre:    # old ConvNeXt feature extractors
        size = {"shortest_edge": size}
    if isinstance(size, dict) and set(size) == {"shortest_edge"}:
        edge = int(size["shortest_edge"])
        if "crop_pct" in pre:   # ConvNeXt: below 384, shortest edge to edge/crop_pct then an edge x edge crop
            if edge < 384:
                return {"shortest_edge": int(edge / float(pre["crop_pct"] or 224 / 256))}, (edge, edge)
            return {"height": edge, "width": edge}, crop
        if crop is None:
            raise ValueError("preprocessor_config.json resizes the shortest edge without a centre crop, so the "
                             "input size varies; this service needs a fixed input size")
        return {"shortest_edge": edge}, crop
    if size is None:
        size = config.get("image_size")
        if size is None:
            raise ValueError("neither preprocessor_config.json nor config.json gives the input size")
    h, w = _hw(size, "size in preprocessor_config.json")
    return {"height": h, "width": w}, crop


def _norm(config: dict, pre: dict | None, channels: int) -> tuple[list[float], list[float]]:
    """mean/std for pixels in [0, 1], folding HF's rescale (factor, offset) in exactly."""
    pre = pre or {}
    factor = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    offset = -1.0 if pre.get("do_rescale", True) and pre.get("rescale_offset") else 0.0
    mean, std = pre.get("image_mean", 0.0), pre.get("image_std", 1.0)
    if not pre.get("do_normalize", "image_mean" in pre):
        mean, std = 0.0, 1.0
    mean = [float(m) for m in (mean if isinstance(mean, (list, tuple)) else [mean] * channels)]
    std = [float(s) for s in (std if isinstance(std, (list, tuple)) else [std] * channels)]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"image_mean/image_std need {channels} values (num_channels)")
    scale = 255.0 * factor
    return [(m - offset) / scale for m in mean], [s / scale for s in std]


def _resample(pre: dict) -> str:
    code = pre.get("resample")
    if code is None:
        kind = str(pre.get("image_processor_type") or pre.get("feature_extractor_type") or "")
        return next((v for k, v in DEFAULT_RESAMPLE.items() if kind.startswith(k)), "bilinear")
    if code not in RESAMPLE:
        raise ValueError(f"preprocessor_config.json: unknown resample filter {code!r}")
    return RESAMPLE[code]


def spec_from_configs(config: dict, preprocessor: dict | None) -> dict:
    """{"input": {channels, height, width}, "mean", "std", "classes", "preprocess"} for a
    Hugging Face image classifier. `preprocess`: {"resize": {"height", "width"} or
    {"shortest_edge"}, "crop": {"height", "width"} or None, "resample": PIL filter name};
    without a preprocessor_config.json: a plain resize to config.image_size, mean 0, std 1."""
    channels = int(config.get("num_channels", 3))
    pre = preprocessor or {}
    if pre.get("do_resize", True) is False:
        pre = {k: v for k, v in pre.items() if k not in ("size", "crop_pct")}
    resize, crop = _resize_plan(config, pre)
    h, w = crop or (resize["height"], resize["width"])
    mean, std = _norm(config, preprocessor, channels)
    preprocess = {"resize": resize, "crop": {"height": h, "width": w} if crop else None,
                  "resample": _resample(pre)}
    return {"input": {"channels": channels, "height": h, "width": w}, "mean": mean, "std": std,
            "classes": _classes(config), "preprocess": preprocess}
