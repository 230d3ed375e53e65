"""Transfer learning on digit and clothing JPEG folders: EfficientNet-Lite0's last layer retrained, beside
networks trained from scratch on the same images.

    python bench/transfer.py [--datasets mnist,fashion] [--per-class 50,100,500] [--image-size 224]
                             [--cut 44] [--json PATH]

For each dataset: ``digits export-images`` writes the first 6,000 training images and the first 2,000 test
images as JPEG folders (one per class); folders of the first 50 / 100 / 500 images of each class are made
from them. On each, ``transfer train`` (10% validation by file-name hash, no test share) trains one new
softmax layer on frozen features, and ``transfer evaluate`` measures it on the 2,000 test JPEGs. The
500-per-class run starts with an empty bottleneck cache and is timed end to end (features + training +
test); the smaller folders are subsets, so their features come from the cache.

Two places to take the features, both "last layer only":

- ``--cut 44`` (default here): the 7×7×320 map before the network's 1×1 head convolution. A linear layer
  on it can use where in the picture a stroke is, which digits need;
- the pooled 1,280-number bottleneck the blog's Inception retrain uses (``transfer train``'s default
  cut), computed here from the cut-44 features by running the network's last three layers on them.

Beside them, on the same JPEGs decoded back to 28×28 grey and the same training/validation split: the
engine's MLP (digits "best" config) and CNN (digits "cnn" config) trained from scratch; their epochs are
scaled so each sees about 60,000 images whatever the folder size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_data_env, table, write_result  # noqa: E402

SETS = {"mnist": ("mnist", "mnist-test"), "fashion": ("fashion", "fashion-test")}
N_TRAIN_EXPORTED = 6000
N_TEST = 2000
SCRATCH_IMAGES_SEEN = 60_000


def _cli(*argv: str) -> None:
    from scratchpilot.cli import main

    code = main(list(argv))
    if code:
        raise RuntimeError(f"scratchpilot {' '.join(argv)} exited with {code}")


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def _subset(source: Path, dest: Path, per_class: int) -> None:
    """The first ``per_class`` images of each class folder, hard-linked (no copy)."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        if len(files) < per_class:
            raise RuntimeError(f"{folder}: only {len(files)} images, {per_class} wanted")
        (dest / folder.name).mkdir(parents=True)
        for f in files[:per_class]:
            os.link(f, dest / folder.name / f.name)


