"""Submitting a job or an audit: the spec checked against the registry, the model and the
tenant's limits; the images stored in shards while the request streams in (or indexed where
they already are: uploads, a kept archive); the cost estimated from the images' count and
pixels; then the job created through its lifecycle. A request refused half-way removes what
it stored."""
from __future__ import annotations

import math
import time
import zlib

from api import auth, connections, datasets, intake, streaming
from api.errors import ApiError
from api.inputs import JobInputs
from shared.contracts import IndexPage, InputEntry, Inputs, JobManifest
from shared.jobs import LimitExceeded
from shared.schemas import AuditSpec, JobSpec, valid_path
from shared.shards import Read, Source, entry_bytes
from shared.storage import Keys

MIN_UNIT, MAX_UNIT = 8, 1024


def unit_size(requested: int | None, per_image_gflop: float) -> int:
    """Images per unit: as asked (the spec, else `XAIQ_UNIT_SIZE`), else sized by cost so a
    unit is about `unit_gflop` of work."""
    s = connections.get().settings
    if requested or s.unit_size:
        return requested or s.unit_size
    return int(min(MAX_UNIT, max(MIN_UNIT, s.unit_gflop // max(per_image_gflop, 1e-9))))


def plan(spec, info: dict, inputs: Inputs, options: dict | None) -> tuple[int, int, float, dict]:
    """(unit size, units, estimated GFLOP, the tenant's limits); 413/429 past a limit."""
    n, s = inputs.count, connections.get().settings
    intake.check_count(n, "an audit" if options is not None else "a job")
    decode = inputs.pixels / 1e6 * s.decode_gflop_per_mpixel
    per_image = (intake.estimate(spec.methods, info, n, 1, options) + decode) / n
    size = unit_size(spec.unit_size, per_image)
    units = max(1, math.ceil(n / size))
    gflop = intake.estimate(spec.methods, info, n, units, options) + decode
    return size, units, gflop, intake.admit_cost(gflop, units)


def create(job: str, kind: str, spec, info: dict, scope: str, inputs: Inputs, options: dict | None,
           pictures: bool) -> dict:
    """The job's manifest, recorded and queued; the 202 answer's body."""
    size, units, gflop, limits = plan(spec, info, inputs, options)
    m = JobManifest(id=job, kind=kind, tenant=auth.current().tenant, name=spec.name, model=info["name"],
                    model_version=info["version"], model_scope=scope, methods=spec.methods, inputs=inputs,
                    unit_size=size, units=units, pictures=pictures, options=options, created=time.time(),
                    cost=gflop)
    try:
        connections.get().lifecycle.create(m, limits)
    except LimitExceeded as e:
        intake.too_busy(e)
    return {"estimate": gflop, "limit": limits["max_job_gflop"], "skipped": [s.dump() for s in inputs.skipped]}


def label_function(labels: list | None, classes: list[str]):
    """The label of the image at a position (checked as it is asked for)."""
    if labels is None:
        return None

    def label_of(i: int) -> int | None:
        return intake.resolve_label(labels[i], i, classes) if i < len(labels) else None   # counts checked at the end
    return label_of


def relabel(inputs: Inputs, keys: Keys, job: str, label_of) -> None:
    """Labels that came after the images (a spec sent last): written into the index pages."""
    st = connections.get().storage
    for page in range(math.ceil(inputs.count / inputs.page_size)):
        p = IndexPage.model_validate_json(st.get(keys.input_index(job, page)))
        for k, e in enumerate(p.entries):
            e.label = label_of(p.first + k)
        st.put(keys.input_index(job, page), p.model_dump_json(exclude_none=True).encode(), "application/json")


def job_from_stream() -> tuple[str, dict]:
    """A multipart job: a `spec` field (best first) and image files of any field name."""
    job, keys = intake.new_id(), Keys(auth.current().tenant)
    spec = info = scope = intake_ = early = None
    c = connections.get()
    try:
        for part in streaming.parts(c.settings.max_images_per_job + 16):
            if part.filename is None:
                if part.name != "spec":
                    raise ApiError(400, f"unknown form field {part.name[:50]!r}: send a 'spec' field and image files")
                spec = intake.parse_spec(JobSpec, part.read(c.settings.max_json_mb << 20), "the 'spec' field")
                info, scope = intake.job_model(spec)
                intake.admit_cost(0.0, 1)    # a tenant at its limits hears it before sending its images
                if spec.inputs:
                    raise ApiError(400, "give images as files or as 'inputs' paths, not both")
                if intake_ is not None and intake_.writer.count:
                    continue
                intake_ = intake_ or JobInputs(job, keys, spec.skip_invalid)
                intake_.label_of = label_function(spec.labels, info["classes"])
            else:
                intake_ = intake_ or JobInputs(job, keys, False)
                name = part.filename or f"image-{intake_.writer.count}"
                try:
                    intake_.add(name, part.read(c.settings.max_image_mb << 20))
                except ApiError as e:
                    if spec is not None or e.code == 413 and "request" in e.message:
                        raise
                    early = early or e     # a file before the spec: its error counts once the spec is read
        if spec is None:
            raise ApiError(400, "multipart requests need a form field 'spec' holding the JSON spec")
        if early is not None:
            raise early
        if intake_ is None:
            raise ApiError(400, "no images: attach PNG/JPEG files (multipart) or list 'inputs' paths (JSON)")
        inputs = intake_.close()
        late = label_function(spec.labels, info["classes"])
        if spec.labels is not None and len(spec.labels) != inputs.count:
            raise ApiError(422, f"labels: {len(spec.labels)} given for {inputs.count} images; give one per image or none")
        if late is not None and intake_.label_of is None:
            relabel(inputs, keys, job, late)
        return job, create(job, "job", spec, info, scope, inputs, None, spec.pictures)
    except BaseException:
        if intake_ is not None:
            intake_.abort()
        raise


def job_from_uploads(spec: JobSpec) -> tuple[str, dict]:
    """A JSON job whose `inputs` name the tenant's uploads (nothing is copied)."""
    info, scope = intake.job_model(spec)
    paths = spec.inputs or []
    bad = [p for p in paths if not valid_path(p)]
    if bad:
        raise ApiError(422, f"inputs: {len(bad)} invalid path(s): paths are like 'folder/name.png' in your uploads "
                            "(letters, digits, '.', '_', '-'; no '..')", [str(b)[:200] for b in bad[:20]])
    if not paths:
        raise ApiError(400, "no images: attach PNG/JPEG files (multipart) or list 'inputs' paths (JSON)")
    intake.check_count(len(paths))
    plan(spec, info, Inputs(count=len(paths), page_size=1, sources=[]), None)   # too costly? before any lookup
    if spec.labels is not None and len(spec.labels) != len(paths):
        raise ApiError(422, f"labels: {len(spec.labels)} given for {len(paths)} images; give one per image or none")
    job, keys = intake.new_id(), Keys(auth.current().tenant)
    found = datasets.upload_sources(paths, keys)
    label_of = label_function(spec.labels, info["classes"])
    inputs = JobInputs(job, keys, spec.skip_invalid)
    try:
        for i, (p, (where, pixels)) in enumerate(zip(paths, found)):
            inputs.refer(p.rsplit("/", 1)[-1], where, label_of(i) if label_of else None, pixels)
        return job, create(job, "job", spec, info, scope, inputs.close(), None, spec.pictures)
    except BaseException:
        inputs.abort()
        raise


def audit_from_stream() -> tuple[str, dict]:
    """A multipart audit: a `spec` field first, then a `dataset` archive (zip or tar), kept whole."""
    c = connections.get()
    job, keys = intake.new_id(), Keys(auth.current().tenant)
    spec = info = scope = None
    inputs = None
    try:
        for part in streaming.parts(16):
            if part.filename is None and part.name == "spec":
                spec = intake.parse_spec(AuditSpec, part.read(c.settings.max_json_mb << 20), "the 'spec' field")
                info, scope = intake.job_model(spec)
                if spec.dataset is not None:
                    raise ApiError(400, "give the dataset as a 'dataset' file or as a 'dataset' folder, not both")
            elif part.name == "dataset" and part.filename is not None:
                if spec is None:
                    raise ApiError(400, "send the 'spec' field before the 'dataset' file")
                with part.spool(int(c.settings.max_dataset_gb * 2**30)) as f:
                    inputs = archive_inputs(job, keys, spec, info, f, part.filename)
            else:
                raise ApiError(400, f"unknown form field {part.name[:50]!r}: send a 'spec' field and a 'dataset' file")
        if spec is None or inputs is None:
            raise ApiError(400, "send a 'spec' field and a 'dataset' archive (zip or tar, one folder per class)")
        return job, create(job, "audit", spec, info, scope, inputs, spec.options.model_dump(), spec.pictures)
    except BaseException:
        JobInputs(job, keys).abort()
        raise


def archive_image(f, e, key: str, path: str, max_bytes: int) -> bytes:
    """An archive entry's bytes, inflated and checked against its CRC (400 if they do not fit)."""
    f.seek(e.offset)
    raw = f.read(e.length)
    try:
        data = entry_bytes(Read(key, e.offset, e.offset + e.length, []), raw,
                           InputEntry(name=path, source=0, offset=e.offset, length=e.length, deflated=e.deflated),
                           max_bytes)
    except (ValueError, zlib.error) as err:
        raise ApiError(400, f"cannot read the zip: {e.path[:200]!r}: {type(err).__name__}") from None
    if e.crc is not None and zlib.crc32(data) != e.crc:
        raise ApiError(400, f"cannot read the zip: {e.path[:200]!r}: its bytes do not match its CRC")
    return data


def archive_inputs(job: str, keys: Keys, spec: AuditSpec, info: dict, f, filename: str) -> Inputs:
    """Index a spooled archive (each image checked: CRC, header), then keep it whole."""
    c = connections.get()
    size = f.seek(0, 2)
    kind, entries = datasets.archive_entries(f, size, filename)
    key = keys.input_archive(job, kind)
    inputs = JobInputs(job, keys, spec.skip_invalid)
    for e, (folder, name) in zip(entries, datasets.class_paths([e.path for e in entries])):
        label, path = datasets.class_index(folder, info["classes"]), f"{folder}/{name}"
        try:
            data = archive_image(f, e, key, path, c.settings.max_image_mb << 20)
            _, pixels = streaming.probe_image(path, data, c.settings.max_image_pixels)
        except ApiError as err:
            if not spec.skip_invalid:
                raise
            inputs.skip(path, err.message)
            continue
        inputs.refer(path, Source(key, e.offset, e.length, e.deflated), label, pixels)
    result = inputs.close()
    c.storage.put_stream(key, f, size, "application/zip" if kind == "zip" else "application/x-tar")
    return result


def audit_from_uploads(spec: AuditSpec) -> tuple[str, dict]:
    """A JSON audit of a folder of the tenant's uploads laid out {folder}/{class}/{image}."""
    if spec.dataset is None:
        raise ApiError(400, "give the dataset as a 'dataset' zip or tar file (multipart) or as a 'dataset' folder of "
                            "your uploads (JSON)")
    if not valid_path(spec.dataset.strip("/")):
        raise ApiError(422, "dataset: a folder of your uploads, like 'sets/val' (letters, digits, '.', '_', '-')")
    info, scope = intake.job_model(spec)
    job, keys = intake.new_id(), Keys(auth.current().tenant)
    tree = datasets.class_tree(connections.get().storage, keys, spec.dataset.strip("/"))
    intake.check_count(len(tree), "an audit")
    inputs = JobInputs(job, keys, spec.skip_invalid)
    try:
        for folder, name, where, pixels in tree:
            inputs.refer(f"{folder}/{name}", where, datasets.class_index(folder, info["classes"]), pixels)
        return job, create(job, "audit", spec, info, scope, inputs.close(), spec.options.model_dump(), spec.pictures)
    except BaseException:
        inputs.abort()
        raise
