"""``scratchpilot data ...``: export datasets as Kaggle CSVs, fetch MNIST into the cache, describe a dataset.

Imports only argparse and the standard library at import time; NumPy and the readers load in the handlers.
"""

from __future__ import annotations

import argparse

from .. import options
from ..errors import CommandError
from ..util.files import write_json_result


def add_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="datasets: export to Kaggle CSV, download, inspect",
                                 description="Dataset utilities. DATASET is mnist, mnist-test, fashion, "
                                             "fashion-test, a Kaggle CSV (.csv/.csv.gz) or an IDX images file.")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    export = commands.add_parser("export-csv", help="write a dataset in the Kaggle Digit Recognizer CSV format",
                                 description="Write DATASET as a Kaggle CSV: train format (label,pixel0,...) "
                                             "or, with --no-labels, test format (pixel0,...). "
                                             "Example: scratchpilot data export-csv mnist-test test.csv --no-labels")
    export.add_argument("dataset", metavar="DATASET")
    export.add_argument("out", metavar="OUT.csv", type=options.csv_file,
                        help="output file (.csv, or .csv.gz to compress)")
    export.add_argument("--no-labels", action="store_true", help="test format: leave out the label column")
    export.add_argument("--limit", type=options.positive_int, metavar="N", help="only the first N images")
    export.set_defaults(func=_export_csv)

    fetch = commands.add_parser("fetch", help="download MNIST / Fashion-MNIST into the cache (SHA-256 checked)",
                                description="Download the four files of each collection into the cache "
                                            "(SCRATCHPILOT_CACHE or ~/.cache/scratchpilot), verifying them.")
    # a type check rather than choices=: argparse rejects an empty '*' list against choices (Python < 3.12)
    fetch.add_argument("kinds", nargs="*", type=_collection_name, metavar="{mnist,fashion}",
                       help="which collections (default: mnist)")
    fetch.add_argument("--cache-dir", type=options.output_folder, help="cache folder (default: SCRATCHPILOT_CACHE or "
                                                      "~/.cache/scratchpilot)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bars")
    fetch.set_defaults(func=_fetch)

    info = commands.add_parser("info", help="size, shape, class counts and source files of a dataset")
    info.add_argument("dataset", metavar="DATASET")
    info.add_argument("--json", type=options.json_file, metavar="PATH", help="also write the figures as JSON here")
    info.set_defaults(func=_info)



def _collection_name(text: str) -> str:
    if text not in ("mnist", "fashion"):
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from 'mnist', 'fashion')")
    return text


def _load(spec: str, progress: bool = True):
    """resolve_dataset with its failures turned into clean command-line errors."""
    from . import CsvFormatError, DatasetError, DownloadError, IdxFormatError, resolve_dataset

    try:
        return resolve_dataset(spec, progress=progress)
    except (DatasetError, CsvFormatError, IdxFormatError, DownloadError, OSError) as exc:
        raise CommandError(str(exc)) from exc


def _export_csv(args) -> int:
    from . import write_kaggle_csv

    dataset = _load(args.dataset)
    images = dataset.images[:args.limit] if args.limit else dataset.images
    labels = None
    if not args.no_labels:
        if dataset.labels is None:
            raise CommandError(f"{dataset.name} has no labels; pass --no-labels to write the test format")
        labels = dataset.labels[:len(images)]
    write_kaggle_csv(args.out, images.reshape(len(images), -1), labels)
    kind = "train format, with labels" if labels is not None else "test format, no labels"
    print(f"wrote {len(images)} images of {dataset.name} to {args.out} ({kind})")
    return 0


def _fetch(args) -> int:
    from . import DownloadError, fetch

    for kind in args.kinds or ["mnist"]:
        try:
            paths = fetch(kind, cache_dir=args.cache_dir, progress=not args.no_progress)
        except DownloadError as exc:
            raise CommandError(str(exc)) from exc
        print(f"{kind}: {len(paths)} files verified in {paths[0].parent}")
    return 0


def _info(args) -> int:
    import numpy as np

    dataset = _load(args.dataset)
    figures = {
        "name": dataset.name,
        "n": len(dataset),
        "image_shape": list(dataset.images.shape[1:]),
        "pixel_mean": round(float(dataset.images.mean()), 3),
        "class_counts": (np.bincount(dataset.labels, minlength=len(dataset.class_names)).tolist()
                         if dataset.labels is not None else None),
        "class_names": list(dataset.class_names),
        "sources": [str(p) for p in dataset.sources],
    }
    print(f"{dataset.name}: {figures['n']} images of {dataset.images.shape[1]}x{dataset.images.shape[2]}, "
          f"mean pixel {figures['pixel_mean']}")
    if figures["class_counts"] is not None:
        print("class counts: " + ", ".join(f"{name}={count}" for name, count
                                           in zip(dataset.class_names, figures["class_counts"], strict=True)))
    else:
        print("no labels")
    print("sources: " + ", ".join(figures["sources"]))
    write_json_result(args.json, figures)
    return 0
