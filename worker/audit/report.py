"""The audit report: `report.json` (schema: the pydantic `Report` below, documented in
REPORT.md) and a self-contained `report.html` (inline CSS, matplotlib plots embedded
as base64 PNG). No I/O: dicts and strings out.
"""
from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SCHEMA = "xaiq.audit.report/1"


# --- schema ------------------------------------------------------------------------
class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Region(_M):
    pixels: list[int] = Field(min_length=4, max_length=4, description="x0, y0, x1, y1 in input pixels, end-exclusive")
    fractions: list[float] = Field(min_length=4, max_length=4, description="the same as fractions of width/height")


class Scores(BaseModel):
    """How the maps proposed the region (free to grow: extra keys allowed)."""
    model_config = ConfigDict(extra="allow")
    mass: float
    reference_mass: float
    excess: float
    lift: float
    area_frac: float
    group_size: int
    class_size: int


class Effect(_M):
    n: int = Field(description="images tested")
    accuracy_effect: float = Field(description="mean per image: lost (removal) or gained (paste) the class, "
                                               "minus the same for same-size control regions")
    low: float
    high: float
    probability_effect: float
    probability_low: float
    probability_high: float
    before: float = Field(description="share of the images predicted as the class before")
    after: float = Field(description="... after the change in the region")
    control_after: float = Field(description="... after the change in the control regions (mean)")


class Evidence(_M):
    region: Region
    image_indices: list[int]
    methods: list[str]
    groups: list[str]
    scores: Scores
    removal: Effect
    paste: Effect
    confidence: float
    reason: str
    prototype: list[list[float]] | None = None
    thresholds: dict[str, Any] | None = None


class Flag(_M):
    class_: int = Field(alias="class")
    class_name: str
    kind: Literal["shortcut"]
    method: str | None
    group: str
    evidence: Evidence


class NearMiss(Flag):
    kind: Literal["near_miss"]


class Shortcuts(_M):
    run: bool
    why: str | None = None
    candidates: int = 0
    tests: int = 0
    confidence: float | None = None
    forward_passes: int = 0
    fill: str | None = None
    near_misses: list[NearMiss] = Field(default_factory=list)


class SanityStage(_M):
    layer: str
    spearman_mean: float
    spearman_std: float


class Sanity(_M):
    method: str
    metric: Literal["MPRT"] = "MPRT"
    absolute: bool = True
    n_images: int
    stages: list[SanityStage]
    final_spearman: float
    pass_threshold: float
    passed: bool


class FaithStats(_M):
    n: int
    deletion: float | None
    insertion: float | None
    deletion_random: float | None
    insertion_random: float | None
    deletion_beats_random: float | None
    insertion_beats_random: float | None


class Faithfulness(_M):
    overall: FaithStats
    per_class: list[FaithStats]
    histograms: dict[str, list[float]]


class Stats(_M):
    n: int
    mean: float | None
    std: float | None


class StatsByClass(_M):
    overall: Stats
    per_class: list[Stats]


class Quality(_M):
    faithfulness_correlation: StatsByClass
    sparseness: StatsByClass
    complexity: StatsByClass
    max_sensitivity: StatsByClass


class Agreement(StatsByClass):
    methods: list[str] = Field(min_length=2, max_length=2)


class Curves(_M):
    n: int
    fraction: list[float]
    deletion: list[float]
    insertion: list[float]
    deletion_random: list[float]
    insertion_random: list[float]


class MethodSummary(_M):
    faithfulness: Faithfulness
    mean_maps: list[list[list[float]] | None]
    quality: Quality
    curves: Curves | None = None


class PerClass(_M):
    class_: int = Field(alias="class")
    name: str
    count: int
    correct: int
    accuracy: float | None


class Report(_M):
    schema_: Literal["xaiq.audit.report/1"] = Field(alias="schema")
    created: str
    meta: dict[str, Any]
    classes: list[str]
    n_images: int
    n_classes: int
    input_size: list[int]
    methods: list[str]
    accuracy: float
    confusion: list[list[int]]
    per_class: list[PerClass]
    per_method: dict[str, MethodSummary]
    agreement: list[Agreement]
    flags: list[Flag]
    shortcuts: Shortcuts | None = None
    sanity: list[Sanity]


def validate_report(report: dict) -> Report:
    """Raise pydantic.ValidationError if `report` does not follow the schema."""
    return Report.model_validate(report)


def json_schema() -> dict:
    return Report.model_json_schema(by_alias=True)


