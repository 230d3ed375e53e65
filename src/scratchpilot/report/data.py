"""``report data``: describe, explore and verify an image dataset (CRISP-DM "data understanding").

The input is one split (a named dataset such as ``mnist``, a Kaggle CSV, an IDX file or a folder of
images in one subfolder per label), optionally compared with a second one (``mnist`` is compared with
``mnist-test`` by default). The result is a :class:`Report`: the figures as a JSON-able dict, one
self-contained HTML page and a short Markdown summary.

Sections of the page:

1. **Description**: records, fields and their types, sizes, source files with SHA-256, label set.
2. **Exploration**: class distribution, sample images per class, mean image per class, pixel histogram.
3. **Quality**: unreadable, missing or out-of-range values; exact duplicates within and across splits
   (leakage); constant pixels; class imbalance; suspected label errors (nearest-neighbour disagreement).

Every check adds a *finding* (``check``, ``severity`` ok/info/warning/error, ``split``, ``message``,
``count`` and details) to ``report.json["findings"]``; tests and scripts read those.
"""

from __future__ import annotations

import time

import numpy as np

from . import html as H
from . import quality
from .findings import Report, ReportError, _finding, findings_markdown  # noqa: F401  (the report API)
from .splits import DEFAULT_COMPARE, IMAGE_SUFFIXES, ImageSplit, load_image_folder, load_split  # noqa: F401

#: how many label suspects the JSON lists and the page shows
MAX_SUSPECTS_LISTED, MAX_SUSPECTS_SHOWN = 200, 40
MAX_DUPLICATE_GROUPS_LISTED = 50
SAMPLES_PER_CLASS = 12


