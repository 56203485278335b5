"""The training data pipeline: 256×256 random crops with random flips from a folder of JPEG photographs,
vaekit's loader (``folder-crops`` through ``TrainingBatches``) against what a user writes with
torchvision: ``ImageFolder`` + ``RandomCrop`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``DataLoader``
(shuffled), the same batch size and ``num_workers``. Images per second over whole epochs, the two
alternating in one process (A B, B A, ...), medians of the rounds. Then the peak resident memory an epoch over 1,000 and over 10,000 files adds to a process that has imported everything, each
in a fresh process with num_workers 0 (so the loader's own memory is what is measured; the high-water
mark is reset through /proc/self/clear_refs after the imports).

    python benchmarks/data_pipeline.py [--files 2000] [--rounds 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import interleaved, machine, make_jpegs, median, write_json

CROP, BATCH = 256, 32


def vaekit_epoch(root: Path, workers: int, epoch: int = 0) -> int:
    from vaekit.config import load_config
    from vaekit.data import TrainingBatches, build_dataset

    config = load_config(None, ["data.name=folder-crops", f"data.path={root}", f"data.crop_size={CROP}",
                                "data.short_side=null", "data.test_fraction=0.001", "data.cache=false"])
    data = build_dataset(config.data, "train")  # decoding every file, as torchvision does: no data.cache
    return sum(len(x) for x, _ in TrainingBatches(data, BATCH, seed=0, num_workers=workers).epoch(epoch))


def torchvision_epoch(root: Path, workers: int) -> int:
    import torch
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.RandomCrop(CROP), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor()])
    data = datasets.ImageFolder(str(root.parent), transform=transform)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True, num_workers=workers)
    return sum(len(x) for x, _ in loader)


def memory_of_one_epoch(root: Path, loader: str, fixed_mmap_threshold: bool) -> float:
    """MB that listing ``root`` and reading one epoch of it adds to the peak resident memory of a fresh
    process that has already imported everything. glibc raises its mmap threshold as large blocks are
    freed and then keeps later ones of that size in its heap, so the peak of a process that allocates
    25 MB batches wanders by a hundred MB from run to run; ``fixed_mmap_threshold`` pins the threshold
    at 128 KiB (as if mallopt had set it), so that resident memory follows live memory."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import data_pipeline as d; "
            "import torchvision.datasets, vaekit.data; "
            "status = lambda key: int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1]); "
            "open('/proc/self/clear_refs', 'w').write('5'); before = status('VmRSS:'); "
            f"from pathlib import Path; n = d.{loader}_epoch(Path({str(root)!r}), 0); "
            "print(n, (status('VmHWM:') - before) / 1024)")
    env = {**os.environ, **({"MALLOC_MMAP_THRESHOLD_": "131072"} if fixed_mmap_threshold else {})}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    return float(out.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--memory-files", type=int, nargs=2, default=[1000, 10000])
    parser.add_argument("--json")
    args = parser.parse_args()
    result: dict = {"machine": machine(), "crop": CROP, "batch": BATCH, "files": args.files}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        started = time.perf_counter()
        make_jpegs(work / "speed" / "photos", args.files, width=512, height=384)
        print(f"{args.files} JPEGs of 512×384 written in {time.perf_counter() - started:.0f} s")
        root = work / "speed" / "photos"
        for workers in (0, 2):
            paths = {"vaekit": lambda: vaekit_epoch(root, workers),
                     "torchvision": lambda: torchvision_epoch(root, workers)}
            times = interleaved(paths, args.rounds, warmup=1, alternate=True)
            rates = {name: args.files / median(t) for name, t in times.items()}
            result[f"workers={workers}"] = {"images/s": rates, "ratio": rates["vaekit"] / rates["torchvision"],
                                            "seconds": times}
            print(f"num_workers={workers}: vaekit {rates['vaekit']:.0f} images/s, torchvision "
                  f"{rates['torchvision']:.0f} images/s: {rates['vaekit'] / rates['torchvision']:.2f}×")
        memory: dict = {}
        small, large = args.memory_files
        make_jpegs(work / "memory" / "photos", large, width=320, height=256, seed=1)
        for count in (small, large):
            subset = work / f"memory-{count}" / "photos"
            subset.mkdir(parents=True)
            for path in sorted((work / "memory" / "photos").iterdir())[:count]:
                (subset / path.name).symlink_to(path)
            for fixed in (False, True):
                key = "fixed mmap threshold" if fixed else "default malloc"
                memory.setdefault(key, {})[count] = {loader: memory_of_one_epoch(subset, loader, fixed)
                                                     for loader in ("vaekit", "torchvision")}
                print(f"{key}: one epoch over {count} files adds to the peak RSS: vaekit "
                      f"{memory[key][count]['vaekit']:.1f} MB, torchvision {memory[key][count]['torchvision']:.1f} MB")
        result["epoch_peak_rss_added_mb"] = memory
        for key, values in memory.items():
            growth = values[large]["vaekit"] - values[small]["vaekit"]
            print(f"vaekit, {key}: {large} files {growth:+.1f} MB against {small}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
