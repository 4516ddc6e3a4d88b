"""Hugging Face image classifiers as uploaded: a zip of a `save_pretrained` folder.

Pure stdlib (the API reads the configs without torch): which zip members a classifier
needs (`plan`), its `config.json` / `preprocessor_config.json` (`read_configs`), and the
model spec the service needs from them (`spec_from_configs`): input size, mean/std,
classes and how to resize inputs (`preprocess`, followed by `worker.images.decode`).
Where the registered spec gives `input`, `mean`, `std` or `classes`, it wins over the
configs; where the configs are silent (a ResNet saved without preprocessor_config.json),
the spec fills in.

Every file the archive names stays inside it: member names are relative paths without
'..', drive letters or links, and `model.safetensors.index.json` may name only the
archive's own *.safetensors files beside config.json (transformers opens whatever path its
`weight_map` says, and a non-safetensors name would be read with torch.load). Each such
refusal reads the same (`OUTSIDE`), so it tells nothing about files outside the archive.

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
INDEX = "model.safetensors.index.json"
WANTED = ("config.json", "preprocessor_config.json", INDEX)
PICKLED = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# The processors' default filters when the JSON leaves `resample` out.
DEFAULT_RESAMPLE = {"ConvNext": "bicubic", "Bit": "bicubic", "CLIP": "bicubic", "Deit": "bicubic",
                    "Swin": "bicubic", "Beit": "bicubic", "EfficientNet": "nearest"}
# One text for every file reference that leaves the archive or is not safetensors: whether
# the named outside file exists must not change a word of it.
OUTSIDE = ("the archive names a file outside itself or weights that are not safetensors: every file it names "
           "must be one of its own *.safetensors files beside config.json (no absolute paths, '..' or links)")


def _safe_name(info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path; ValueError (`OUTSIDE`) for absolute paths, '..', drive
    letters, NUL and links."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or ".." in path.parts or ":" in name or "\0" in name or not path.parts \
            or stat.S_ISLNK(info.external_attr >> 16):
        raise ValueError(OUTSIDE)
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
    names = [PurePosixPath(i.filename).name for i in members]
    if len(set(names)) != len(names):
        raise ValueError("the zip holds a file twice")
    if not any(PurePosixPath(i.filename).suffix == ".safetensors" for i in members):
        raise ValueError("the zip holds no *.safetensors weights next to config.json; weights must be safetensors")
    _check_index(zf, members)
    return ("" if str(folder) == "." else f"{folder}/"), members


def _check_index(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo]) -> None:
    """A sharded model's index may name only the archive's own *.safetensors files beside
    config.json, by plain name; anything else is refused with `OUTSIDE`."""
    by_name = {PurePosixPath(i.filename).name: i for i in members}
    if INDEX not in by_name:
        return
    weight_map = _read_json(zf, by_name[INDEX]).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{INDEX} has no weight_map")
    shards = {n for n in by_name if n.endswith(".safetensors")}
    if not all(isinstance(f, str) and f in shards for f in weight_map.values()):
        raise ValueError(OUTSIDE)


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


class _NoFixedSize(ValueError):
    """The configs give no fixed input size (the spec's `input` can)."""


def _resize_plan(config: dict, pre: dict) -> tuple[dict, tuple[int, int] | None]:
    """(resize step, crop (h, w) or None) as the processor does it; _NoFixedSize when the
    configs give no fixed input size."""
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
            raise _NoFixedSize("preprocessor_config.json resizes the shortest edge without a centre crop, so the "
                               "input size varies; this service needs a fixed input size: give the spec's input")
        return {"shortest_edge": edge}, crop
    if size is None:
        size = config.get("image_size")
        if size is None:
            raise _NoFixedSize("neither preprocessor_config.json nor config.json gives the input size; "
                               "give the spec's input (and mean and std)")
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


def _channels(config: dict, given: dict) -> int:
    channels = int(config.get("num_channels", 3))
    if "input" in given:
        if "num_channels" in config and given["input"]["channels"] != channels:
            raise ValueError(f"the spec's input has {given['input']['channels']} channels; config.json's "
                             f"num_channels is {channels}")
        channels = given["input"]["channels"]
    return channels


def _sizes(config: dict, pre: dict, given: dict) -> tuple[dict, tuple[int, int] | None, tuple[int, int]]:
    """(resize step, crop or None, input (h, w)): the configs' plan, or a plain resize to the
    spec's input where the configs give none or another size."""
    try:
        resize, crop = _resize_plan(config, pre)
    except _NoFixedSize:
        if "input" not in given:
            raise
        resize, crop = {}, None
    if "input" in given:
        size = (given["input"]["height"], given["input"]["width"])
        if size != (crop or (resize.get("height"), resize.get("width"))):
            return {"height": size[0], "width": size[1]}, None, size
    return resize, crop, crop or (resize["height"], resize["width"])


def spec_from_configs(config: dict, preprocessor: dict | None, given: dict | None = None) -> dict:
    """{"input": {channels, height, width}, "mean", "std", "classes", "preprocess"} for a
    Hugging Face image classifier. `preprocess`: {"resize": {"height", "width"} or
    {"shortest_edge"}, "crop": {"height", "width"} or None, "resample": PIL filter name};
    without a preprocessor_config.json: a plain resize to config.image_size, mean 0, std 1.

    `given`: what the registered spec says (`input`, `mean`, `std`, `classes`; None where
    silent). The spec wins wherever it speaks: its mean, std and classes replace the
    configs', and an `input` other than the configs' size (or where they give none) means a
    plain resize to it; the configs fill in the rest."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    channels = _channels(config, given)
    pre = preprocessor or {}
    if pre.get("do_resize", True) is False:
        pre = {k: v for k, v in pre.items() if k not in ("size", "crop_pct")}
    resize, crop, (h, w) = _sizes(config, pre, given)
    if "mean" in given and "std" in given:
        mean, std = given["mean"], given["std"]
    else:
        mean, std = _norm(config, preprocessor, channels)
        mean, std = given.get("mean", mean), given.get("std", std)
    preprocess = {"resize": resize, "crop": {"height": h, "width": w} if crop else None,
                  "resample": _resample(pre)}
    return {"input": {"channels": channels, "height": h, "width": w}, "mean": mean, "std": std,
            "classes": given.get("classes") or _classes(config), "preprocess": preprocess}


def spec_from_upload(data: bytes, given: dict) -> dict:
    """The spec of an uploaded zip: `given` (the registered spec) completed from its configs
    (`spec_from_configs`). ValueError for a zip the worker would refuse."""
    config, preprocessor = read_configs(data)
    return spec_from_configs(config, preprocessor, {k: given.get(k) for k in ("input", "mean", "std", "classes")})
