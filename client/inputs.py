"""What goes into a job or an upload, decided on the client: files as given, folders scanned
recursively for images (with what was skipped and why), names that must not collide, and
labels from a file or a comma list."""
from __future__ import annotations

import json
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class InputError(ValueError):
    """Input on the client's side that cannot be sent (a missing file, names that collide)."""


@dataclass
class Scan:
    files: list[tuple[str, Path]] = field(default_factory=list)    # (name to send, path)
    skipped: list[tuple[Path, str]] = field(default_factory=list)   # (path, why)


def _unreadable(path: Path) -> str | None:
    """Why the file cannot be sent, or None."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        with open(path, "rb"):
            return None
    except OSError as e:
        return f"unreadable ({e.strerror or type(e).__name__})"


def _walk(folder: Path, scan: Scan, mirror: bool) -> None:
    for where, dirs, files in os.walk(folder):
        here = Path(where)
        for d in sorted(dirs):
            if d.startswith("."):
                scan.skipped.append((here / d, "hidden folder"))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = here / name
            why = ("hidden file" if name.startswith(".") else
                   "not a .png/.jpg/.jpeg file" if path.suffix.lower() not in IMAGE_SUFFIXES else _unreadable(path))
            if why:
                scan.skipped.append((path, why))
            else:
                scan.files.append((path.relative_to(folder).as_posix() if mirror else name, path))


def scan(args: list[str], mirror: bool = False) -> Scan:
    """Files as given (sent whatever their suffix), folders as their images, recursively.
    `mirror`: a folder's images are named by their path inside it (`cat/a.png`)."""
    out = Scan()
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            _walk(path, out, mirror)
        elif path.exists() or path.is_symlink():
            why = _unreadable(path)
            if why:
                raise InputError(f"{arg}: {why}")
            out.files.append((path.name, path))
        else:
            raise InputError(f"no such file or folder: {arg}")
    return out


def skipped_summary(skipped: list[tuple[Path, str]], show: int = 10) -> list[str]:
    """Lines that say what was skipped and why: counts per reason, then the first few."""
    if not skipped:
        return []
    counts = Counter(why.split(" (")[0] for _, why in skipped)
    lines = [f"skipped {len(skipped)} file(s) or folder(s): " + ", ".join(f"{n} {why}" for why, n in counts.items())]
    lines += [f"  {path}: {why}" for path, why in skipped[:show]]
    if len(skipped) > show:
        lines.append(f"  … and {len(skipped) - show} more")
    return lines


def check_unique(named: list[tuple[str, object]], what: str = "a job keeps one name per image") -> None:
    """Refuse names that occur twice, listing each collision with its sources."""
    by_name: dict[str, list[str]] = {}
    for name, source in named:
        by_name.setdefault(name, []).append(str(source) if isinstance(source, (str, Path)) else "(bytes)")
    twice = {n: s for n, s in by_name.items() if len(s) > 1}
    if twice:
        lines = [f"  {n}: {', '.join(s)}" for n, s in list(twice.items())[:20]]
        more = [f"  … and {len(twice) - 20} more"] if len(twice) > 20 else []
        head = f"{len(twice)} name(s) occur more than once ({what}); rename the files or send them separately:"
        raise InputError("\n".join([head, *lines, *more]))


def parse_labels(value: str) -> list[int | str]:
    """Labels from a file (a JSON list, or one per line or comma-separated) or a comma list;
    each an index (digits) or a class name."""
    path = Path(value)
    if path.is_file():
        text = path.read_text()
        try:
            parsed = json.loads(text)
            if isinstance(parsed, list):
                return parsed
        except ValueError:
            pass
    elif "/" in value or path.suffix.lower() in (".txt", ".json", ".csv"):
        raise InputError(f"--labels: no such file: {value}")
    else:
        text = value
    labels = [s.strip() for s in re.split(r"[,\n]", text) if s.strip()]
    if not labels:
        raise InputError("--labels: no labels given (a file, or a comma list like 3,1,cat)")
    return [int(s) if re.fullmatch(r"\d+", s) else s for s in labels]
