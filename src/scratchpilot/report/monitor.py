"""``scratchpilot report monitor``: drift of a deployed model's logged answers against its profile.

The log (one or more folders of :mod:`scratchpilot.monitor.predlog` files: the server's, the car's) is cut
into windows, by time (``--window 1h``) or by count (``--window 500req``); each window's input features,
predicted classes and confidence are compared with the model file's reference profile
(:mod:`scratchpilot.monitor.drift`: PSI and KS, the thresholds stated in the page) and given a verdict.
Whatever can be read is reported: torn, corrupt or foreign records are skipped and listed; a model with
no profile still gets the confidence trend, the classes, latencies and errors.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass

import numpy as np

from ..monitor.drift import LOW_CONFIDENCE, finite_number
from . import html as H
from .findings import Report, ReportError

#: rows of the lowest-confidence table
LOWEST_SHOWN = 24


@dataclass(frozen=True)
class Window:
    """How the log is cut: every ``seconds`` of time, or every ``count`` answers."""

    seconds: float | None = None
    count: int | None = None

    def describe(self) -> str:
        from ..util.text import format_seconds

        return f"{self.count:,d} answers" if self.count is not None else format_seconds(self.seconds)


def parse_window(text: str) -> Window:
    """``500req`` (answers) or a duration (``90s``, ``20m``, ``1h``)."""
    import argparse

    from ..options import duration

    cleaned = text.strip().lower()
    for suffix in ("requests", "answers", "req"):
        if cleaned.endswith(suffix):
            number = cleaned[: -len(suffix)].strip()
            if not number.isdigit() or int(number) < 1:
                raise argparse.ArgumentTypeError(f"a window of answers must be a whole number ≥ 1 such as 500req, "
                                                 f"got {text!r}")
            return Window(count=int(number))
    try:
        return Window(seconds=duration(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"--window must be a duration (90s, 20m, 1h) or a count of answers "
                                         f"(500req), got {text!r}") from None


def cut(records: list[dict], window: Window) -> list[list[dict]]:
    """Consecutive windows of ``records`` (sorted by time); time windows start at the first record."""
    if not records:
        return []
    if window.count is not None:
        return [records[i:i + window.count] for i in range(0, len(records), window.count)]
    start = records[0]["t"]
    out: dict[int, list[dict]] = {}
    for r in records:
        out.setdefault(int((r["t"] - start) // window.seconds), []).append(r)
    return [out[k] for k in sorted(out)]


def build_monitor_report(paths, model_path, window: Window, *, out_name: str = "monitor.html") -> Report:
    """Read the logs at ``paths``, assess them against ``model_path``'s profile, build the page."""
    from .. import nn
    from ..monitor.drift import assess
    from ..monitor.predlog import read_logs
    from ..monitor.profile import ProfileError, model_id, read_profile

    try:
        model = nn.load(model_path)
    except nn.ModelFileError as exc:
        raise ReportError(str(exc)) from None
    problems: list[str] = []
    try:
        profile = read_profile(model, model_path)
    except ProfileError as exc:
        profile = None
        problems.append(f"{exc}: drift is not assessed")
    if profile is None and not problems:
        problems.append(f"{model_path} has no reference profile (a model file from before profiles were kept): "
                        f"drift is not assessed; the confidence, classes, latencies and errors are")
    fingerprint = model_id(model_path)
    try:
        contents = read_logs(paths, model_id=fingerprint)
    except OSError as exc:
        raise ReportError(str(exc)) from None
    problems = contents.problems + problems
    answered = [r for r in contents.records if r.get("status", 200) == 200 and r.get("label") is not None]
    errors = [r for r in contents.records if r.get("status", 200) != 200]
    rows = []
    for records in cut(contents.records, window):
        ok = [r for r in records if r.get("status", 200) == 200 and r.get("label") is not None]
        stats = assess(profile, ok) if profile is not None else _plain(ok)
        latencies = np.array([r["latency_ms"] for r in records if finite_number(r.get("latency_ms"))])
        rows.append({"start": records[0]["t"], "end": records[-1]["t"], "records": len(records),
                     "errors": len(records) - len(ok),
                     "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else math.nan,
                     "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else math.nan,
                     "low_confidence": sum(1 for r in ok if finite_number(r.get("confidence"))
                                           and r["confidence"] < LOW_CONFIDENCE),
                     **stats})
    drifted = [i for i, w in enumerate(rows) if w["verdict"] == "drift"]
    lowest = _lowest(answered)
    data = {"model": str(model_path), "model_id": fingerprint, "window": window.describe(),
            "files": [str(f) for f in contents.files], "records": len(contents.records), "answered": len(answered),
            "errors": len(errors), "torn": contents.torn, "problems": problems, "profile": profile is not None,
            "windows": rows, "drifted_windows": drifted,
            "lowest_confidence": [{k: v for k, v in r.items() if k != "image"} for r in lowest],
            "thresholds": _thresholds()}
    # the JSON leaves the logged digits out (the page shows them); NaN and NumPy values become JSON there
    return Report(data=data, html=_page(data, profile, out_name, lowest), markdown=_markdown(data))


