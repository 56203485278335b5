"""A cross-domain split of public photographs for benchmarks/recipe_quality.py: train on Urban100's 100
photographs of buildings and streets, score on the 68 natural photographs of BSD68 (the Berkeley Segmentation
Dataset's usual 68-image test subset), the scored ones downscaled as a diffusion model sees them.

    python benchmarks/photo_collections.py OUT                      # downloads (≈ 150 MB), then builds
    python benchmarks/photo_collections.py OUT --from-dir COPY      # builds from a local copy, no network
    python benchmarks/recipe_quality.py --split OUT --seeds 0,1,2   # the comparison on it

Both collections are read from one public repository at a pinned commit, majedelhelou/denoising_datasets
(its colour folders ``CUrban100/`` and ``CBSD68/``), over raw.githubusercontent.com; every file is checked
against the SHA-256 recorded in ``photo_collections.sha256`` beside this script before it is used, so the
split is the same on every machine. ``--from-dir COPY`` takes a copy of that repository's files instead (a
clone, or ``git archive`` of it: ``COPY/CUrban100/img_001.png`` …), checked the same way.

What OUT holds:

- ``train/``: the 100 Urban100 PNGs byte for byte (native resolution, 564 to 1,024 pixels on the short side):
  recipe_quality.py takes its 64² training crops at the files' own scale, as the photos preset does.
- ``test/``: the 68 BSD68 photographs (481×321 or 321×481) as a diffusion model sees them: the short side
  resized to 256 (bicubic), then the centre 256² crop — vaekit's own ``whole_folder`` transform
  (``vaekit.data.transforms``; the same pixels ``vaekit.data.folder.whole_folder`` gives for the source folder).
  recipe_quality.py scores the 16 64² tiles of each (1,088) and the whole 256² images (68).
- ``SOURCES.json``: where each collection came from (repository, commit, folder, licence, citation), the
  transform, and the SHA-256 of every file written.

Licences, as their owners state them: BSD68's images are from the Berkeley Segmentation Dataset (Corel
photographs; Martin, Fowlkes, Tal & Malik, ICCV 2001), which its download page offers free of charge for
non-commercial research and educational purposes. Urban100 (Huang, Singh & Ahuja, CVPR 2015, distributed with the paper's
code, jbhuang0604/SelfExSR) states no licence: its authors ask that the paper be cited. The mirror claims no
ownership. Use the split for research benchmarks; do not redistribute it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPOSITORY = "majedelhelou/denoising_datasets"
COMMIT = "58234876fef6f1b56306705c78dfd40cdb837b86"
"""The repository's newest commit when the split was defined (2022-05-03); the image folders are those its
commit d3636716 (2021-06-10) added, unchanged since."""
RAW_URL = "https://raw.githubusercontent.com/{repository}/{commit}/{path}"
CHECKSUMS = Path(__file__).with_name("photo_collections.sha256")
TEST_SIZE = 256

COLLECTIONS = {
    "train": {
        "name": "Urban100",
        "folder": "CUrban100",
        "count": 100,
        "content": "urban scenes: buildings, streets, interiors (many straight edges and repeated structure)",
        "licence": "none stated; distributed by the authors with the paper's code for research, citation asked",
        "citation": "J.-B. Huang, A. Singh, N. Ahuja. Single Image Super-Resolution from Transformed Self-Exemplars. "
                    "CVPR 2015. https://github.com/jbhuang0604/SelfExSR",
        "transform": "none: the files byte for byte, at their native resolution",
    },
    "test": {
        "name": "BSD68 (colour)",
        "folder": "CBSD68",
        "count": 68,
        "content": "natural scenes: animals, people, landscapes, objects (Corel photographs)",
        "licence": "Berkeley Segmentation Dataset: free of charge for non-commercial research and educational purposes "
                   "(https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/bsds/)",
        "citation": "D. Martin, C. Fowlkes, D. Tal, J. Malik. A Database of Human Segmented Natural Images and its "
                    "Application to Evaluating Segmentation Algorithms and Measuring Ecological Statistics. ICCV 2001",
        "transform": "short side resized to {size} (bicubic), then the centre {size}² crop "
                     "(vaekit.data.transforms, as vaekit.data.folder.whole_folder)",
    },
}


def read_checksums(path: Path = CHECKSUMS) -> dict[str, str]:
    """``{repository path: sha256}`` from a ``sha256sum``-format file."""
    checksums = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            checksums[name.lstrip("*")] = digest
    return checksums


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_of(split: str, checksums: dict[str, str]) -> list[str]:
    """The repository paths of one side of the split, sorted, with the count the split is defined with."""
    folder = COLLECTIONS[split]["folder"]
    paths = sorted(name for name in checksums if name.startswith(folder + "/"))
    if len(paths) != COLLECTIONS[split]["count"]:
        raise SystemExit(f"{CHECKSUMS} lists {len(paths)} files under {folder}/, expected {COLLECTIONS[split]['count']}")
    return paths


def verified(path: Path, expected: str) -> Path:
    """``path`` when its SHA-256 is the recorded one; otherwise stop, naming the file."""
    if not path.is_file():
        raise SystemExit(f"missing: {path}")
    actual = sha256(path)
    if actual != expected:
        raise SystemExit(f"{path}: SHA-256 {actual}, expected {expected} (a different or damaged copy)")
    return path


def download(name: str, expected: str, cache: Path, attempts: int = 3) -> Path:
    """One repository file from raw.githubusercontent.com at the pinned commit, into ``cache`` (reused
    when a copy there already has the right checksum)."""
    target = cache / name
    if target.is_file() and sha256(target) == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    url = RAW_URL.format(repository=REPOSITORY, commit=COMMIT, path=name)
    partial = target.with_name(target.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out)
            os.replace(partial, target)
            return verified(target, expected)
        except (OSError, SystemExit) as err:
            if attempt == attempts:
                raise SystemExit(f"could not download {url}: {err}") from None
            time.sleep(2 * attempt)
    raise AssertionError("unreachable")


def fetch_all(names: list[str], checksums: dict[str, str], from_dir: Path | None, cache: Path) -> dict[str, Path]:
    """``{repository path: local verified file}``: from ``from_dir`` when given, else downloaded."""
    if from_dir is not None:
        return {name: verified(from_dir / name, checksums[name]) for name in names}
    print(f"downloading {len(names)} files from {REPOSITORY}@{COMMIT[:8]} into {cache}", flush=True)
    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = list(pool.map(lambda name: download(name, checksums[name], cache), names))
    return dict(zip(names, paths))


def diffusion_view(source: Path, size: int):
    """The picture as a diffusion model at ``size``² sees it: vaekit's own resize-then-centre-crop."""
    from PIL import Image

    from vaekit.data.transforms import CropSpec, fit_image, place_crop

    spec = CropSpec(size, short_side=size)
    with Image.open(source) as image:
        picture = fit_image(image, spec)
        place = place_crop(picture.height, picture.width, spec, None)
        return picture.crop((place.left, place.top, place.left + size, place.top + size)).convert("RGB")