def _pixel_moments(images: np.ndarray, block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and standard deviation, float64 of shape ``images.shape[1:]``, in blocks."""
    total = np.zeros(images.shape[1:], np.float64)
    squares = np.zeros(images.shape[1:], np.float64)
    for start in range(0, len(images), block):
        part = images[start:start + block].astype(np.float32)
        total += part.sum(axis=0, dtype=np.float64)
        squares += np.square(part).sum(axis=0, dtype=np.float64)
    n = max(len(images), 1)
    mean = total / n
    return mean, np.sqrt(np.maximum(squares / n - mean**2, 0.0))


def _sources(split: ImageSplit) -> list[dict]:
    from ..data import sha256_file

    rows = []
    for path in split.sources:
        if path.is_file():
            rows.append({"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)})
        else:
            rows.append({"path": str(path), "bytes": None, "sha256": None})
    return rows


def describe_split(split: ImageSplit) -> dict:
    """Records, fields, sizes, sources and labels of one split (the Description numbers)."""
    images = split.images
    fields = [{"name": "image", "type": str(images.dtype), "shape": list(images.shape[1:]),
               "values": f"{int(images.min())}..{int(images.max())}" if images.size else "-"}]
    counts = None
    if split.labels is not None:
        fields.append({"name": "label", "type": str(split.labels.dtype), "shape": [],
                       "values": f"{len(split.class_names)} classes"})
        counts = np.bincount(split.labels, minlength=len(split.class_names)).tolist()
    return {
        "name": split.name, "kind": split.kind, "records": len(split), "records_read": split.n_read,
        "records_excluded": split.n_read - len(split), "fields": fields,
        "image_shape": list(images.shape[1:]), "bytes_in_memory": int(images.nbytes + (
            split.labels.nbytes if split.labels is not None else 0)),
        "sources": _sources(split), "labelled": split.labels is not None,
        "class_names": list(split.class_names) if split.labels is not None else [],
        "class_counts": counts,
        **_value_stats(images),
    }


def _value_stats(images: np.ndarray) -> dict:
    """Mean and standard deviation of all pixel values, from their histogram (one pass, no float copy)."""
    if not images.size:
        return {"pixel_mean": None, "pixel_std": None}
    histogram = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(len(histogram))
    mean = float(histogram @ values / histogram.sum())
    return {"pixel_mean": mean, "pixel_std": float(np.sqrt(histogram @ (values - mean) ** 2 / histogram.sum()))}


def _position(problem: dict) -> str:
    """``line 4, column 11 (pixel10): `` for a CSV problem, ``` for others (their message names the file)."""
    if problem.get("line") is None:
        return ""
    where = f"line {problem['line']}"
    if problem.get("column") is not None:
        where += f", column {problem['column']}" + (f" ({problem['column_name']})" if problem.get("column_name")
                                                    else "")
    return where + ": "


def check_split(split: ImageSplit, rng: np.random.Generator, progress: bool = True) -> tuple[dict, list[dict], dict]:
    """The quality numbers and findings of one split.

    Returns
    -------
    numbers : JSON-able figures (duplicates, constant pixels, imbalance, label suspects, value problems).
    findings : list of finding dicts.
    arrays : intermediate arrays the page draws (pixel mean/std, duplicate groups, suspect indices).
    """
    name = split.name
    findings: list[dict] = []
    numbers: dict = {}
    arrays: dict = {}

    # values: what reading found; uint8 storage itself rules out anything outside 0..255
    numbers["value_problems"] = {"total": split.n_problems, "by_kind": dict(split.problem_counts),
                                 "listed": split.problems[:MAX_SUSPECTS_LISTED],
                                 "records_excluded": split.n_read - len(split)}
    for kind, one, several in (
            ("missing", "missing value", "missing values"), ("out_of_range", "out-of-range value",
                                                             "out-of-range values"),
            ("not_integer", "value that is not an integer", "values that are not integers"),
            ("column_count", "line with the wrong number of columns", "lines with the wrong number of columns"),
            ("empty_line", "empty line", "empty lines"), ("header", "header problem", "header problems"),
            ("damaged", "damaged gzip stream", "damaged gzip streams"),
            ("unreadable", "unreadable image file", "unreadable image files"),
            ("size", "image of an odd size", "images of an odd size")):
        items = [p for p in split.problems if p["kind"] == kind]
        count = split.problem_counts.get(kind, 0)
        if count:
            described = one if count == 1 else several
            first = f" (first: {_position(items[0])}{items[0]['message']})" if items else ""
            findings.append(_finding(kind, "error", name, f"{count:,d} {described}{first}", count,
                                     items=items[:MAX_SUSPECTS_LISTED]))
    if not split.n_problems:
        findings.append(_finding("values", "ok", name, "no missing or out-of-range values"
                                 + (" (uint8 pixels cannot leave 0..255)" if split.kind != "kaggle-csv" else "")))
    elif split.n_read != len(split):
        findings.append(_finding("records_excluded", "warning", name,
                                 f"{split.n_read - len(split):,d} of {split.n_read:,d} records have problems and are "
                                 "left out of every other check", split.n_read - len(split)))

    # exact duplicates within the split
    groups = quality.duplicate_groups(split.images)
    arrays["duplicate_groups"] = groups
    copies = sum(len(g) - 1 for g in groups)
    conflicting = [g for g in groups if split.labels is not None and len(np.unique(split.labels[g])) > 1]
    numbers["duplicates"] = {
        "groups": len(groups), "images_in_groups": int(sum(len(g) for g in groups)), "extra_copies": copies,
        "conflicting_label_groups": len(conflicting),
        "listed": [{"indices": g.tolist(), "where": [split.locate(i) for i in g],
                    "labels": split.labels[g].tolist() if split.labels is not None else None}
                   for g in groups[:MAX_DUPLICATE_GROUPS_LISTED]]}
    if groups:
        findings.append(_finding("duplicates", "warning", name,
                                 f"{len(groups):,d} groups of identical images ({copies:,d} extra copies)",
                                 copies, groups=len(groups)))
    else:
        findings.append(_finding("duplicates", "ok", name, "no exact duplicate images"))
    if conflicting:
        findings.append(_finding("conflicting_duplicates", "error", name,
                                 f"{len(conflicting):,d} groups of identical images carry different labels "
                                 f"(first: {', '.join(split.locate(i) for i in conflicting[0][:4])})",
                                 len(conflicting)))

    # constant pixels
    mean, std = _pixel_moments(split.images)
    constant = quality.constant_pixels(split.images)
    arrays.update(pixel_mean=mean, pixel_std=std, constant=constant)
    constant_values = np.unique(split.images[0][constant]) if len(split) and constant.any() else []
    numbers["constant_pixels"] = {"count": int(constant.sum()), "of": int(constant.size),
                                  "values": [int(v) for v in constant_values],
                                  "positions": [list(map(int, p)) for p in np.argwhere(constant)[:1000]]}
    if constant.any():
        findings.append(_finding("constant_pixels", "info", name,
                                 f"{int(constant.sum()):,d} of {constant.size:,d} pixel positions hold the same value "
                                 f"in every image ({', '.join(map(str, numbers['constant_pixels']['values']))}): "
                                 "they carry no information", int(constant.sum())))

    if split.labels is None:
        findings.append(_finding("labels", "info", name, "no labels: class balance and label checks skipped"))
        return numbers, findings, arrays

    # class balance
    counts = np.bincount(split.labels, minlength=len(split.class_names))
    balance = quality.class_imbalance(counts)
    numbers["class_balance"] = balance
    cn = split.class_names
    text = (f"class counts range from {counts[balance['smallest']]:,d} ({cn[balance['smallest']]}) to "
            f"{counts[balance['largest']]:,d} ({cn[balance['largest']]})")
    if balance["ratio"] is not None:
        text += f", ratio {balance['ratio']:.2f}"
    if counts.min() == counts.max():
        text = f"every class has {counts[0]:,d} examples"
    if balance["empty_classes"]:
        findings.append(_finding("class_imbalance", "warning", name, "classes without examples: " + ", ".join(
            cn[k] for k in balance["empty_classes"]), len(balance["empty_classes"])))
    elif balance["warning"]:
        findings.append(_finding("class_imbalance", "warning", name, text + " (above 1.5: consider re-weighting "
                                 "or re-sampling)", 1, ratio=balance["ratio"]))
    else:
        findings.append(_finding("class_imbalance", "ok", name, text, 0, ratio=balance["ratio"]))

    # suspected label errors: closer to another class than to any other image of their own label
    if len(split) >= 20 and (counts > 1).sum() >= 2:
        votes = quality.neighbour_votes(split.images, split.labels, len(cn), rng, progress=progress)
        ratio = votes.ratio
        agreement = float(np.mean(votes.nearest_class == split.labels))
        flagged = np.flatnonzero(ratio > 1.0)
        flagged = flagged[np.argsort(-ratio[flagged], kind="stable")]
        other = votes.other_class
        arrays.update(suspects=flagged, ratio=ratio, other=other)
        numbers["label_suspects"] = {
            "method": "1-nearest neighbour per class in a 32-component PCA space of the pixels, leave-one-out, "
                      "against up to 1,000 reference images per class",
            "nearest_neighbour_agreement": agreement, "count": int(len(flagged)),
            "listed": [{"index": int(i), "where": split.locate(i), "label": int(split.labels[i]),
                        "nearest_other_class": int(other[i]), "ratio": float(min(ratio[i], 1e9))}
                       for i in flagged[:MAX_SUSPECTS_LISTED]]}
        # a shortlist to review by eye, not a verdict: "info" however long it is
        severity = "info" if len(flagged) else "ok"
        findings.append(_finding(
            "label_suspects", severity, name,
            f"{len(flagged):,d} images ({len(flagged) / len(split):.1%}) lie closer to another class than to any "
            f"other image of their label; the nearest neighbour agrees with {agreement:.1%} of the labels. "
            f"Shortlist: the {min(len(flagged), MAX_SUSPECTS_SHOWN)} most suspicious below", len(flagged)))
    return numbers, findings, arrays


def compare_splits(primary: ImageSplit, other: ImageSplit) -> tuple[dict, list[dict], dict]:
    """Leakage (identical images in both splits) and distribution shift between two splits."""
    index_primary, index_other = quality.cross_duplicates(primary.images, other.images)
    conflicts = 0
    if primary.labels is not None and other.labels is not None and len(index_primary):
        conflicts = int(np.sum(primary.labels[index_primary] != other.labels[index_other]))
    leaked = len(np.unique(index_other))
    numbers = {"duplicate_pairs": int(len(index_primary)), "images_of_other_in_primary": int(leaked),
               "label_conflicts": conflicts,
               "listed": [{"primary": primary.locate(i), "other": other.locate(j)}
                          for i, j in zip(index_primary[:MAX_SUSPECTS_LISTED], index_other[:MAX_SUSPECTS_LISTED],
                                          strict=True)]}
    findings = []
    pair = f"{other.name} vs {primary.name}"
    if leaked:
        findings.append(_finding("leakage", "error", pair,
                                 f"{leaked:,d} images of {other.name} also appear in {primary.name} (leakage: they "
                                 f"inflate test scores){f'; {conflicts} with a different label' if conflicts else ''}",
                                 leaked))
    else:
        findings.append(_finding("leakage", "ok", pair, f"no image of {other.name} appears in {primary.name}"))
    if primary.labels is not None and other.labels is not None and primary.class_names == other.class_names:
        k = len(primary.class_names)
        share_a = np.bincount(primary.labels, minlength=k) / max(len(primary), 1)
        share_b = np.bincount(other.labels, minlength=k) / max(len(other), 1)
        distance = float(0.5 * np.abs(share_a - share_b).sum())
        numbers["class_share_total_variation"] = distance
        severity = "warning" if distance > 0.05 else "ok"
        findings.append(_finding("class_shift", severity, pair,
                                 f"class shares differ by a total variation distance of {distance:.2%}", 0,
                                 distance=distance))
    if primary.images.shape[1:] == other.images.shape[1:] and len(primary) and len(other):
        numbers["pixel_mean"] = [float(primary.images.mean()), float(other.images.mean())]
    return numbers, findings, {"index_primary": index_primary, "index_other": index_other}


# ------------------------------------------------------------------------------------------------ page


def _samples_per_class(split: ImageSplit, rng: np.random.Generator, per_class: int) -> np.ndarray:
    """Tiles (K, per_class, H, W[, C]) of random examples of each class (blank where a class has fewer)."""
    k = len(split.class_names)
    tiles = np.full((k, per_class, *split.images.shape[1:]), 255 if split.images.ndim == 4 else 0, np.uint8)
    for c in range(k):
        members = np.flatnonzero(split.labels == c)
        chosen = np.sort(rng.choice(members, min(per_class, len(members)), replace=False))
        tiles[c, :len(chosen)] = split.images[chosen]
    return tiles


def _thumb(image: np.ndarray, caption: str) -> tuple[str, str]:
    scale = max(1, 84 // max(image.shape[:2]))
    return H.image_data_uri(image, scale=scale), caption


def _description_html(described: list[dict]) -> str:
    parts = []
    rows = []
    for d in described:
        shape = "×".join(map(str, d["image_shape"]))
        rows.append((d["name"], d["kind"], d["records"], d["records_read"] - d["records"],
                     f"{shape} {d['fields'][0]['type']}", d["fields"][0]["values"],
                     f"{d['bytes_in_memory'] / 2**20:.1f} MiB",
                     len(d["class_names"]) if d["labelled"] else "unlabelled"))
    parts.append(H.table(("split", "kind", "records", "excluded", "image", "pixel values", "in memory", "classes"),
                         rows, numeric=(2, 3)))
    parts.append("<h3>Fields</h3>")
    field_rows = []
    for f in described[0]["fields"]:
        shape = "×".join(map(str, f["shape"])) or "scalar"
        meaning = ("grey level per pixel, 0 = background" if f["name"] == "image"
                   else "class index; the label set is below")
        field_rows.append((f["name"], f["type"], shape, f["values"], meaning))
    parts.append(H.table(("field", "type", "shape", "values", "meaning"), field_rows))
    parts.append("<h3>Source files</h3>")
    src_rows = [(d["name"], H.Raw(f"<code>{H.esc(s['path'])}</code>"),
                 f"{s['bytes']:,d}" if s["bytes"] is not None else "folder",
                 H.Raw(f"<code>{H.esc(s['sha256'] or '-')}</code>")) for d in described for s in d["sources"]]
    parts.append(H.table(("split", "file", "bytes", "sha256"), src_rows, numeric=(2,), wrap=(1, 3)))
    labelled = [d for d in described if d["labelled"]]
    if labelled:
        parts.append("<h3>Label set</h3>")
        names = labelled[0]["class_names"]
        header = ["label", "name"] + [f"{d['name']} count" for d in labelled]
        rows = [[k, names[k]] + [d["class_counts"][k] if k < len(d["class_counts"]) else 0 for d in labelled]
                for k in range(len(names))]
        parts.append(H.table(header, rows, numeric=tuple(range(2, len(header)))))
    return "".join(parts)


def _exploration_html(splits: list[ImageSplit], rng: np.random.Generator) -> str:
    from . import plots

    primary = splits[0]
    parts = []
    samples = mean_figure = ""
    labelled = [s for s in splits if s.labels is not None]
    if labelled:
        counts = {s.name: np.bincount(s.labels, minlength=len(s.class_names)) for s in labelled}
        parts.append(H.figure(plots.class_distribution(counts, labelled[0].class_names),
                              "Number of examples per class (percentages: share of the split).", "class distribution"))
    if primary.labels is not None and len(primary):
        tiles = _samples_per_class(primary, rng, SAMPLES_PER_CLASS)
        grid = plots.image_grid(tiles, primary.class_names, f"Random samples per class ({primary.name})")
        samples = H.figure(grid, "Rows are classes; images picked at random (seeded).", "samples")
        means = np.stack([primary.images[primary.labels == c].mean(axis=0) if np.any(primary.labels == c)
                          else np.zeros(primary.images.shape[1:]) for c in range(len(primary.class_names))])
        mean_figure = H.figure(plots.mean_images(means, primary.class_names, f"Mean image per class ({primary.name})"),
                               "The average of all images of each class: where the ink usually is.", "mean images")
    elif len(primary):
        chosen = np.sort(rng.choice(len(primary), min(len(primary), 60), replace=False))
        tiles = np.zeros((5, 12, *primary.images.shape[1:]), np.uint8)
        tiles.reshape(60, *primary.images.shape[1:])[:len(chosen)] = primary.images[chosen]
        samples = H.figure(plots.image_grid(tiles, [""] * 5, f"Random samples ({primary.name})"), "", "samples")
    histograms = {s.name: np.bincount(s.images.ravel(), minlength=256) for s in splits if len(s)}
    histogram = H.figure(plots.pixel_histogram(histograms),
                         "Share of pixels at each grey level (log scale): digit images are mostly background "
                         "(0) with a second peak near full ink.", "pixel histogram")
    parts += [H.figure_row(samples, histogram), mean_figure]
    return "".join(parts)


def _quality_html(splits: list[ImageSplit], findings: list[dict], numbers: dict, arrays: dict,
                  cross_arrays: dict | None) -> str:
    from . import plots

    parts = [H.findings_list(findings)]
    maps = [H.figure(plots.pixel_map(arrays[s.name]["pixel_std"], f"Pixel std ({s.name})", arrays[s.name]["constant"],
                                     "standard deviation"), "", "pixel std") for s in splits if len(s)]
    parts.append("<h3>Pixel variation</h3>" + H.figure_row(*maps)
                 + '<p class="muted">Standard deviation of each pixel over the split; pixels with the same value in '
                   "every image (constant, useless as inputs) in red.</p>")
    for split in splits:
        a = arrays[split.name]
        n = numbers["splits"][split.name]
        parts.append(f"<h3>{H.esc(split.name)}</h3>")
        problems = n["value_problems"]["listed"]
        if problems:
            rows = [(p.get("line", "-"), p.get("column") or "-", p.get("column_name") or p.get("file") or "-",
                     p["kind"], p["message"]) for p in problems[:50]]
            parts.append(f"<p>Problems met while reading ({n['value_problems']['total']:,d}; the first "
                         f"{len(rows)}):</p>")
            parts.append(H.table(("line", "column", "name / file", "kind", "problem"), rows, numeric=(0, 1)))
        groups = a["duplicate_groups"]
        if groups:
            items = []
            for g in groups[:16]:
                labels = ("" if split.labels is None else
                          " · labels " + "/".join(split.class_names[k] for k in split.labels[g][:4]))
                conflict = split.labels is not None and len(np.unique(split.labels[g])) > 1
                caption = (f"{'<b>' if conflict else ''}{len(g)}× {H.esc(', '.join(split.locate(i) for i in g[:3]))}"
                           f"{H.esc(labels)}{'</b>' if conflict else ''}")
                items.append(_thumb(split.images[g[0]], caption))
            parts.append(f"<p>Identical images (first {len(items)} of {len(groups):,d} groups; red: labels "
                         "disagree):</p>" + H.thumbnails(items))
        suspects = a.get("suspects")
        if suspects is not None and len(suspects):
            items = []
            for i in suspects[:MAX_SUSPECTS_SHOWN]:
                caption = (f"{H.esc(split.locate(i))}<br>label <b>{H.esc(split.class_names[split.labels[i]])}</b>"
                           f" → {H.esc(split.class_names[a['other'][i]])}?"
                           + ("<br><span class=\"muted\">identical image, other label</span>" if np.isinf(a["ratio"][i])
                              else f"<br><span class=\"muted\">ratio {a['ratio'][i]:.2f}</span>"))
                items.append(_thumb(split.images[i], caption))
            parts.append("<p>Suspected label errors, most suspicious first. <i>ratio</i> = distance to the nearest "
                         "image with the same label / distance to the nearest image of another class (in PCA "
                         "space); above 1 the image looks more like the other class.</p>" + H.thumbnails(items))
    if cross_arrays is not None and len(cross_arrays["index_primary"]):
        primary, other = splits
        items = [_thumb(primary.images[i], f"{H.esc(primary.name)} {H.esc(primary.locate(i))}<br>= {H.esc(other.name)} "
                                           f"{H.esc(other.locate(j))}")
                 for i, j in zip(cross_arrays["index_primary"][:24], cross_arrays["index_other"][:24], strict=True)]
        parts.append(f"<h3>Leakage: images in both {H.esc(primary.name)} and {H.esc(other.name)}</h3>"
                     + H.thumbnails(items))
    return "".join(parts)


def _markdown(title: str, described: list[dict], findings: list[dict], out: str | None, seconds: float) -> str:
    lines = [f"# {title}", ""]
    for d in described:
        classes = f", {len(d['class_names'])} classes" if d["labelled"] else ", no labels"
        lines.append(f"- **{d['name']}**: {d['records']:,d} records ({d['kind']}, images "
                     f"{'×'.join(map(str, d['image_shape']))} {d['fields'][0]['type']}{classes})")
    lines += ["", "## Findings", "", *findings_markdown(findings), ""]
    if out:
        lines.append(f"Report: {out} ({seconds:.1f} s)")
    return "\n".join(lines) + "\n"


def build_data_report(primary: ImageSplit, compare: ImageSplit | None = None, seed: int = 0,
                      progress: bool = True, out_name: str | None = None) -> Report:
    """Analyse ``primary`` (and ``compare``) and render the report.

    Parameters
    ----------
    primary : the split the report is about.
    compare : another split (e.g. the test set) to check for leakage and shift against.
    seed : seeds the sampling of shown images and of the nearest-neighbour reference set.
    out_name : the HTML file name, mentioned in the Markdown summary.
    """
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    splits = [primary] + ([compare] if compare is not None else [])
    if not len(primary):
        raise ReportError(f"{primary.name}: no readable records"
                          + (f" ({primary.problems[0]['message']})" if primary.problems else ""))
    described = [describe_split(s) for s in splits]
    findings: list[dict] = []
    numbers: dict = {"splits": {}}
    arrays: dict = {}
    for split in splits:
        split_numbers, split_findings, split_arrays = check_split(split, rng, progress=progress)
        numbers["splits"][split.name] = split_numbers
        findings += split_findings
        arrays[split.name] = split_arrays
    cross_arrays = None
    if compare is not None:
        numbers["comparison"], cross_findings, cross_arrays = compare_splits(primary, compare)
        findings += cross_findings

    title = f"Data report: {primary.name}" + (f" vs {compare.name}" if compare is not None else "")
    n_bad = sum(f["severity"] in ("warning", "error") for f in findings)
    header_cards = H.cards([(f"{d['records']:,d}", f"{d['name']} records") for d in described] + [
        (str(len(primary.class_names)) if primary.labels is not None else "-", "classes"),
        ("×".join(map(str, primary.images.shape[1:])), "image size"),
        (str(n_bad), "warnings and errors")])
    sections = [
        ("description", "1. Description", _description_html(described)),
        ("exploration", "2. Exploration", _exploration_html(splits, np.random.default_rng(seed))),
        ("quality", "3. Quality", _quality_html(splits, findings, numbers, arrays, cross_arrays)),
    ]
    subtitle = ("CRISP-DM data understanding: describe, explore and verify the data"
                + (f" · compared with {H.esc(compare.name)}" if compare is not None else ""))
    page = H.page(title, subtitle, header_cards, sections)
    seconds = time.perf_counter() - started
    from .. import __version__

    data = {"report": "data", "title": title, "scratchpilot_version": __version__, "seed": seed,
            "dataset": primary.name, "compare": compare.name if compare is not None else None,
            "description": described, "quality": numbers, "findings": findings, "seconds": seconds}
    return Report(data=data, html=page, markdown=_markdown(title, described, findings, out_name, seconds))
