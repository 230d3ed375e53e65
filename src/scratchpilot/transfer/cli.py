"""``scratchpilot transfer ...``: train a new last layer on image folders, predict, evaluate.

Only argparse and the standard library are imported here; the handlers import NumPy and the engine when
they run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import options
from ..errors import CommandError
from ..util.files import save_or_rescue, write_json_result

percentage = options.number(0.0, 100.0)
image_size = options.integer(32, 1024)
MAX_FILES_LISTED = 20


def _common(p) -> None:
    p.add_argument("--cache-dir", help="where converted backbones and bottleneck features are kept (default: "
                                      "SCRATCHPILOT_CACHE or ~/.cache/scratchpilot)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_parser(subparsers) -> None:
    transfer = subparsers.add_parser("transfer", help="transfer learning: retrain a pretrained network's last "
                                                      "layer on your image folders")
    sub = transfer.add_subparsers(dest="transfer_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("train", help="train a new last layer on IMAGE_DIR (one subfolder of images per class)")
    p.add_argument("images", metavar="IMAGE_DIR", help="folder with one subfolder per class")
    p.add_argument("--out", type=options.model_file, required=True, help="the model file to write (.npz)")
    p.add_argument("--backbone", default="efficientnet-lite0",
                   help="efficientnet-lite0 (ImageNet, default) or a scratchpilot model file (.npz) with --cut")
    p.add_argument("--cut", type=options.positive_int, metavar="N",
                   help="keep the backbone's layers before layer N (needed for a model file backbone)")
    p.add_argument("--image-size", type=image_size, metavar="N",
                   help="EfficientNet's input size (default 224, what it was trained at; smaller is faster)")
    p.add_argument("--validation-percentage", type=percentage, default=10.0, metavar="P",
                   help="share of each folder for validation, by a hash of the file name (default 10)")
    p.add_argument("--testing-percentage", type=percentage, default=10.0, metavar="P",
                   help="share of each folder for the final test, by a hash of the file name (default 10)")
    p.add_argument("--epochs", type=options.positive_int, default=40, help="training epochs (default 40; "
                   "the best validation epoch is kept)")
    p.add_argument("--batch-size", type=options.positive_int, default=64)
    p.add_argument("--fine-tune-last-block", action="store_true",
                   help="also train the backbone's last block and head (features taken one block earlier)")
    p.add_argument("--seed", type=options.seed, default=0)
    p.add_argument("--json", type=options.json_file, metavar="PATH",
                   help="write the counts, speeds, accuracy, confusion and misclassified files as JSON")
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="classify images with a transfer model")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or folders of them")
    p.add_argument("--model", required=True, help="a model written by 'transfer train'")
    p.add_argument("--top", type=options.positive_int, default=1, metavar="K", help="print the K likeliest classes")
    p.add_argument("--csv", type=options.csv_file, metavar="PATH", help="write file,label,confidence rows")
    p.add_argument("--submission", type=options.csv_file, metavar="PATH",
                   help="write a Kaggle submission (ImageId,Label; ImageId from each file's number, as "
                        "'digits export-images' names them)")
    p.add_argument("--json", type=options.json_file, metavar="PATH")
    _common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="accuracy and confusion of a transfer model on a folder per class")
    p.add_argument("images", metavar="IMAGE_DIR", help="folder with one subfolder per class")
    p.add_argument("--model", required=True, help="a model written by 'transfer train'")
    p.add_argument("--json", type=options.json_file, metavar="PATH",
                   help="write accuracy, n, confusion, per-class figures and misclassified files as JSON")
    _common(p)
    p.set_defaults(func=cmd_evaluate)


# --------------------------------------------------------------------------------------------- helpers
def _backbone(name: str, cut, size, cache_dir):
    from .features import BackboneError, load_backbone

    try:
        return load_backbone(name, cut, image_size=size, cache_dir=cache_dir)
    except BackboneError as exc:
        raise CommandError(str(exc)) from None


def _folders(path, labels=None):
    from .folders import FolderError, scan_class_folders

    try:
        return scan_class_folders(path, labels=labels, need_two=labels is None)
    except FolderError as exc:
        raise CommandError(str(exc)) from None


def _load_model(path, cache_dir):
    from .training import TransferModelError, load_transfer_model

    try:
        return load_transfer_model(path, cache_dir)
    except TransferModelError as exc:
        raise CommandError(str(exc)) from None


def _features(paths, names, backbone, args, desc):
    """The backbone's features of the images, through the bottleneck cache."""
    from .features import BottleneckCache, default_cache_root, extract_features

    cache = BottleneckCache(default_cache_root(args.cache_dir), backbone)
    return extract_features(paths, names, backbone, cache=cache, progress=not args.no_progress, desc=desc)


