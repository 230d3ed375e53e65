"""``report model``: assess a trained model on a labelled dataset (CRISP-DM "evaluation").

Works for a digits model on any digits dataset (names, Kaggle CSV, IDX, image folder), for a pilot
on a folder of driving sessions: the pilot's frames go through the preprocessing stored in the model
file (``metadata["preprocessing"]``) and its label names come from ``metadata["labels"]``; and for a
transfer model (``transfer train``) on an image folder with one subfolder per class, its images going
through the model's backbone and the bottleneck cache exactly as in ``transfer evaluate``.

The page shows accuracy with a 95% Wilson interval; the confusion matrix; precision, recall, F1 and
calibration per label; learning curves from the history saved in the model file; the most confident
mistakes as thumbnails; and a reliability diagram with the expected calibration error (ECE):

    ECE = sum over confidence bins b of (n_b / N) * |accuracy_b - mean confidence_b|

with 15 equal-width bins of the top predicted probability (Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017). Per label, the same is computed one-vs-rest on that label's predicted probability.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import html as H
from .findings import Report, ReportError

N_BINS = 15
MAX_MISTAKES_SHOWN = 36
MAX_MISTAKES_LISTED = 200


class ModelReportError(ValueError):
    """A model that cannot be assessed on the given data; the message says why."""


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> tuple[list[dict], float,
                                                                                                   float]:
    """Reliability-diagram bins and the expected / maximum calibration error.

    Parameters
    ----------
    confidence : float (N,) in [0, 1], the probability the model gave to its answer (or to an event).
    correct : bool (N,), whether the answer was right (whether the event happened).

    Returns
    -------
    bins : ``{"low", "high", "count", "confidence", "accuracy"}`` per bin (equal widths; a confidence of
        exactly 1 falls in the last bin).
    ece : sum of (count / N) * |accuracy - confidence| over the bins.
    mce : the largest |accuracy - confidence| of a non-empty bin.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(which, weights=correct, minlength=n_bins)
    bins, ece, mce = [], 0.0, 0.0
    n = max(len(confidence), 1)
    for b in range(n_bins):
        mean_conf = conf_sum[b] / counts[b] if counts[b] else 0.0
        accuracy = correct_sum[b] / counts[b] if counts[b] else 0.0
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(counts[b]),
                     "confidence": float(mean_conf), "accuracy": float(accuracy)})
        if counts[b]:
            gap = abs(accuracy - mean_conf)
            ece += counts[b] / n * gap
            mce = max(mce, gap)
    return bins, float(ece), float(mce)


def _load_model(path):
    from .. import nn

    try:
        return nn.load(path)
    except nn.ModelFileError as exc:
        raise ModelReportError(str(exc)) from None
    except FileNotFoundError:
        raise ModelReportError(f"{path}: no such model file") from None


def _digits_labels(model, model_path) -> list[str]:
    """The label names of a digits model, its metadata checked as every digits app checks it."""
    from .. import nn
    from ..digits.models import digits_metadata

    try:
        return digits_metadata(model, model_path).labels
    except nn.ModelFileError as exc:
        raise ModelReportError(str(exc)) from None


def _digits_inputs(model, spec: str, progress: bool):
    """(features float32 (N, F), labels, display images, where(i), dataset name) of a digits dataset."""
    from ..data import to_features
    from .splits import load_split

    split = load_split(spec, progress=progress)
    if split.labels is None:
        raise ModelReportError(f"{spec}: has no labels, a model cannot be assessed on it")
    if not len(split):
        raise ModelReportError(f"{spec}: no readable records")
    features = to_features(split.images)
    if model.n_inputs != features.shape[1]:
        raise ModelReportError(f"the model takes {model.n_inputs} inputs, but {split.name}'s images have "
                               f"{features.shape[1]} pixels ({'×'.join(map(str, split.images.shape[1:]))})")
    return features, split.labels, split.images, split.locate, split.name, None