def _grey_images(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every JPEG of a class-folder tree decoded back to 28×28 uint8, with its label and file name."""
    from PIL import Image

    images, labels, names = [], [], []
    for label, sub in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        for f in sorted(sub.iterdir()):
            with Image.open(f) as picture:
                images.append(np.asarray(picture.convert("L").resize((28, 28)), dtype=np.uint8))
            labels.append(label)
            names.append(f"{sub.name}/{f.name}")
    return np.stack(images), np.array(labels, dtype=np.int64), names


def _from_scratch(config_name: str, train, validation, test, seed: int) -> tuple[float, float]:
    """Test accuracy and training seconds of a digits config trained from scratch (best validation epoch)."""
    from dataclasses import replace

    from scratchpilot.data import to_features
    from scratchpilot.digits import models

    config = models.CONFIGS[config_name]
    epochs = int(np.clip(round(SCRATCH_IMAGES_SEEN / len(train[1])), config.epochs, 150))
    t = time.perf_counter()
    model = models.train(replace(config, epochs=epochs), *train, seed=seed, validation=validation, progress=False)
    seconds = time.perf_counter() - t
    return model.evaluate(to_features(test[0]), test[1])["accuracy"], seconds


def _pooled_accuracy(cache_dir: Path, folder: Path, test_dir: Path, image_size: int, cut: int, seed: int) -> float:
    """The blog's bottleneck: the network's layers ``cut`` … global pooling run on the cached cut features,
    one softmax layer trained on the 1,280 pooled numbers, the same split and early stopping."""
    from scratchpilot.transfer.features import BottleneckCache, extract_features, load_backbone
    from scratchpilot.transfer.folders import scan_class_folders, split_of
    from scratchpilot.transfer.training import build_head, train_head

    at_cut = load_backbone("efficientnet-lite0", cut, image_size=image_size, cache_dir=cache_dir)
    pooled = load_backbone("efficientnet-lite0", None, image_size=image_size, cache_dir=cache_dir)
    rest = pooled.network.layers[cut:pooled.cut]
    cache = BottleneckCache(cache_dir / "bottlenecks", at_cut)

    def features(root: Path):
        found = scan_class_folders(root)
        values = extract_features([f.path for f in found.files], [f.name for f in found.files], at_cut,
                                  cache=cache, progress=False).values
        for layer in rest:
            values = layer.forward(values)
        return values, np.array([f.label for f in found.files]), [f.name for f in found.files]

    X, y, names = features(folder)
    is_val = np.array([split_of(n, 10.0, 0.0) == "validation" for n in names])
    head = build_head(pooled, 10, None, seed)
    train_head(head, (X[~is_val], y[~is_val]), (X[is_val], y[is_val]), epochs=40, progress=False)
    Xt, yt, _ = features(test_dir)
    return float(np.mean(head.predict_proba(Xt, batch_size=256).argmax(1) == yt))


def run_dataset(name: str, work: Path, per_class: list[int], image_size: int, cut: int, seed: int) -> list[dict]:
    from scratchpilot.transfer.folders import split_of

    train_name, test_name = SETS[name]
    exported, test_dir = work / name / "train-all", work / name / "test"
    _cli("digits", "export-images", train_name, str(exported), "--format", "jpg", "--limit", str(N_TRAIN_EXPORTED))
    _cli("digits", "export-images", test_name, str(test_dir), "--format", "jpg", "--limit", str(N_TEST))
    test = _grey_images(test_dir)[:2]
    cache_dir = work / f"cache-{name}"
    rows = []
    for n in sorted(per_class, reverse=True):  # the largest first: it fills the cache the others read
        folder = work / name / f"train-{n}"
        _subset(exported, folder, n)
        model, train_json, eval_json = work / f"{name}-{n}.npz", work / f"{name}-{n}-train.json", \
            work / f"{name}-{n}-eval.json"
        t = time.perf_counter()
        _cli("transfer", "train", str(folder), "--out", str(model), "--cut", str(cut), "--image-size",
             str(image_size), "--validation-percentage", "10", "--testing-percentage", "0", "--seed", str(seed),
             "--cache-dir", str(cache_dir), "--no-progress", "--json", str(train_json))
        _cli("transfer", "evaluate", str(test_dir), "--model", str(model), "--cache-dir", str(cache_dir),
             "--no-progress", "--json", str(eval_json))
        whole = time.perf_counter() - t
        trained, evaluated = _read_json(train_json), _read_json(eval_json)
        row = {"dataset": name, "per_class": n, "n_train": sum(trained["split"]["training"].values()),
               "transfer_accuracy": evaluated["accuracy"], "n_test": evaluated["n"],
               "whole_run_seconds": whole, "feature_seconds": trained["features"]["seconds"],
               "features_computed": trained["features"]["computed"],
               "images_per_second": trained["features"]["images_per_second"],
               "head_train_seconds": trained["training"]["seconds"]}
        row["pooled_accuracy"] = _pooled_accuracy(cache_dir, folder, test_dir, image_size, cut, seed)
        images, labels, names = _grey_images(folder)
        is_val = np.array([split_of(f, 10.0, 0.0) == "validation" for f in names])
        train, validation = (images[~is_val], labels[~is_val]), (images[is_val], labels[is_val])
        row["mlp_accuracy"], row["mlp_seconds"] = _from_scratch("best", train, validation, test, seed)
        row["cnn_accuracy"], row["cnn_seconds"] = _from_scratch("cnn", train, validation, test, seed)
        if n == max(per_class):  # the same command again: every feature from the cache
            t = time.perf_counter()
            _cli("transfer", "train", str(folder), "--out", str(model), "--cut", str(cut), "--image-size",
                 str(image_size), "--validation-percentage", "10", "--testing-percentage", "0", "--seed",
                 str(seed), "--cache-dir", str(cache_dir), "--no-progress", "--json", str(train_json))
            row["warm_train_seconds"] = time.perf_counter() - t
            row["warm_feature_seconds"] = _read_json(train_json)["features"]["seconds"]
        print(f"{name} {n}/class: transfer {row['transfer_accuracy']:.2%} (pooled {row['pooled_accuracy']:.2%}), "
              f"MLP {row['mlp_accuracy']:.2%}, CNN {row['cnn_accuracy']:.2%}; whole run {whole:.0f} s", flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist,fashion")
    parser.add_argument("--per-class", default="50,100,500")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--cut", type=int, default=44)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", metavar="DIR", help="work here and keep the folders, models and caches")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    ensure_data_env()
    per_class = [int(x) for x in args.per_class.split(",")]
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="scratchpilot-transfer-"))
    rows = []
    try:
        for name in args.datasets.split(","):
            rows += run_dataset(name, work, per_class, args.image_size, args.cut, args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    shown = [{"data": r["dataset"], "per class": r["per_class"], "transfer": f"{r['transfer_accuracy']:.2%}",
              "pooled": f"{r['pooled_accuracy']:.2%}", "MLP": f"{r['mlp_accuracy']:.2%}",
              "CNN": f"{r['cnn_accuracy']:.2%}", "run s": r["whole_run_seconds"],
              "img/s": r["images_per_second"] or "-"} for r in rows]
    print(table(shown, ["data", "per class", "transfer", "pooled", "MLP", "CNN", "run s", "img/s"]))
    for r in rows:
        if "warm_train_seconds" in r:
            print(f"{r['dataset']}: train again with a warm cache: features {r['warm_feature_seconds']:.1f} s "
                  f"against {r['feature_seconds']:.1f} s ({r['feature_seconds'] / r['warm_feature_seconds']:.0f}×)")
    payload = {"image_size": args.image_size, "cut": args.cut, "seed": args.seed, "n_test": N_TEST, "rows": rows}
    path = write_result("transfer", payload, also=args.json)
    print(f"results: {path}")
    return payload


if __name__ == "__main__":
    main()