def _report_problems(skipped: list[str], bad: list[dict]) -> None:
    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        print(f"warning: skipped {len(skipped):,d} files that are not images: {shown}", file=sys.stderr)
    if bad:
        print(f"warning: skipped {len(bad):,d} unreadable images:", file=sys.stderr)
        for entry in bad[:MAX_FILES_LISTED]:
            print(f"  {entry['message']}", file=sys.stderr)
        if len(bad) > MAX_FILES_LISTED:
            print(f"  ... and {len(bad) - MAX_FILES_LISTED:,d} more", file=sys.stderr)


def assess(probabilities, truth, names: list[str], labels: list[str]) -> dict:
    """Accuracy (with its 95% Wilson interval), confusion, per-class figures and the misclassified files."""
    import numpy as np

    from ..digits.metrics import confusion_matrix, per_class_report, wilson_interval

    predicted = probabilities.argmax(axis=1)
    n = int(len(truth))
    correct = int(np.sum(predicted == truth))
    confusion = confusion_matrix(truth, predicted, len(labels))
    per_class = per_class_report(confusion)
    for row in per_class:
        row["label"] = labels[row["class"]]
    wrong = [{"file": names[i], "true": labels[truth[i]], "predicted": labels[predicted[i]],
              "confidence": float(probabilities[i, predicted[i]])} for i in np.flatnonzero(predicted != truth)]
    wrong.sort(key=lambda w: -w["confidence"])
    return {"accuracy": correct / n if n else float("nan"), "n": n, "correct": correct,
            "accuracy_ci95": list(wilson_interval(correct, n)) if n else None, "labels": labels,
            "confusion": confusion.tolist(), "per_class": per_class, "misclassified": wrong}


def _print_assessment(what: str, result: dict) -> None:
    labels = result["labels"]
    if not result["n"]:
        print(f"{what}: no images")
        return
    low, high = result["accuracy_ci95"]
    print(f"{what} accuracy: {result['accuracy']:.2%} ({result['correct']:,d} of {result['n']:,d}; 95% interval "
          f"{low:.1%} – {high:.1%})")
    width = max(5, *(len(x) for x in labels))
    if len(labels) <= 20:
        print("confusion (rows: true, columns: predicted):")
        print(" " * (width + 1) + " ".join(f"{x[:width]:>{width}}" for x in labels))
        for label, row in zip(labels, result["confusion"], strict=True):
            print(f"{label[:width]:>{width}} " + " ".join(f"{v:>{width}d}" for v in row))
    wrong = result["misclassified"]
    if wrong:
        print(f"misclassified ({len(wrong):,d}{', the most confident first' if len(wrong) > 1 else ''}):")
        for w in wrong[:MAX_FILES_LISTED]:
            print(f"  {w['file']}: {w['true']} taken for {w['predicted']} ({w['confidence']:.0%})")
        if len(wrong) > MAX_FILES_LISTED:
            print(f"  ... and {len(wrong) - MAX_FILES_LISTED:,d} more (all in --json)")