def _pilot_inputs(model, model_path, spec: str):
    """The same for a pilot (MLP or CNN) on a folder of driving sessions; also returns the session of each
    frame. The inputs are built as at drive time: the stored preprocessing, history and input layout."""
    from ..car.pilot import Pilot, model_inputs
    from ..car.preprocess import PreprocessSpecError
    from ..car.sessions import load_frames

    try:
        pilot = Pilot(model)
    except ValueError as exc:  # not a pilot, or its metadata or preprocessing spec is unusable
        raise ModelReportError(f"{model_path}: {exc}") from None
    try:
        frames = load_frames([spec])
    except ValueError as exc:  # a session error
        raise ModelReportError(str(exc)) from None
    labels = pilot.labels
    if list(frames.label_names) != labels:
        raise ModelReportError(f"the model's labels ({', '.join(labels)}) differ from the sessions' "
                               f"({', '.join(frames.label_names)})")
    try:
        features = model_inputs(pilot, pilot.preprocess(frames.features), frames.groups)
    except PreprocessSpecError as exc:
        raise ModelReportError(f"{spec}: {exc}") from None
    given = int(np.prod(features.shape[1:]))
    if model.n_inputs != given:
        raise ModelReportError(f"the model takes {model.n_inputs} inputs, the preprocessing gives {given}")
    session_of = np.array([frames.group_keys[g][0] for g in frames.groups])
    position = np.zeros(len(frames.labels), np.int64)
    for name in np.unique(session_of):
        members = np.flatnonzero(session_of == name)
        position[members] = np.arange(len(members))

    def locate(i: int) -> str:
        return f"{session_of[i]} #{position[i]}"

    return features, frames.labels, frames.features, locate, Path(spec).name, session_of, labels


THUMB_SIDE = 64


class _ImageFiles:
    """The report's display images of a transfer dataset: image ``i`` is read from its file only when
    shown (a confident mistake), upright and shrunk to at most ``THUMB_SIDE`` pixels a side, as uint8."""

    def __init__(self, paths: list[Path], names: list[str]) -> None:
        self.paths, self.names = paths, names

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        from PIL import Image

        from ..transfer.images import FORMATS, _to_mode, _upright
        from ..util.images import ImageDecodeError, open_image

        try:
            picture = open_image(self.paths[i].read_bytes(), where=self.names[i], formats=FORMATS,
                                 draft=("RGB", THUMB_SIDE))
            picture = _to_mode(_upright(picture), "L" if picture.mode in ("1", "L", "I;16", "I", "F") else "RGB")
            picture.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR)
            return np.asarray(picture, dtype=np.uint8)
        except (OSError, ValueError, ImageDecodeError):  # read at feature time, gone or changed since
            return np.full((THUMB_SIDE, THUMB_SIDE), 128, np.uint8)


def _transfer_inputs(model_path, dataset_folder: str, progress: bool, cache_dir=None):
    """The same for a transfer model on a folder with one subfolder of images per class (the folder names
    are the model's labels): features through the model's backbone and the bottleneck cache, as in
    ``transfer evaluate``. Also returns the :class:`TransferModel` and the files skipped (not images by
    their suffix) and unreadable."""
    from ..transfer.features import BottleneckCache, default_cache_root, extract_features
    from ..transfer.folders import FolderError, scan_class_folders
    from ..transfer.training import TransferModelError, load_transfer_model

    try:
        transfer = load_transfer_model(model_path, cache_dir)
    except TransferModelError as exc:
        raise ModelReportError(str(exc)) from None
    try:
        folders = scan_class_folders(dataset_folder, labels=transfer.labels, need_two=False)
    except FolderError as exc:
        raise ModelReportError(f"{exc} ({Path(model_path).name} is a transfer model: it is assessed on a folder "
                               "with one subfolder of images per class, named after its labels)") from None
    paths, names = [f.path for f in folders.files], [f.name for f in folders.files]
    cache = BottleneckCache(default_cache_root(cache_dir), transfer.backbone)
    feats = extract_features(paths, names, transfer.backbone, cache=cache, progress=progress, desc="images")
    if not len(feats.kept):
        raise ModelReportError(f"{folders.root}: none of its {len(paths):,d} images could be read")
    kept = feats.kept
    labels = np.array([folders.files[i].label for i in kept], dtype=np.int64)
    images = _ImageFiles([paths[i] for i in kept], [names[i] for i in kept])

    def locate(i: int) -> str:
        return images.names[i]

    problems = {"found": len(paths), "read": len(kept), "skipped_not_images": folders.skipped,
                "unreadable": feats.bad}
    return (transfer, feats.values, labels, images, locate, Path(dataset_folder).name or str(folders.root),
            list(transfer.labels), problems)