def build(out: Path, from_dir: Path | None, cache: Path, test_size: int = TEST_SIZE, overwrite: bool = False) -> dict:
    """Write ``out/train``, ``out/test`` and ``out/SOURCES.json``; return the record."""
    checksums = read_checksums()
    sides = {split: files_of(split, checksums) for split in COLLECTIONS}
    for split in sides:
        folder = out / split
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise SystemExit(f"{folder} is not empty: pass --overwrite to replace it")
            shutil.rmtree(folder)
    local = fetch_all([name for names in sides.values() for name in names], checksums, from_dir, cache)
    written: dict[str, dict[str, str]] = {}
    for split, names in sides.items():
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        written[split] = {}
        for name in names:
            target = folder / Path(name).name
            if split == "train":
                shutil.copyfile(local[name], target)
            else:
                diffusion_view(local[name], test_size).save(target, optimize=False)
            written[split][target.name] = sha256(target)
    record = {
        "repository": REPOSITORY,
        "commit": COMMIT,
        "url": RAW_URL.format(repository=REPOSITORY, commit=COMMIT, path="FOLDER/FILE"),
        "test_size": test_size,
        "collections": {split: {**COLLECTIONS[split],
                                "transform": COLLECTIONS[split]["transform"].format(size=test_size),
                                "source_sha256": {Path(n).name: checksums[n] for n in sides[split]},
                                "written_sha256": written[split]} for split in COLLECTIONS},
    }
    (out / "SOURCES.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def summary(out: Path) -> str:
    from PIL import Image

    lines = []
    for split in COLLECTIONS:
        files = sorted((out / split).glob("*.png"))
        sizes = sorted({Image.open(path).size for path in files})
        megabytes = sum(path.stat().st_size for path in files) / 1e6
        shape = f"{sizes[0][0]}×{sizes[0][1]}" if len(sizes) == 1 else f"{len(sizes)} sizes, {min(min(s) for s in sizes)} " \
                f"to {max(min(s) for s in sizes)} px on the short side"
        lines.append(f"{split}/: {len(files)} PNGs from {COLLECTIONS[split]['name']}, {shape}, {megabytes:.1f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Build the cross-domain split for benchmarks/recipe_quality.py: train/ = Urban100's 100 photographs, "
                    f"test/ = BSD68's 68 at {TEST_SIZE}² (both checked against photo_collections.sha256).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[4:7]))
    parser.add_argument("out", type=Path, help="folder to write train/, test/ and SOURCES.json into")
    parser.add_argument("--from-dir", type=Path,
                        help=f"a local copy of {REPOSITORY}'s files (holding CUrban100/ and CBSD68/) instead of downloading")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "vaekit" / "photo_collections" / COMMIT[:12],
                        help="where downloads are kept and reused (default: %(default)s)")
    parser.add_argument("--test-size", type=int, default=TEST_SIZE,
                        help="side the scored photographs are resized (short side) and centre-cropped to (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace train/ and test/ when they are not empty")
    args = parser.parse_args(argv)
    if args.test_size < 64:
        parser.error("--test-size must be at least 64 (recipe_quality.py scores 64² tiles)")
    build(args.out, args.from_dir, args.cache, args.test_size, args.overwrite)
    print(summary(args.out))
    print(f"sources and checksums: {args.out / 'SOURCES.json'}\n"
          f"next: python benchmarks/recipe_quality.py --split {args.out} --seeds 0,1,2", file=sys.stderr)


if __name__ == "__main__":
    main()