# -------------------------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from .features import recut
    from .folders import SETS, split_of
    from .training import build_head, fine_tune_cut, train_head, transfer_metadata

    started = time.perf_counter()
    if args.validation_percentage + args.testing_percentage >= 100:
        raise CommandError("--validation-percentage and --testing-percentage leave no images for training "
                           f"({args.validation_percentage:g} + {args.testing_percentage:g} ≥ 100)")
    folders = _folders(args.images)
    full = _backbone(args.backbone, args.cut, args.image_size, args.cache_dir)
    start = fine_tune_cut(full) if args.fine_tune_last_block else None
    features_from = recut(full, start) if start is not None else full
    sets = [split_of(f.name, args.validation_percentage, args.testing_percentage) for f in folders.files]
    counts = {s: {label: 0 for label in folders.labels} for s in SETS}
    for f, s in zip(folders.files, sets, strict=True):
        counts[s][folders.labels[f.label]] += 1
    print(f"{folders.root}: {len(folders.files):,d} images in {len(folders.labels)} classes "
          f"({', '.join(f'{k} {v:,d}' for k, v in folders.per_class().items())})")
    print("split by file-name hash: " + ", ".join(f"{s} {sum(counts[s].values()):,d}" for s in SETS))
    if not sum(counts["training"].values()):
        raise CommandError(f"{folders.root}: no image falls in the training set; lower the validation and "
                           f"testing percentages")
    missing = [label for label, n in counts["training"].items() if n == 0]
    if missing:
        raise CommandError(f"{folders.root}: classes {missing[:10]} have no training image (too few images for "
                           f"the split); add images or lower the percentages")
    print(f"backbone {full.name}, features of shape {features_from.feature_shape} "
          f"({features_from.spec.size}×{features_from.spec.size} {features_from.spec.mode})")

    feats = _features([f.path for f in folders.files], [f.name for f in folders.files], features_from, args,
                      "bottlenecks")
    _report_problems(folders.skipped, feats.bad)
    if not len(feats.kept):
        raise CommandError(f"{folders.root}: none of its images could be read")
    labels_all = np.array([f.label for f in folders.files])
    names_all = [f.name for f in folders.files]
    kept = np.asarray(feats.kept)
    split_kept = np.array([sets[i] for i in kept])
    data = {s: (feats.values[split_kept == s], labels_all[kept][split_kept == s],
                [names_all[i] for i in kept[split_kept == s]]) for s in SETS}
    rate = feats.images_per_second
    print(f"features: {feats.computed:,d} computed" + (f" at {rate:.1f} images/s" if feats.computed else "")
          + f", {len(kept) - feats.computed:,d} from the cache; {feats.seconds:.1f} s")

    head = build_head(full, len(folders.labels), start, args.seed)
    t = time.perf_counter()
    validation = (data["validation"][0], data["validation"][1]) if len(data["validation"][1]) else None
    history = train_head(head, data["training"][:2], validation, epochs=args.epochs, batch_size=args.batch_size,
                         fine_tuning=start is not None, progress=not args.no_progress)
    train_seconds = time.perf_counter() - t
    last = {k: v[-1] for k, v in history.items() if v}
    print(f"trained {len(history.get('loss', []))} epochs in {train_seconds:.1f} s: training accuracy "
          f"{last.get('accuracy', float('nan')):.2%}"
          + (f", best validation accuracy {max(history['val_accuracy']):.2%}" if validation else ""))

    results = {}
    for s in ("validation", "testing"):
        X, y, names = data[s]
        if len(y):
            results[s] = assess(head.predict_proba(X, batch_size=256), y, names, folders.labels)
    if "testing" in results:
        _print_assessment("test", results["testing"])
    elif "validation" in results:
        _print_assessment("validation", results["validation"])

    test = results.get("testing")
    head.metadata = transfer_metadata(
        features_from, folders.labels, start is not None, dataset=str(folders.root),
        n_train=int(len(data["training"][1])), seed=args.seed,
        split={"validation_percentage": args.validation_percentage,
               "testing_percentage": args.testing_percentage},
        test_accuracy=test["accuracy"] if test else None, n_test=test["n"] if test else 0)
    head.metadata["profile"] = _profile(folders, sets, head, data, args.seed)  # monitor.profile.PROFILE_KEY
    saved = save_or_rescue(head.save, args.out, "transfer model")
    total = time.perf_counter() - started
    print(f"saved {saved} ({head.n_parameters():,d} trained parameters); {total:.1f} s in all")
    write_json_result(args.json, {
        "model": str(saved), "backbone": features_from.describe(), "labels": folders.labels,
        "fine_tuned_last_block": start is not None,
        "images": {"found": len(folders.files), "read": int(len(kept)), "skipped_not_images": folders.skipped,
                   "unreadable": feats.bad},
        "split": {s: counts[s] for s in SETS},
        "features": {"computed": feats.computed, "from_cache": int(len(kept)) - feats.computed,
                     "seconds": feats.seconds, "backbone_seconds": feats.backbone_seconds,
                     "images_per_second": rate if feats.computed else None},
        "training": {"epochs": len(history.get("loss", [])), "seconds": train_seconds,
                     "history": {k: list(map(float, v)) for k, v in history.items()}},
        "validation": results.get("validation"), "test": test,
        "accuracy": test["accuracy"] if test else None, "seconds": total})
    return 0


def _image_files(inputs: list[str]) -> list[tuple[Path, str]]:
    from .images import IMAGE_SUFFIXES

    files: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise CommandError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += [(p, p.as_posix()) for p in found]
        elif path.is_file():
            files.append((path, path.as_posix()))
        else:
            raise CommandError(f"{path}: no such file or folder")
    return files