def _problems_html(problems: dict) -> str:
    """What a transfer dataset's folder held that the report could not use."""
    bad, skipped = problems["unreadable"], problems["skipped_not_images"]
    text = (f"<p>{problems['read']:,d} of the folder's {problems['found']:,d} images were read; "
            f"<b>{len(bad):,d} unreadable images were skipped</b>"
            + (f" and {len(skipped):,d} files that are not images" if skipped else "") + ".</p>")
    if bad:
        text += H.table(("unreadable image", "why"), [(b["file"], b["message"]) for b in bad[:MAX_MISTAKES_LISTED]],
                        wrap=(1,))
    return text


def build_model_report(model_path, dataset_spec: str, progress: bool = True, out_name: str | None = None,
                       cache_dir=None) -> Report:
    """Assess the model in ``model_path`` on ``dataset_spec`` and render the report.

    ``cache_dir``: where a transfer model's backbone and bottleneck features are kept (default:
    SCRATCHPILOT_CACHE or ~/.cache/scratchpilot)."""
    from ..data import sha256_file
    from ..digits.metrics import confusion_matrix, per_class_report, wilson_interval
    from . import plots
    from .driving import is_sessions_folder

    started = time.perf_counter()
    model = _load_model(model_path)
    metadata = model.metadata
    transfer = problems = None
    task = "transfer" if metadata.get("task") == "transfer" else "pilot" if is_sessions_folder(dataset_spec) \
        else "digits"
    pilot = task == "pilot"
    try:
        if task == "transfer":
            transfer, features, labels, images, locate, dataset_name, label_names, problems = _transfer_inputs(
                model_path, dataset_spec, progress, cache_dir)
            model, groups = transfer.head, None
        elif pilot:
            features, labels, images, locate, dataset_name, groups, label_names = _pilot_inputs(
                model, model_path, dataset_spec)
        else:
            label_names = _digits_labels(model, model_path)
            features, labels, images, locate, dataset_name, groups = _digits_inputs(model, dataset_spec, progress)
    except ReportError as exc:
        raise ModelReportError(str(exc)) from None
    if labels.max(initial=0) >= model.n_outputs:
        raise ModelReportError(f"{dataset_name}: label {int(labels.max())} is beyond the model's "
                               f"{model.n_outputs} outputs")

    scores = (transfer or model).predict_proba(features).astype(np.float64)
    normalised = type(model.loss).__name__ != "SoftmaxCrossEntropy"
    if normalised:  # sigmoid outputs: make them a distribution so that confidences are comparable
        scores = scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-12)
    predictions = scores.argmax(axis=1)
    confidence = scores[np.arange(len(scores)), predictions]
    correct = predictions == labels
    k = model.n_outputs
    confusion = confusion_matrix(labels, predictions, k)
    n, n_correct = int(len(labels)), int(correct.sum())
    low, high = wilson_interval(n_correct, n)
    per_class = per_class_report(confusion)
    bins, ece, mce = calibration_bins(confidence, correct)
    for row in per_class:
        c = row["class"]
        row["label"] = label_names[c]
        row["recall_ci95"] = list(wilson_interval(int(confusion[c, c]), int(confusion[c].sum())))
        _, row["ece"], _ = calibration_bins(scores[:, c], labels == c)
        row["mean_probability"] = float(scores[:, c].mean())
        row["frequency"] = float(np.mean(labels == c))
    # labels that never occur, neither in the data nor in the predictions, would drag the averages to 0
    present = [r for r in per_class if r["support"] or confusion[:, r["class"]].sum()]
    macro = {key: float(np.mean([r[key] for r in present])) for key in ("precision", "recall", "f1")}
    macro["labels"] = [r["label"] for r in present]

    wrong = np.flatnonzero(~correct)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    mistakes = [{"index": int(i), "where": locate(int(i)), "true": label_names[labels[i]],
                 "predicted": label_names[predictions[i]], "confidence": float(confidence[i])}
                for i in wrong[:MAX_MISTAKES_LISTED]]
    off_diagonal = confusion.copy()
    np.fill_diagonal(off_diagonal, 0)
    pairs = np.dstack(np.unravel_index(np.argsort(-off_diagonal, axis=None), confusion.shape))[0]
    confused = [{"true": label_names[i], "predicted": label_names[j], "count": int(confusion[i, j])}
                for i, j in pairs[:8] if confusion[i, j]]
    per_group = None
    if groups is not None:
        per_group = [{"session": str(g), "frames": int(np.sum(groups == g)),
                      "accuracy": float(np.mean(correct[groups == g]))} for g in np.unique(groups)]
    history = {key: [float(v) for v in values] for key, values in dict(model.history).items()}

    # ---- page
    model_path = Path(model_path)
    title = f"Model report: {model_path.name} on {dataset_name}"
    about = [("file", H.Raw(f"<code>{H.esc(model_path)}</code>")),
             ("sha256", H.Raw(f"<code>{sha256_file(model_path)}</code>")),
             ("task", metadata.get("task") or task),
             ("labels", ", ".join(label_names)), ("parameters", f"{model.n_parameters():,d}"),
             ("loss", type(model.loss).__name__ + (" (outputs normalised to sum to 1 for the confidences)"
                                                  if normalised else ""))]
    if transfer is not None:
        about.append(("backbone", f"{transfer.backbone.name}, cut before layer {transfer.backbone.cut}, features "
                                  f"{'×'.join(map(str, transfer.backbone.feature_shape))}"
                      + (", last block fine-tuned" if metadata.get("fine_tuned_last_block") else "")))
    for key in ("dataset", "trained_at", "n_train", "seed", "test_accuracy", "test_dataset", "n_test"):
        if metadata.get(key) is not None:
            about.append((key.replace("_", " "), metadata[key]))
    for key, name in (("train_config", "training"), ("preprocessing", "preprocessing")):
        if key in metadata:  # settings shown as they are; a pilot's spec was checked by Pilot, a digits one here
            value = metadata[key]
            about.append((name, ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict)
                          else value))
    model_html = H.key_values(about) + f"<h3>Layers</h3><pre class=\"mono\">{H.esc(model.summary())}</pre>"

    accuracy_html = [
        _problems_html(problems) if problems else "",
        f"<p>Accuracy <b>{n_correct / n:.2%}</b> ({n_correct:,d} of {n:,d}); 95% Wilson interval "
        f"<b>{low:.2%} – {high:.2%}</b>. Macro-averaged precision {macro['precision']:.2%}, recall "
        f"{macro['recall']:.2%}, F1 {macro['f1']:.2%}.</p>",
        H.figure_row(
            H.figure(plots.confusion_heatmap(confusion, label_names, f"Confusion matrix ({n_correct / n:.2%})"),
                     "Rows: true label; columns: prediction; colour: share of the row.", "confusion", wide=True),
            "<div><h3>Per label</h3>" + H.table(
                ("label", "precision", "recall", "recall 95% CI", "F1", "support"),
                [(r["label"], f"{r['precision']:.2%}", f"{r['recall']:.2%}",
                  f"{r['recall_ci95'][0]:.1%} – {r['recall_ci95'][1]:.1%}" if r["support"] else "-",
                  f"{r['f1']:.2%}", r["support"])
                 for r in per_class] + [("macro avg", f"{macro['precision']:.2%}", f"{macro['recall']:.2%}", "",
                                         f"{macro['f1']:.2%}", n)], numeric=(1, 2, 3, 4, 5)) + "</div>"),
    ]
    if confused:
        accuracy_html.append("<h3>Most frequent confusions</h3>" + H.table(
            ("true", "predicted as", "count"), [(c["true"], c["predicted"], c["count"]) for c in confused],
            numeric=(2,)))
    if per_group:
        accuracy_html.append("<h3>Per session</h3>" + H.table(
            ("session", "frames", "accuracy"), [(g["session"], g["frames"], f"{g['accuracy']:.2%}") for g in per_group],
            numeric=(1, 2)))
    curves = plots.learning_curves(history)
    curves_html = (H.figure(curves, "Per epoch, from the history stored in the model file.", "learning curves")
                   if curves else '<p class="muted">The model file holds no training history.</p>')

    def thumb(i: int) -> tuple[str, str]:
        image = images[i]
        scale = max(1, 84 // max(image.shape[:2]))
        caption = (f"{H.esc(locate(int(i)))}<br>true <b>{H.esc(label_names[labels[i]])}</b><br>predicted "
                   f"{H.esc(label_names[predictions[i]])}<br><span class=\"muted\">{confidence[i]:.1%} sure</span>")
        return H.image_data_uri(image, scale=scale), caption

    mistakes_html = (f"<p>{len(wrong):,d} mistakes; the {min(len(wrong), MAX_MISTAKES_SHOWN)} the model was most "
                     "sure of:</p>" + H.thumbnails(thumb(i) for i in wrong[:MAX_MISTAKES_SHOWN]))
    calibration_html = [
        f"<p>Expected calibration error <b>{ece:.2%}</b> ({N_BINS} bins of the top predicted probability, "
        "weighted by their examples). A well calibrated model that says 90% is right 90% of the time; a gap in a "
        "bin with few examples (see the counts) says little.</p>",
        H.figure(plots.reliability_diagram(bins, ece), "Bars: accuracy per confidence bin; dashed: perfect "
                 "calibration; orange: the gap. Below: examples per bin (log scale).", "reliability diagram"),
        "<h3>Per label (one-vs-rest)</h3>",
        H.table(("label", "mean predicted probability", "observed frequency", "ECE"),
                [(r["label"], f"{r['mean_probability']:.2%}", f"{r['frequency']:.2%}", f"{r['ece']:.2%}")
                 for r in per_class], numeric=(1, 2, 3)),
    ]
    sections = [("model", "1. Model", model_html), ("accuracy", "2. Accuracy", "".join(accuracy_html)),
                ("learning", "3. Learning curves", curves_html), ("mistakes", "4. Confident mistakes", mistakes_html),
                ("calibration", "5. Calibration", "".join(calibration_html))]
    cards = H.cards([(f"{n_correct / n:.2%}", "accuracy"), (f"{low:.1%}–{high:.1%}", "95% interval"),
                     (f"{n:,d}", "examples"), (f"{ece:.2%}", "calibration error"), (str(k), "labels")])
    subtitle = "CRISP-DM evaluation: how good is the model, where does it fail, can its confidence be trusted"
    page = H.page(title, subtitle, cards, sections)
    seconds = time.perf_counter() - started
    from .. import __version__

    data = {"report": "model", "title": title, "scratchpilot_version": __version__, "model": str(model_path),
            "dataset": dataset_name, "task": task, "labels": label_names, "n": n,
            "correct": n_correct, "accuracy": n_correct / n, "accuracy_ci95": [low, high],
            "confusion": confusion.tolist(), "per_class": per_class, "macro": macro,
            "calibration": {"bins": bins, "ece": ece, "mce": mce, "n_bins": N_BINS,
                            "scores_normalised": normalised},
            "most_confused": confused, "confident_mistakes": mistakes, "per_session": per_group,
            "history": history, "seconds": seconds}
    if problems:
        data["images"] = problems
    lines = [f"# {title}", "",
             f"- accuracy **{n_correct / n:.2%}** ({n_correct:,d} / {n:,d}), 95% CI {low:.2%} – {high:.2%}",
             f"- macro precision {macro['precision']:.2%}, recall {macro['recall']:.2%}, F1 {macro['f1']:.2%}",
             f"- calibration: expected calibration error {ece:.2%}",
             "- weakest label: " + min(present, key=lambda r: r["f1"])["label"]
             + f" (F1 {min(r['f1'] for r in present):.2%})"]
    if problems and (problems["unreadable"] or problems["skipped_not_images"]):
        lines.append(f"- skipped {len(problems['unreadable']):,d} unreadable images and "
                     f"{len(problems['skipped_not_images']):,d} files that are not images")
    if confused:
        lines.append("- most frequent confusion: " + f"{confused[0]['true']} → {confused[0]['predicted']} "
                     f"({confused[0]['count']:,d}×)")
    if out_name:
        lines += ["", f"Report: {out_name} ({seconds:.1f} s)"]
    return Report(data=data, html=page, markdown="\n".join(lines) + "\n")
