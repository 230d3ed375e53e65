"""``scratchpilot digits ...``: train, evaluate, predict, kaggle, export-images.

Only argparse and the standard library are imported here; the handlers import NumPy and the engine when
they run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import options
from ..errors import CommandError
from ..util.files import save_or_rescue, write_json_result

DATA_HELP = ("dataset: mnist, mnist-test, fashion, fashion-test, or a path "
             "(Kaggle CSV, .csv.gz, or an IDX images file with its labels file beside it)")


def add_parser(subparsers) -> None:
    digits = subparsers.add_parser("digits", help="handwritten digits: train, evaluate, predict, Kaggle")
    sub = digits.add_subparsers(dest="digits_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("train", help="train a digits network")
    p.add_argument("--data", default="mnist", help=DATA_HELP + " (default: mnist)")
    p.add_argument("--blog", action="store_true",
                   help="the tutorial's exact set-up: 784-30-10, sigmoid, quadratic cost, batch 10, eta 3.0, "
                        "30 epochs")
    p.add_argument("--arch", choices=["mlp", "cnn"], default="mlp",
                   help="mlp: 784-512-256-10 ReLU (default); cnn: three conv+BatchNorm+pool stages, "
                        "augmented training (about 20 min on 2 cores)")
    p.add_argument("--ensemble", type=options.positive_int, default=1, metavar="N",
                   help="train N models from different seeds and save them as one ensemble that averages "
                        "their probabilities (default 1)")
    p.add_argument("--epochs", type=options.positive_int, help="override the number of epochs")
    p.add_argument("--validate", default="mnist-test",
                   help="dataset to report accuracy on after each epoch ('none' to skip; default mnist-test)")
    p.add_argument("--seed", type=options.seed, default=0)
    p.add_argument("--out", type=options.model_file, default="model.npz",
                   help="where to save the model (default model.npz)")
    p.add_argument("--json", type=options.json_file, metavar="PATH", help="write the training figures as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy, confusion matrix, per-class precision/recall/F1")
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="mnist-test", help=DATA_HELP + " (default: mnist-test)")
    p.add_argument("--plot", type=options.figure_file, metavar="PNG",
                   help="save a confusion-matrix figure (.png, .svg or .pdf)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the probabilities of each image and its four "
                        "one-pixel shifts")
    p.add_argument("--json", type=options.json_file, metavar="PATH",
                   help="write accuracy, n, confusion and per-class figures as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("combine", help="save several trained digits models as one ensemble model file")
    p.add_argument("models", nargs="+", help="model files (same inputs and outputs)")
    p.add_argument("--out", type=options.model_file, required=True, help="the ensemble's model file")
    p.set_defaults(func=cmd_combine)

    p = sub.add_parser("explain", help="a network in one picture: what each layer makes of one digit",
                       description="Draw one digit going through the network: for a CNN the input, the most "
                                   "active feature maps after each convolution stage and the output "
                                   "probabilities; for an MLP the first layer's weights of the units that fired "
                                   "most, as 28×28 pictures.")
    p.add_argument("--model", required=True, help="a digits model file (.npz)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="a picture of a digit (PNG, JPEG, ...), prepared as the web page does")
    source.add_argument("--index", type=options.non_negative_int, help="the N-th digit of mnist-test")
    p.add_argument("--out", type=options.output_file(".png", ".svg", ".pdf"), default="explain.png",
                   help="the picture (default explain.png)")
    p.add_argument("--json", metavar="PATH", type=options.json_file, help="write what was drawn as JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("predict", help="predict labels for every image of a dataset")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--out", type=options.csv_file, default="predictions.csv",
                   help="CSV ImageId,Label (default predictions.csv)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("kaggle", help="Kaggle Digit Recognizer: train (or load), predict, write submission")
    p.add_argument("--train", help="Kaggle train.csv (label first); needed unless --model is given")
    p.add_argument("--test", required=True, help="Kaggle test.csv (pixels only)")
    p.add_argument("--out", type=options.csv_file, default="submission.csv")
    p.add_argument("--model", help="use this model instead of training one")
    p.add_argument("--save-model", type=options.model_file, metavar="PATH", help="save the trained model here")
    p.add_argument("--arch", choices=["mlp", "cnn"], default="mlp", help="network to train (default mlp)")
    p.add_argument("--holdout", type=options.held_out_share, default=0.1,
                   help="fraction of train.csv held out to report validation accuracy, 0 ≤ F < 1 (default 0.1)")
    p.add_argument("--epochs", type=options.positive_int, help="override the number of epochs")
    p.add_argument("--labels", metavar="DATASET",
                   help="score the submission against this dataset's labels (e.g. mnist-test when the test "
                        "CSV was made with 'scratchpilot data export-csv mnist-test test.csv --no-labels')")
    p.add_argument("--seed", type=options.seed, default=0)
    p.add_argument("--json", type=options.json_file, metavar="PATH")
    p.set_defaults(func=cmd_kaggle)

    p = sub.add_parser("export-images", help="one PNG per row, in one folder per label")
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("out", type=options.output_folder, help="output folder")
    p.add_argument("--format", choices=["png", "jpg"], default="png")
    p.add_argument("--limit", type=options.positive_int, help="only the first N images")
    p.set_defaults(func=cmd_export_images)


def _load_dataset(spec: str):
    from ..data import resolve_dataset

    try:
        return resolve_dataset(spec)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def _load_model(path: str):
    from .. import nn
    from .models import load_digits_model

    try:
        return load_digits_model(path)
    except nn.ModelFileError as exc:
        raise CommandError(str(exc)) from None


def cmd_train(args: argparse.Namespace) -> int:
    import time

    from .. import nn
    from ..data import to_features
    from . import models

    train_set = _load_dataset(args.data)
    if train_set.labels is None:
        raise CommandError(f"{args.data}: has no labels, cannot train on it")
    validation = None
    if args.validate.lower() != "none":
        val_set = _load_dataset(args.validate)
        if val_set.labels is not None:
            validation = (val_set.images, val_set.labels)
    if args.blog and args.arch == "cnn":
        raise CommandError("--blog is the tutorial's MLP; it cannot be combined with --arch cnn")
    config = models.BLOG if args.blog else models.CNN if args.arch == "cnn" else models.BEST
    epochs = args.epochs or config.epochs
    print(f"training the {config.name} network on {train_set.name} ({len(train_set.labels):,d} images), "
          f"{epochs} epochs" + (f", {args.ensemble} models" if args.ensemble > 1 else ""))
    t0 = time.perf_counter()
    members, member_results = [], []
    for k in range(args.ensemble):
        m0 = time.perf_counter()
        # an ensemble validates once at the end (per-epoch validation of every member would cost more)
        member = models.train(config, train_set.images, train_set.labels, seed=args.seed + k,
                              validation=validation if args.ensemble == 1 else None, epochs=epochs)
        member.metadata["dataset"] = train_set.name
        members.append(member)
        entry = {"seed": args.seed + k, "train_seconds": time.perf_counter() - m0,
                 "train_accuracy": member.history["accuracy"][-1]}
        if validation is not None and args.ensemble > 1:
            entry["validation_accuracy"] = member.evaluate(to_features(validation[0]), validation[1])["accuracy"]
            print(f"model {k + 1}/{args.ensemble} (seed {args.seed + k}): {args.validate} accuracy "
                  f"{entry['validation_accuracy']:.2%}")
        member_results.append(entry)
    seconds = time.perf_counter() - t0
    model = members[0] if args.ensemble == 1 else nn.Ensemble(members)
    if args.ensemble > 1:
        model.metadata = {**members[0].metadata, "ensemble": args.ensemble}
    result = {"config": config.name, "arch": config.arch, "epochs": epochs, "train_seconds": seconds,
              "train_accuracy": members[0].history["accuracy"][-1], "ensemble": args.ensemble,
              "members": member_results}
    if validation is not None:
        acc = model.evaluate(to_features(validation[0]), validation[1])["accuracy"]
        model.metadata["test_accuracy"] = acc
        model.metadata["test_dataset"] = args.validate
        result.update(validation_dataset=args.validate, validation_accuracy=acc)
        if args.ensemble == 1:
            result["validation_history"] = model.history["val_accuracy"]
        print(f"{args.validate} accuracy: {acc:.2%}  ({seconds:.1f} s)")
    models.attach_profile(model, train_set.images, source=train_set.name,
                          held_out=(validation[0], args.validate) if validation is not None else None)
    save_or_rescue(model.save, args.out, "trained model")
    print(f"saved {args.out} (with the reference profile its deployment is watched against)")
    write_json_result(args.json, {**result, "model": str(args.out)})
    return 0


def evaluate_model(model, dataset, tta: bool = False) -> dict:
    """Accuracy (with a 95% interval), confusion matrix and per-class figures of a model on a dataset."""
    from ..data import to_features
    from .metrics import confusion_matrix, per_class_report, wilson_interval
    from .models import digits_metadata, predict_proba_tta

    features = to_features(dataset.images)
    predictions = (predict_proba_tta(model, features) if tta else model.predict_proba(features)).argmax(axis=1)
    labels = digits_metadata(model, "the model").labels
    confusion = confusion_matrix(dataset.labels, predictions, len(labels))
    correct = int(confusion.trace())
    n = int(confusion.sum())
    low, high = wilson_interval(correct, n)
    return {"dataset": dataset.name, "n": n, "correct": correct, "accuracy": correct / n if n else 0.0,
            "accuracy_ci95": [low, high], "labels": labels, "confusion": confusion.tolist(),
            "per_class": per_class_report(confusion), "predictions": predictions}


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from .metrics import format_confusion, format_report, plot_confusion

    model = _load_model(args.model)
    dataset = _load_dataset(args.data)
    if dataset.labels is None:
        raise CommandError(f"{args.data}: has no labels, cannot evaluate on it (use 'digits predict')")
    result = evaluate_model(model, dataset, tta=args.tta)
    result["tta"] = args.tta
    labels = result["labels"]
    low, high = result["accuracy_ci95"]
    print(f"{dataset.name}: accuracy {result['accuracy']:.2%} ({result['correct']:,d} / {result['n']:,d}), "
          f"95% CI {low:.2%}–{high:.2%}\n")
    print(format_confusion(np.array(result["confusion"]), labels) + "\n")
    print(format_report(result["per_class"], labels))
    if args.plot:
        plot_confusion(np.array(result["confusion"]), labels, args.plot,
                       title=f"{Path(args.model).name} on {dataset.name}: {result['accuracy']:.2%}")
        print(f"\nconfusion matrix figure: {args.plot}")
    result.pop("predictions")
    write_json_result(args.json, {**result, "model": str(args.model)})
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    from .. import nn

    members, first = [], None
    for path in args.models:
        model = _load_model(path)
        first = model.metadata if first is None else first
        members.extend(getattr(model, "members", [model]))
    try:
        ensemble = nn.Ensemble(members)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    ensemble.metadata = {k: v for k, v in first.items() if k not in ("test_accuracy", "validation_accuracy")}
    ensemble.metadata.update(ensemble=len(members), members=[str(p) for p in args.models])
    ensemble.save(args.out)
    print(f"saved {args.out}: an ensemble of {len(members)} models")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..data import to_features, write_submission

    model = _load_model(args.model)
    dataset = _load_dataset(args.data)
    predictions = model.predict(to_features(dataset.images))
    write_submission(args.out, predictions)
    print(f"wrote {len(predictions):,d} predictions to {args.out}")
    return 0


def cmd_kaggle(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data import read_kaggle_csv, to_features, write_submission
    from . import models

    def read(path, want_labels):
        try:
            X, y = read_kaggle_csv(path)
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        if want_labels and y is None:
            raise CommandError(f"{path}: this is a test-format CSV (no label column); --train needs train.csv")
        return X.reshape(-1, 28, 28), y

    test_images, test_labels = read(args.test, want_labels=False)
    result: dict = {"test": args.test, "n_test": int(len(test_images))}
    if args.model:
        model = _load_model(args.model)
    else:
        if not args.train:
            raise CommandError("give --train train.csv (to train a model) or --model model.npz")
        images, labels = read(args.train, want_labels=True)
        rng = np.random.default_rng(args.seed)
        order = rng.permutation(len(labels))
        n_val = int(round(args.holdout * len(labels)))
        if n_val >= len(labels):
            raise CommandError(f"--holdout {args.holdout}: holds out all {len(labels):,d} rows of {args.train}, "
                               f"leaving none to train on")
        val_idx, train_idx = order[:n_val], order[n_val:]
        config = models.CNN if args.arch == "cnn" else models.BEST
        model = models.train(config, images[train_idx], labels[train_idx], seed=args.seed, epochs=args.epochs)
        if n_val:
            acc = model.evaluate(to_features(images[val_idx]), labels[val_idx])["accuracy"]
            print(f"validation accuracy on {n_val:,d} held-out rows of {args.train}: {acc:.2%}")
            result.update(validation_accuracy=acc, n_validation=n_val)
            model.metadata["validation_accuracy"] = acc
        model.metadata["dataset"] = str(args.train)
        if args.save_model:
            save_or_rescue(model.save, args.save_model, "trained model")
    predictions = model.predict(to_features(test_images))
    write_submission(args.out, predictions)
    print(f"wrote {args.out}: {len(predictions):,d} rows (ImageId from 1)")
    truth, truth_name = test_labels, args.test
    if args.labels:
        reference = _load_dataset(args.labels)
        if reference.labels is None or len(reference.labels) != len(predictions):
            raise CommandError(f"--labels {args.labels}: needs {len(predictions):,d} labels to score "
                               f"{args.out}, it has {0 if reference.labels is None else len(reference.labels):,d}")
        truth, truth_name = reference.labels, reference.name
    if truth is not None:
        from ..data import read_submission

        submitted = read_submission(args.out, expected_rows=len(predictions))  # the file as written
        acc = float(np.mean(submitted == truth))
        result.update(test_accuracy=acc, scored_against=truth_name)
        print(f"submission accuracy against the labels of {truth_name}: {acc:.2%}")
    write_json_result(args.json, {**result, "submission": str(args.out)})
    return 0


def cmd_export_images(args: argparse.Namespace) -> int:
    try:
        from PIL import Image
    except ImportError:
        raise CommandError("export-images needs Pillow: pip install 'scratchpilot[web]'") from None
    dataset = _load_dataset(args.data)
    images = dataset.images if args.limit is None else dataset.images[: args.limit]
    labels = dataset.labels
    out = Path(args.out)
    counts: dict[str, int] = {}
    width = len(str(len(images)))
    for i, image in enumerate(images):
        label = str(int(labels[i])) if labels is not None else "unlabelled"
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i + 1:0{width}d}.{args.format}")
        counts[label] = counts.get(label, 0) + 1
    print(f"wrote {len(images):,d} images to {out}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .. import nn
    from ..data.digit_image import ImageDecodeError, NothingDrawnError, decode_image, prepare_digit
    from . import models
    from .explain import explain

    try:
        model = models.load_digits_model(args.model)
    except nn.ModelFileError as exc:
        raise CommandError(str(exc)) from None
    if args.image is not None:
        try:
            with open(args.image, "rb") as f:
                digit = prepare_digit(decode_image(f.read(), where=args.image))
        except (ImageDecodeError, NothingDrawnError) as exc:
            raise CommandError(str(exc) if args.image in str(exc) else f"{args.image}: {exc}") from None
    else:
        test = _load_dataset("mnist-test")
        if args.index >= len(test.images):
            raise CommandError(f"--index {args.index}: mnist-test has {len(test.images):,d} digits (0 to "
                               f"{len(test.images) - 1:,d})")
        digit = test.images[args.index]
    try:
        result = explain(model, digit, args.out)
    except ValueError as exc:
        raise CommandError(f"{args.model}: {exc}") from None
    print(f"wrote {args.out}: {result['kind']} reads {result['label']} "
          f"({max(result['probabilities']):.0%}); stages {[s['shape'] for s in result['stages']]}")
    write_json_result(args.json, result)
    return 0