def cmd_predict(args: argparse.Namespace) -> int:
    import csv
    import io

    import numpy as np

    from ..util.files import atomic_write

    model = _load_model(args.model, args.cache_dir)
    files = _image_files(args.inputs)
    if args.submission:
        ids = []
        for path, name in files:
            if not path.stem.isdigit():
                raise CommandError(f"{name}: a Kaggle submission needs numbered files (1.jpg, 2.jpg ... as "
                                   f"'digits export-images' writes them)")
            ids.append(int(path.stem))
    feats = _features([p for p, _ in files], [n for _, n in files], model.backbone, args, "images")
    _report_problems([], feats.bad)
    probabilities = model.predict_proba(feats.values) if len(feats.kept) else np.zeros((0, len(model.labels)))
    k = min(args.top, len(model.labels))
    rows = []
    for row, i in zip(probabilities, feats.kept, strict=True):
        order = np.argsort(-row, kind="stable")[:k]
        rows.append({"file": files[i][1], "top": [{"label": model.labels[j], "probability": float(row[j])}
                                                  for j in order]})
    for r in rows[:200]:
        print(f"{r['file']}: " + ", ".join(f"{t['label']} {t['probability']:.1%}" for t in r["top"]))
    if len(rows) > 200:
        print(f"... {len(rows) - 200:,d} more (see --csv / --json)")
    if args.csv:
        with atomic_write(args.csv) as fh:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            writer = csv.writer(text)
            writer.writerow(["file", "label", "confidence"])
            for r in rows:
                writer.writerow([r["file"], r["top"][0]["label"], f"{r['top'][0]['probability']:.6f}"])
            text.flush()
            text.detach()  # atomic_write closes (and syncs) the file itself
        print(f"wrote {len(rows):,d} predictions to {args.csv}")
    if args.submission:
        _write_submission(args.submission, ids, feats.kept, rows)
    write_json_result(args.json, {"model": str(args.model), "n": len(rows), "predictions": rows,
                                  "unreadable": feats.bad})
    return 0 if rows else 2


def _write_submission(path, ids: list[int], kept: list[int], rows: list[dict]) -> None:
    """A Kaggle Digit Recognizer submission: every ImageId 1..N once, each with a digit label."""
    import numpy as np

    from ..data.kaggle import write_submission

    by_id = {ids[i]: rows[n]["top"][0]["label"] for n, i in enumerate(kept)}
    missing = sorted(set(ids) - set(by_id))
    if missing:
        raise CommandError(f"{len(missing):,d} images could not be read (ImageId {missing[:5]}); a submission "
                           f"needs a label for every one")
    if sorted(by_id) != list(range(1, len(by_id) + 1)):
        raise CommandError(f"a submission needs the images numbered 1 to N once each; got {len(by_id):,d} images "
                           f"numbered {min(by_id)} to {max(by_id)}")
    labels = [by_id[i] for i in range(1, len(by_id) + 1)]
    if not all(label.isdigit() and len(label) == 1 for label in labels):
        raise CommandError("a Kaggle digits submission needs a model whose classes are the digits 0-9")
    write_submission(path, np.array([int(x) for x in labels]))
    print(f"wrote a submission of {len(labels):,d} rows to {path}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    model = _load_model(args.model, args.cache_dir)
    folders = _folders(args.images, labels=model.labels)
    feats = _features([f.path for f in folders.files], [f.name for f in folders.files], model.backbone, args,
                      "images")
    _report_problems(folders.skipped, feats.bad)
    if not len(feats.kept):
        raise CommandError(f"{folders.root}: none of its images could be read")
    truth = np.array([folders.files[i].label for i in feats.kept])
    names = [folders.files[i].name for i in feats.kept]
    result = assess(model.predict_proba(feats.values), truth, names, model.labels)
    _print_assessment(Path(args.images).name or str(args.images), result)
    write_json_result(args.json, {"model": str(args.model), "dataset": str(folders.root), **result,
                                  "skipped_not_images": folders.skipped, "unreadable": feats.bad})
    return 0


def _profile(folders, sets, head, data, seed: int) -> dict:
    """The reference profile the deployed model is watched against: picture statistics of (a sample of)
    the training images, as they are on disk, and the head's answers on the validation images."""
    from ..monitor.image_features import FRAME_FEATURES, picture_features
    from ..monitor.profile import build_profile

    training = [f.path for i, f in enumerate(folders.files) if sets[i] == "training"]
    rows = picture_features(training, seed=seed)
    X_val = data["validation"][0]
    probabilities = head.predict_proba(X_val, batch_size=256) if len(X_val) else None
    return build_profile("frames", {name: rows[:, k] for k, name in enumerate(FRAME_FEATURES)},
                         probabilities=probabilities, labels=list(folders.labels),
                         source=f"{folders.root} training images ({len(rows):,d} of {len(training):,d})",
                         held_out=f"validation images ({len(X_val):,d})" if probabilities is not None else "",
                         seed=seed)