# --- report.json -------------------------------------------------------------------
def build_report(summary: dict, flags: list[dict], sanity: list[dict], class_names: list[str] | None = None,
                 meta: dict | None = None, shortcuts: dict | None = None) -> dict:
    """The report dict (JSON-ready) from `aggregate.summarise`, `causal.run_tests` flags
    and its section (near-misses), and `sanity.cascading_randomisation` results."""
    report = {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "meta": dict(meta or {}), **summary, "flags": list(flags),
              "shortcuts": shortcuts if shortcuts is not None else {"run": False, "why": "not searched"},
              "sanity": list(sanity)}
    if class_names:
        report["classes"] = list(class_names)
    report = json.loads(json.dumps(report, default=_json_default))
    validate_report(report)
    return report


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


# --- report.html -------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img_tag(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _as_image(a) -> np.ndarray:
    a = np.asarray(a, np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.max() > 1.0:
        a = a / 255.0
    return np.clip(a, 0, 1)


def _subplots(nrows: int, ncols: int, figsize):
    """A figure without pyplot (no global state, thread-safe, no display needed)."""
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["text.parse_math"] = False   # class names are text, never TeX ("$" included)

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def fig_confusion(report: dict) -> str:
    cm = np.asarray(report["confusion"], float)
    k = len(cm)
    fig, ax = _subplots(1, 1, (1.2 + 0.45 * k, 1.0 + 0.45 * k))
    ax = ax[0, 0]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ticks = range(k)
    ax.set_xticks(ticks, report["classes"], rotation=90, fontsize=7)
    ax.set_yticks(ticks, report["classes"], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    return _png(fig)


def fig_mean_maps(report: dict, max_classes: int = 20) -> str:
    methods, classes = report["methods"], report["classes"][:max_classes]
    fig, axes = _subplots(len(methods), len(classes), (1.1 * len(classes) + 0.8, 1.2 * len(methods) + 0.3))
    for r, m in enumerate(methods):
        for c, name in enumerate(classes):
            ax = axes[r, c]
            mm = report["per_method"][m]["mean_maps"][c]
            if mm is not None:
                ax.imshow(np.asarray(mm), cmap="inferno")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(m, fontsize=8)
    return _png(fig)


def fig_auc(report: dict) -> str:
    methods = report["methods"]
    fig, axes = _subplots(len(methods), 2, (7, 2.2 * len(methods)))
    for r, m in enumerate(methods):
        h = report["per_method"][m]["faithfulness"]["histograms"]
        edges = np.asarray(h["bin_edges"])
        mid, wd = (edges[1:] + edges[:-1]) / 2, np.diff(edges)
        for c, kind in enumerate(("deletion", "insertion")):
            ax = axes[r, c]
            ax.bar(mid, h[kind], width=wd, alpha=0.7, label=f"{m}")
            ax.bar(mid, h[f"{kind}_random"], width=wd, alpha=0.5, label="random order")
            ax.set_title(f"{m}: {kind} AUC ({'lower' if kind == 'deletion' else 'higher'} is better)", fontsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def fig_sanity(report: dict) -> str:
    fig, ax = _subplots(1, 1, (7, 3))
    ax = ax[0, 0]
    for s in report["sanity"]:
        y = [st["spearman_mean"] for st in s["stages"]]
        ax.plot(range(len(y)), y, marker="o", label=s["method"])
        ax.set_xticks(range(len(y)), [st["layer"] for st in s["stages"]], rotation=45, fontsize=7, ha="right")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("Spearman vs original")
    ax.set_xlabel("randomised down to layer (cumulative, top first)")
    ax.legend(fontsize=7)
    return _png(fig)


def fig_flag(flag: dict, mean_map, input_size, evidence: dict | None) -> str:
    """The region on the class's mean map, then class images with and without the region,
    then other images with the region pasted in (each titled with the class's probability)."""
    from matplotlib.patches import Rectangle

    ev, evidence = flag["evidence"], evidence or {}
    x0, y0, x1, y1 = ev["region"]["pixels"]
    H, W = input_size
    removed, pasted = evidence.get("removed", []), evidence.get("pasted", [])
    cols = max(1 + len(removed), len(pasted), 1)
    rows = 1 + 2 * (len(removed) > 0) + 2 * (len(pasted) > 0)
    fig, axes = _subplots(rows, cols, (1.5 * cols, 1.6 * rows))
    for a in axes.ravel():
        a.set_axis_off()
    ax = axes[0, 0]
    ax.imshow(np.asarray(mean_map if mean_map is not None else ev.get("prototype") or [[0]]), cmap="inferno",
              extent=(0, W, H, 0))
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=1.5))
    ax.set_title(f"mean map, class {flag['class_name']}", fontsize=7)
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([])
    r = 1
    for pairs, first, second in ((removed, "with region", "region replaced"), (pasted, "other class", "region pasted")):
        if not pairs:
            continue
        for j, (before, after, p0, p1) in enumerate(pairs):
            for row, (img, p, what) in enumerate(((before, p0, first), (after, p1, second))):
                a = axes[r + row, j]
                pic = _as_image(img)
                a.imshow(pic, cmap="gray" if pic.ndim == 2 else None, extent=(0, W, H, 0), vmin=0, vmax=1)
                a.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=1))
                a.set_title(f"{what}\np={p:.2f}", fontsize=7)
        r += 2
    fig.tight_layout()
    return _png(fig)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th{background:#f4f4f4}.flag{border-left:4px solid #d33;padding:.4em .8em;margin:.8em 0;background:#fff6f6}
.ok{color:#185}.bad{color:#c22}img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}"""


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def _effect_text(e: dict, verb: str) -> str:
    return (f"{verb} {e['accuracy_effect']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}] "
            f"(probability {e['probability_effect']:+.2f} [{e['probability_low']:+.2f}, {e['probability_high']:+.2f}]; "
            f"share predicted as the class {e['before']:.2f} → {e['after']:.2f}, controls → {e['control_after']:.2f}; "
            f"n={e['n']})")


def _html_flags(report: dict, evidence: list[dict]) -> list[str]:
    e = html.escape
    sc = report.get("shortcuts") or {"run": False}
    parts = [f"<h2>Shortcut flags ({len(report['flags'])})</h2>"]
    if not sc.get("run"):
        return parts + [f"<p>Shortcut search not run: {e(str(sc.get('why')))}.</p>"]
    parts.append(f"<p>{sc['candidates']} candidate region(s) proposed by the methods' maps, each tested on the model "
                 f"({sc['forward_passes']} forward passes, fill '{e(str(sc.get('fill')))}'). Effects are means over "
                 f"images minus same-size control regions, with {sc['confidence']:.4f} percentile-bootstrap intervals "
                 f"(Bonferroni over {sc['tests']} tests): removal = share of the class's images that lose the class, "
                 "paste = share of other images whose prediction moves to the class.</p>")
    if not report["flags"]:
        parts.append("<p class='ok'>No candidate region has a significant effect on the model.</p>")
    mean_maps = {m: report["per_method"][m]["mean_maps"] for m in report["methods"]}
    for j, f in enumerate(report["flags"]):
        ev = f["evidence"]
        mm = mean_maps.get(f["method"], [None] * (f["class"] + 1))[f["class"]]
        parts.append(
            f"<div class='flag'><b>class {e(f['class_name'])}</b>: region {ev['region']['pixels']} "
            f"(proposed by {e(', '.join(ev['groups']))}). {e(ev['reason'])}.<br>"
            f"{_effect_text(ev['removal'], 'removal')}<br>{_effect_text(ev['paste'], 'paste')}<br>"
            + _img_tag(fig_flag(f, mm, report["input_size"], evidence[j] if j < len(evidence) else None),
                       "region, images with and without it, and with it pasted in") + "</div>")
    near = sc.get("near_misses", [])
    if near:
        parts.append(f"<h3>Near-misses ({len(near)})</h3><table><tr><th>class</th><th>region</th><th>proposed by</th>"
                     "<th>removal [interval]</th><th>paste [interval]</th><th>reason</th></tr>" + "".join(
                         f"<tr><td>{e(n['class_name'])}</td><td>{n['evidence']['region']['pixels']}</td>"
                         f"<td>{e(', '.join(n['evidence']['methods']))}</td>"
                         f"<td>{n['evidence']['removal']['accuracy_effect']:+.2f} [{n['evidence']['removal']['low']:+.2f}, "
                         f"{n['evidence']['removal']['high']:+.2f}]</td>"
                         f"<td>{n['evidence']['paste']['accuracy_effect']:+.2f} [{n['evidence']['paste']['low']:+.2f}, "
                         f"{n['evidence']['paste']['high']:+.2f}]</td><td>{e(n['evidence']['reason'])}</td></tr>"
                         for n in near) + "</table>")
    return parts


def _html_faithfulness(report: dict) -> list[str]:
    e = html.escape
    parts = ["<h2>Faithfulness: deletion / insertion AUC</h2><p>Petsiuk et al. 2018: pixels removed (inserted) in "
             "order of attribution; lower deletion and higher insertion than a random order mean the map "
             "points at what the model uses.</p>",
             "<table><tr><th>method</th><th>n</th><th>deletion</th><th>random</th><th>beats random</th>"
             "<th>insertion</th><th>random</th><th>beats random</th></tr>" + "".join(
                 f"<tr><td>{e(m)}</td><td>{o['n']}</td><td>{_fmt(o['deletion'])}</td><td>{_fmt(o['deletion_random'])}</td>"
                 f"<td>{_fmt(o['deletion_beats_random'])}</td><td>{_fmt(o['insertion'])}</td>"
                 f"<td>{_fmt(o['insertion_random'])}</td><td>{_fmt(o['insertion_beats_random'])}</td></tr>"
                 for m in report["methods"] for o in [report["per_method"][m]["faithfulness"]["overall"]]) + "</table>"]
    if any(report["per_method"][m]["faithfulness"]["overall"]["n"] for m in report["methods"]):
        parts.append(_img_tag(fig_auc(report), "AUC distributions"))
    return parts


QUALITY_TEXT = {  # metric -> (title, which way is better, source)
    "faithfulness_correlation": ("faithfulness correlation", "higher is better", "Bhatt et al. 2020"),
    "sparseness": ("sparseness (Gini)", "higher = more concentrated", "Chalasani et al. 2020"),
    "complexity": ("complexity (entropy)", "lower = simpler", "Bhatt et al. 2020"),
    "max_sensitivity": ("max-sensitivity", "lower = more stable", "Yeh et al. 2019"),
}


def fig_quality(report: dict) -> str:
    """One panel per metric: each method's mean over the images, the std as an error bar."""
    methods = report["methods"]
    fig, axes = _subplots(1, len(QUALITY_TEXT), (3.0 * len(QUALITY_TEXT), 2.2 + 0.1 * len(methods)))
    for ax, (key, (title, better, _)) in zip(axes[0], QUALITY_TEXT.items()):
        stats = [report["per_method"][m]["quality"][key]["overall"] for m in methods]
        mean = [s["mean"] if s["mean"] is not None else np.nan for s in stats]
        std = [s["std"] if s["std"] is not None else 0.0 for s in stats]
        ax.barh(range(len(methods)), mean, xerr=std, color="#4a7ab5", alpha=0.8)
        ax.set_yticks(range(len(methods)), methods, fontsize=7)
        ax.set_title(f"{title}\n({better})", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return _png(fig)


def _html_quality(report: dict) -> list[str]:
    e = html.escape
    parts = ["<h2>Explanation quality</h2><p>Quantus's definitions, per image, mean ± std over the images "
             "where computed (n): " + "; ".join(f"{t} ({b}; {src})" for t, b, src in QUALITY_TEXT.values())
             + ". Max-sensitivity runs on a sample.</p>"]
    head = "".join(f"<th>{e(t)}</th><th>n</th>" for t, _, _ in QUALITY_TEXT.values())
    rows = []
    for m in report["methods"]:
        q = report["per_method"][m]["quality"]
        rows.append(f"<tr><td>{e(m)}</td>" + "".join(
            f"<td>{_mean_std(q[k]['overall'])}</td><td>{q[k]['overall']['n']}</td>" for k in QUALITY_TEXT) + "</tr>")
    parts.append(f"<table><tr><th>method</th>{head}</tr>{''.join(rows)}</table>")
    if any(report["per_method"][m]["quality"][k]["overall"]["n"] for m in report["methods"] for k in QUALITY_TEXT):
        parts.append(_img_tag(fig_quality(report), "explanation quality"))
        parts.append("<p>Mean per class:</p>" + _per_class_table(report, [
            (f"{m}: {QUALITY_TEXT[k][0]}", report["per_method"][m]["quality"][k])
            for m in report["methods"] for k in QUALITY_TEXT]))
    return parts


def _mean_std(s: dict) -> str:
    return "–" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"


def _per_class_table(report: dict, rows: list[tuple[str, dict]], max_classes: int = 30) -> str:
    """A table of per-class means: one row per (label, {overall, per_class}) and a column per class."""
    e = html.escape
    names = [p["name"] for p in report["per_class"]]
    if len(names) > max_classes:
        return f"<p>{len(names)} classes: the per-class values are in report.json.</p>"
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    body = "".join(f"<tr><td>{e(label)}</td><td>{_mean_std(st['overall'])}</td>"
                   + "".join(f"<td>{_fmt(c['mean'])}</td>" for c in st["per_class"]) + "</tr>" for label, st in rows)
    return f"<table><tr><th></th><th>all</th>{head}</tr>{body}</table>"


def fig_agreement(report: dict) -> str:
    """The methods x methods matrix of mean Spearman correlations (1 on the diagonal)."""
    methods = report["methods"]
    k = len(methods)
    mat = np.eye(k)
    for a in report["agreement"]:
        i, j = methods.index(a["methods"][0]), methods.index(a["methods"][1])
        mat[i, j] = mat[j, i] = a["overall"]["mean"] if a["overall"]["mean"] is not None else np.nan
    fig, ax = _subplots(1, 1, (1.5 + 0.8 * k, 1.2 + 0.8 * k))
    ax = ax[0, 0]
    ax.imshow(mat, cmap="RdBu", vmin=-1, vmax=1)
    for i in range(k):
        for j in range(k):
            v = mat[i, j]
            ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(v) > 0.6 else "black")
    ax.set_xticks(range(k), methods, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(k), methods, fontsize=7)
    ax.set_title("mean Spearman correlation", fontsize=8)
    return _png(fig)


def _html_agreement(report: dict) -> list[str]:
    parts = ["<h2>Agreement between methods</h2>"]
    if not report["agreement"]:
        return parts + ["<p>One method: nothing to compare.</p>"]
    parts.append("<p>Spearman rank correlation of two methods' maps of the same image, mean over the images "
                 "(overall and per class); near 1: they rank the pixels alike.</p>" + _img_tag(fig_agreement(report),
                                                                                                "agreement between methods"))
    parts.append(_per_class_table(report, [(" / ".join(a["methods"]), a) for a in report["agreement"]]))
    return parts


def _html_sanity(report: dict) -> list[str]:
    parts = ["<h2>Sanity check: model parameter randomisation test (MPRT)</h2>"]
    if not report["sanity"]:
        return parts + ["<p>Not run.</p>"]
    parts.append("<p>Adebayo et al. 2018: weights re-initialised from the top layer down, cumulatively; a method "
                 "that explains the model must change (the Spearman rank correlation of the absolute maps with the "
                 "original ones drops).</p>" + _img_tag(fig_sanity(report), "sanity check"))
    parts.append("<ul>" + "".join(
        f"<li>{html.escape(s['method'])}: final Spearman {s['final_spearman']:.3f} — "
        f"<span class='{'ok' if s['passed'] else 'bad'}'>{'passes' if s['passed'] else 'FAILS'}</span> "
        f"(threshold {s['pass_threshold']})</li>" for s in report["sanity"]) + "</ul>")
    return parts


def render_html(report: dict, evidence: list[dict] | None = None) -> str:
    """One self-contained HTML page. evidence: per flag, `removed` and `pasted` lists of
    (image before, image after, class probability before, after), images (H, W),
    (H, W, 3) or (C, H, W) in [0, 1] (from `causal.run_tests`)."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>xaiq audit</title><style>{_CSS}</style></head><body>",
             "<h1>xaiq dataset audit</h1>",
             f"<p>{report['n_images']} images, {report['n_classes']} classes, methods: "
             f"{e(', '.join(report['methods']))}. Created {e(report['created'])}. "
             f"Accuracy <b>{report['accuracy']:.3f}</b>.</p>"]
    if report["meta"]:
        parts.append("<p>" + ", ".join(f"{e(str(k))}: <code>{e(str(v))}</code>" for k, v in report["meta"].items()) + "</p>")
    parts += _html_flags(report, evidence or [])
    parts.append("<h2>Accuracy</h2>" + _img_tag(fig_confusion(report), "confusion matrix"))
    parts.append("<table><tr><th>class</th><th>images</th><th>correct</th><th>accuracy</th></tr>" + "".join(
        f"<tr><td>{e(p['name'])}</td><td>{p['count']}</td><td>{p['correct']}</td><td>{_fmt(p['accuracy'])}</td></tr>"
        for p in report["per_class"]) + "</table>")
    parts.append("<h2>Mean attribution per class</h2>" + _img_tag(fig_mean_maps(report), "mean maps"))
    parts += _html_faithfulness(report) + _html_quality(report) + _html_agreement(report) + _html_sanity(report)
    parts.append("</body></html>")
    return "\n".join(parts)
