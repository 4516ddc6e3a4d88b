"""Hugging Face uploads whose file references try to leave the archive: a sharded index
naming an absolute path, a '../' path or a pickled `.bin` shard, a member named by an
absolute or '../' path, and a symbolic link. Each comes in two variants, naming an outside
file that exists and is readable and one that does not exist: the refusal must read the
same for both, or it tells the tenant what lies outside."""
from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

from tests.zoo import build

SHARD = "model-00001-of-00001.safetensors"
EXISTING, MISSING = "/etc/passwd", "/etc/xaiq-no-such-file"
UP = "../" * 12


def _zip(files: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in files.items():
            info = zipfile.ZipInfo(name)
            if name in links:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, content)
    return buf.getvalue()


def resnet_parts(folder: Path) -> tuple[bytes, bytes, list[str]]:
    """(config.json, model.safetensors, its tensor names) of a tiny ResNet saved with save_pretrained."""
    from safetensors import safe_open

    build("resnet").eval().save_pretrained(folder)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    return (folder / "config.json").read_bytes(), (folder / "model.safetensors").read_bytes(), names


def _sharded(config: bytes, weights: bytes, names: list[str], first: str, extra: dict | None = None) -> bytes:
    """A sharded save_pretrained folder whose index sends the first tensor to `first`."""
    index = {"metadata": {"total_size": len(weights)}, "weight_map": {n: SHARD for n in names} | {names[0]: first}}
    return _zip({"config.json": config, SHARD: weights, "model.safetensors.index.json": json.dumps(index).encode(),
                 **(extra or {})})


def attacks(folder: Path) -> dict[str, tuple[bytes, bytes]]:
    """attack -> (zip naming an outside file that exists, zip naming one that does not)."""
    config, weights, names = resnet_parts(folder)
    return {
        "index: absolute path": tuple(_sharded(config, weights, names, p) for p in (EXISTING, MISSING)),
        "index: ../ path": tuple(_sharded(config, weights, names, UP + p[1:]) for p in (EXISTING, MISSING)),
        "index: .bin weights": (_sharded(config, weights, names, "weights-00001.bin", {"weights-00001.bin": b"x"}),
                                _sharded(config, weights, names, "weights-00001.bin")),
        "member: absolute path": tuple(_zip({"config.json": config, "model.safetensors": weights, p: b"x"})
                                       for p in (EXISTING, MISSING)),
        "member: ../ path": tuple(_zip({"config.json": config, "model.safetensors": weights, UP + p[1:]: b"x"})
                                  for p in (EXISTING, MISSING)),
        "symbolic link": tuple(_zip({"config.json": config, "model.safetensors": p.encode()}, ("model.safetensors",))
                               for p in (EXISTING, MISSING)),
    }