def _plain(records: list[dict]) -> dict:
    conf = np.array([r["confidence"] for r in records if finite_number(r.get("confidence"))])
    return {"n": len(records), "features": {}, "classes": None, "confidence": None,
            "mean_confidence": float(conf.mean()) if conf.size else math.nan, "verdict": "not assessed",
            "reasons": ["no reference profile"]}


def _lowest(records: list[dict]) -> list[dict]:
    scored = [r for r in records if finite_number(r.get("confidence"))]
    scored.sort(key=lambda r: r["confidence"])
    return [{k: r.get(k) for k in ("t", "label", "confidence", "features", "image", "stop")} for r in
            scored[:LOWEST_SHOWN]]


def _thresholds() -> dict:
    from ..monitor.drift import MIN_WINDOW
    from ..monitor.stats import KS_ALPHA, PSI_DRIFT, PSI_WATCH

    return {"psi_drift": PSI_DRIFT, "psi_watch": PSI_WATCH, "ks_alpha": KS_ALPHA, "min_window": MIN_WINDOW}


def _when(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _page(data: dict, profile: dict | None, out_name: str, lowest: list[dict]) -> str:
    rows, th = data["windows"], data["thresholds"]
    verdicts = [w["verdict"] for w in rows]
    header = H.cards([(f"{data['records']:,d}", "records"), (f"{len(rows):,d}", f"windows of {data['window']}"),
                      (f"{len(data['drifted_windows'])}", "windows with drift"),
                      (f"{data['errors']:,d}", "error answers"), (data["model_id"], "model id")])
    sections = [("verdicts", "Verdict per window", _verdict_table(rows))]
    if profile is not None and rows:
        sections.append(("features", "Input features against the profile", _features_section(rows, profile)))
        if profile.get("classes") is not None:
            sections.append(("classes", "Predicted classes", _classes_section(rows, profile)))
    sections.append(("confidence", "Confidence trend", _confidence_section(rows)))
    sections.append(("lowest", "Lowest-confidence inputs", _lowest_section(lowest)))
    method = (f"<p>Population stability index over the profile's bins: ≥ {th['psi_drift']} significant shift, "
              f"{th['psi_watch']}–{th['psi_drift']} moderate (watch). A feature or the confidence counts as drift "
              f"when its PSI is ≥ {th['psi_drift']} and a two-sample Kolmogorov–Smirnov test against the profile's "
              f"sample gives p &lt; {th['ks_alpha']}; the predicted classes by PSI alone. Windows with fewer than "
              f"{th['min_window']} answers get no verdict. Only answered requests (status 200) are assessed.</p>")
    log_html = H.key_values([("model", data["model"]), ("files", f"{len(data['files'])}"),
                             ("torn last records skipped", data["torn"])])
    problems = "".join(f"<li>{H.esc(p)}</li>" for p in data["problems"][:200]) or "<li>none</li>"
    sections.append(("log", "The log and the method", f"{log_html}<h3>Problems</h3><ul>{problems}</ul>{method}"))
    drift_word = "drift in " + ", ".join(str(i + 1) for i in data["drifted_windows"]) if data["drifted_windows"] \
        else ("no drift" if "stable" in verdicts or "watch" in verdicts else "nothing assessed")
    return H.page("Monitoring: drift of the deployed model", H.esc(f"{drift_word} · {out_name}"), header, sections)


def _verdict_table(rows: list[dict]) -> str:
    if not rows:
        return '<p class="muted">no records to assess</p>'
    body = [(i + 1, _when(w["start"]), _when(w["end"]), w["records"], w["errors"], w["verdict"],
             "; ".join(w["reasons"][:4]), _fmt(w["p50_ms"]), _fmt(w["p99_ms"])) for i, w in enumerate(rows)]
    return H.table(["window", "from", "to", "records", "errors", "verdict", "why", "p50 ms", "p99 ms"], body,
                   numeric=(0, 3, 4, 7, 8))


def _features_section(rows: list[dict], profile: dict) -> str:
    from .plots import PALETTE, pyplot

    names = list(profile["features"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 3.4))
    x = np.arange(1, len(rows) + 1)
    for k, name in enumerate(names):
        ax.plot(x, [w["features"].get(name, {}).get("psi", math.nan) for w in rows], marker="o", markersize=3,
                linewidth=1.1, label=name, color=PALETTE[k % len(PALETTE)])
    from ..monitor.stats import PSI_DRIFT, PSI_WATCH

    ax.axhline(PSI_DRIFT, color="#D55E00", linestyle="--", linewidth=1)
    ax.axhline(PSI_WATCH, color="#E69F00", linestyle=":", linewidth=1)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("window")
    ax.set_ylabel("PSI")
    ax.set_title("Input-feature drift per window (dashed: drift, dotted: watch)")
    ax.legend(fontsize=7, ncol=2)
    uri = H.figure_data_uri(fig)
    table_rows = []
    for i, w in enumerate(rows):
        cells = [i + 1] + [_cell(w["features"].get(name)) for name in names]
        table_rows.append(cells)
    ref = H.key_values([("profile made from", profile.get("source", "")),
                        ("answers profiled on", (profile.get("classes") or {}).get("held_out", "—"))])
    return (H.figure(uri, "PSI of each input feature per window") + ref
            + H.table(["window"] + [f"{n} PSI / KS p" for n in names], table_rows, numeric=(0,)))


def _classes_section(rows: list[dict], profile: dict) -> str:
    from .plots import stacked_shares

    labels = profile["classes"]["labels"]
    shares = np.array([profile["classes"]["shares"]] + [w["classes"]["shares"] if w["classes"] else
                                                         [0.0] * len(labels) for w in rows])
    names = ["profile"] + [f"window {i + 1}" for i in range(len(rows))]
    uri = stacked_shares(shares[:40], names[:40], labels, "Predicted-class shares")
    table_rows = [(i + 1, _fmt(w["classes"]["psi"]) if w["classes"] else "—") for i, w in enumerate(rows)]
    return H.figure(uri, "share of each predicted class, the profile's held-out answers first") + \
        H.table(["window", "class PSI"], table_rows, numeric=(0, 1))


def _confidence_section(rows: list[dict]) -> str:
    if not rows:
        return '<p class="muted">no answers</p>'
    from .plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    x = np.arange(1, len(rows) + 1)
    ax.plot(x, [w["mean_confidence"] for w in rows], marker="o", markersize=3, label="mean confidence")
    ax.plot(x, [w["low_confidence"] / max(1, w["records"] - w["errors"]) for w in rows], marker="s", markersize=3,
            label=f"share below {LOW_CONFIDENCE}")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("window")
    ax.set_title("Confidence (top probability) per window")
    ax.legend(fontsize=8)
    return H.figure(H.figure_data_uri(fig), "mean confidence, and the share of low-confidence answers")


def _lowest_section(lowest: list[dict]) -> str:
    if not lowest:
        return '<p class="muted">no answers</p>'
    out = []
    thumbs = []
    for r in lowest:
        image = _image(r.get("image"))
        if image is not None:
            thumbs.append((H.image_data_uri(image), H.esc(f"{r['label']} {r['confidence']:.2f}")))
        features = ", ".join(f"{k} {v:.3g}" for k, v in (r.get("features") or {}).items() if finite_number(v))
        out.append((_when(r["t"]), r["label"], f"{r['confidence']:.3f}", features))
    grid = H.thumbnails(thumbs) if thumbs else '<p class="muted">no images in the log (serve --log-images keeps ' \
                                               'them)</p>'
    return grid + H.table(["time", "label", "confidence", "input features"], out, numeric=(2,))


def _image(text) -> np.ndarray | None:
    import base64
    import binascii

    if not isinstance(text, str) or len(text) > 8192:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return np.frombuffer(raw, dtype=np.uint8).reshape(28, 28) if len(raw) == 784 else None


def _cell(stats: dict | None) -> str:
    if not stats:
        return "—"
    mark = " ⚠" if stats["drift"] else ""
    return f"{stats['psi']:.2f} / {stats['p']:.1g}{mark}"


def _fmt(value) -> str:
    return f"{value:.2f}" if finite_number(value) else "—"


def _markdown(data: dict) -> str:
    lines = [f"# Monitoring: {data['model']}", "",
             f"{data['records']:,d} records ({data['errors']:,d} errors) in {len(data['files'])} files; "
             f"{len(data['windows'])} windows of {data['window']}."]
    for i, w in enumerate(data["windows"]):
        lines.append(f"- window {i + 1} ({w['records']} records): **{w['verdict']}**"
                     + (f" — {'; '.join(w['reasons'][:3])}" if w["reasons"] else ""))
    if data["problems"]:
        lines += ["", "Problems:"] + [f"- {p}" for p in data["problems"][:20]]
        if len(data["problems"]) > 20:
            lines.append(f"- … and {len(data['problems']) - 20} more (see the page)")
    return "\n".join(lines) + "\n"
