import logging

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit.config import load_config
from vaekit.data import build_dataset
from vaekit.data.shapes import CLASS_NAMES, make_shapes
from vaekit.errors import ConfigError, VaekitError


def dataset(split="train", **overrides):
    return build_dataset(load_config(None, [f"data.{k}={v}" for k, v in overrides.items()]).data, split)


def test_shapes_are_seeded_labelled_and_in_range():
    train = dataset(num_train=400, num_test=100)
    assert train.images.shape == (400, 1, 16, 16) and train.value_range == (0.0, 1.0)
    assert train.images.min() >= 0 and train.images.max() <= 1
    assert train.class_names == list(CLASS_NAMES)
    assert set(train.labels.tolist()) == {0, 1, 2, 3}
    assert torch.equal(train.images, dataset(num_train=400, num_test=100).images)
    assert not torch.equal(train.images[:100], dataset("test", num_train=400, num_test=100).images)
    # The test split does not depend on the size of the training split.
    assert torch.equal(dataset("test", num_train=50, num_test=100).images,
                       dataset("test", num_train=400, num_test=100).images)


def test_each_shape_kind_has_its_geometry():
    images, labels = make_shapes(400, 16, np.random.default_rng(0))
    images = images[:, 0]
    horizontal, vertical = images[labels == 1], images[labels == 2]
    assert np.allclose(horizontal, horizontal[:, :, :1])  # constant along each row
    assert np.allclose(vertical, vertical[:, :1, :])  # constant along each column
    for cross in images[labels == 3]:  # a full row and a full column
        assert (cross.min(axis=1) > 0.5).any() and (cross.min(axis=0) > 0.5).any()
    for diagonal in images[labels == 0]:  # invariant along one of the diagonals (away from the edges)
        down = np.allclose(diagonal[1:, 1:], diagonal[:-1, :-1])
        up = np.allclose(diagonal[1:, :-1], diagonal[:-1, 1:])
        assert down or up
    assert all(img.sum() > 10 for img in images)  # every image has a visible line


def test_digits_split_is_fixed_and_matches_sklearn():
    from sklearn.datasets import load_digits

    train, test = dataset(name="digits"), dataset("test", name="digits")
    assert (len(train), len(test)) == (1500, 297)
    assert train.image_shape == (1, 8, 8) and train.num_classes == 10
    assert train.images.max() == 1.0 and train.images.min() == 0.0
    reference = {bytes(img.astype(np.uint8)) for img in load_digits().images}
    assert all(bytes((img[0].numpy() * 16).round().astype(np.uint8)) in reference for img in test.images[:20])
    assert torch.equal(test.images, dataset("test", name="digits").images)


def _write_folder(root):
    rng = np.random.default_rng(0)
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "nested").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / "cats" / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), "RGBA").save(root / "dogs" / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (12, 12), dtype=np.uint16)).save(root / "dogs" / "deep.png")
    Image.fromarray(rng.integers(0, 255, (9, 9), dtype=np.uint8)).convert("P").save(root / "dogs" / "nested" / "p.gif")
    Image.fromarray(rng.integers(0, 255, (50, 20, 3), dtype=np.uint8)).save(root / "dogs" / "photo.jpg")
    (root / "dogs" / "corrupt.png").write_bytes(b"this is not a png")
    good = root / "cats" / "0.png"
    (root / "dogs" / "truncated.jpg").write_bytes((root / "dogs" / "photo.jpg").read_bytes()[:200])
    (root / "notes.txt").write_text("ignored: not an image extension")
    return good


def read_all(data):
    """Every example of a lazy dataset, read once: (images, labels)."""
    return data.__getitems__(list(range(len(data))))


def test_folder_converts_odd_images_skips_bad_ones_and_labels_from_subfolders(tmp_path, caplog):
    _write_folder(tmp_path / "imgs")
    train = dataset(name="folder", path=tmp_path / "imgs", image_size=8, test_fraction=0.25)
    test = dataset("test", name="folder", path=tmp_path / "imgs", image_size=8, test_fraction=0.25)
    assert len(train) + len(test) == 10  # every file with an image extension; read when asked for
    assert train.image_shape == (1, 8, 8)
    assert train.class_names == ["cats", "dogs"]
    with caplog.at_level(logging.WARNING, logger="vaekit"):
        images, labels = read_all(train)
        read_all(test)
    skipped = sorted(name.rsplit("/", 1)[-1] for name, _ in train.skipped + test.skipped)
    assert skipped == ["corrupt.png", "truncated.jpg"]
    assert "skipped dogs/corrupt.png" in caplog.text or "skipped dogs/truncated.jpg" in caplog.text
    # A bad file's place is taken by the next readable one, label included: no example is lost or made up.
    assert images.shape == (len(train), 1, 8, 8) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    by_position = {k: train.example(k) for k in range(len(train))}
    for k, (array, position) in by_position.items():
        assert int(labels[k]) == int(train.labels[position])
        assert np.array_equal(array, by_position[position][0])
    rgb = dataset(name="folder", path=tmp_path / "imgs", image_size=8, grayscale="false")
    assert rgb.image_shape == (3, 8, 8) and rgb[0][0].shape == (3, 8, 8)


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(3):
        Image.new("L", (5, 5), i * 50).save(tmp_path / f"{i}.png")
    data = dataset(name="folder", path=tmp_path, image_size=4)
    assert not data.has_labels and (data.labels == -1).all()


def test_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.path is required"):
        dataset(name="folder")
    with pytest.raises(VaekitError, match="is not a folder of images"):
        dataset(name="folder", path=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VaekitError, match="has no image files"):
        dataset(name="folder", path=tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "bad" / name).write_bytes(b"garbage")
    bad = dataset(name="folder", path=tmp_path / "bad", test_fraction=0.5)
    with pytest.raises(VaekitError, match=r"none of the 1 images of folder:.*bad/train can be read \(1 skipped"):
        bad[0]


def test_odd_modes_convert_to_8_bit():
    from vaekit.data.transforms import to_mode

    transparent = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(to_mode(transparent, grayscale=False)).min() == 255  # composited onto white
    deep = Image.fromarray(np.full((3, 3), 65535, dtype=np.uint16))
    assert np.asarray(to_mode(deep, grayscale=True)).min() == 255  # 16-bit full scale -> 255
    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))
    assert to_mode(cmyk, grayscale=False).mode == "RGB"


def _hf_folder(tmp_path, count=10, bad=(10,), size=(12, 18)):
    import io

    import datasets

    rng = np.random.default_rng(0)
    rows = []
    for i in range(count + len(bad)):
        if i in bad:
            rows.append({"bytes": b"not an image", "path": None})
            continue
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, format="PNG")
        rows.append({"bytes": buffer.getvalue(), "path": None})
    table = datasets.Dataset.from_dict(
        {"img": rows, "label": [i % 2 for i in range(len(rows))]},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}))
    table.save_to_disk(str(tmp_path / "ds"))
    return tmp_path / "ds"


def test_hugging_face_dataset_from_a_local_folder(tmp_path, caplog):
    path = _hf_folder(tmp_path)
    common = dict(name="hf", path=path, image_column="img", label_column="label", image_size=8, test_fraction=0.2)
    train, test = dataset(**common), dataset("test", **common)
    assert len(train) + len(test) == 11 and len(test) == 2
    assert train.image_shape == (3, 8, 8) and train.class_names == ["a", "b"]
    with caplog.at_level(logging.WARNING, logger="vaekit"):
        read_all(train), read_all(test)
    assert [name for name, _ in train.skipped + test.skipped] == ["train[10]"]
    assert "skipped train[10]" in caplog.text
    with pytest.raises(VaekitError, match="has no column 'image'"):
        dataset(name="hf", path=path)
    with pytest.raises(VaekitError, match="no such dataset folder"):
        dataset(name="hf", path=tmp_path / "nothing-here")
    (tmp_path / "not-a-dataset").mkdir()
    (tmp_path / "not-a-dataset" / "notes.txt").write_text("hello")
    with pytest.raises(VaekitError, match="has no column 'img'; its columns are text"):
        dataset(name="hf", path=tmp_path / "not-a-dataset", image_column="img")  # datasets read it as text


def _photo_folder(root, count=8, size=(50, 70)):
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size[0] + i, size[1], 3), dtype=np.uint8)).save(root / "sub" / f"{i}.jpg")
    return root


def test_folder_crops_are_new_every_epoch_and_the_same_for_the_same_epoch(tmp_path, caplog):
    root = _photo_folder(tmp_path / "p")
    Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(root / "tiny.png")
    (root / "broken.png").write_bytes(b"\x89PNG broken")
    common = dict(name="folder-crops", path=root, crop_size=32, short_side="null", test_fraction=0.3)
    train, test = dataset(small_images="skip", **common), dataset("test", small_images="skip", **common)
    assert len(train) + len(test) == 10 and test.image_shape == (3, 32, 32)
    with caplog.at_level(logging.WARNING, logger="vaekit"):
        first, _ = read_all(train)
        read_all(test)
    assert sorted(name for name, _ in train.skipped + test.skipped) == ["broken.png", "tiny.png"]
    again, _ = read_all(train)
    train.set_epoch(1)
    later, _ = read_all(train)
    assert torch.equal(first, again) and not torch.equal(first, later)
    # Each example is a crop of its own file (a uniform random position, a random flip).
    positions = {k: train.example(k)[1] for k in range(len(train))}
    assert len(set(positions.values())) == len(train) - sum(p != k for k, p in positions.items())
    upscaled = dataset(small_images="upscale", **common)
    assert read_all(upscaled)[0].shape == (len(upscaled), 3, 32, 32)


def test_crop_positions_are_uniform_and_flips_are_half():
    from vaekit.data.transforms import CropSpec, example_draws, place_crop

    assert example_draws(3, 1, 7) == example_draws(3, 1, 7)
    assert len({example_draws(3, epoch, 7) for epoch in range(50)} | {example_draws(s, 1, 7) for s in range(50)}) == 99
    spec = CropSpec(4, random=True, flip=True)
    places = [place_crop(10, 7, spec, example_draws(0, 0, k)) for k in range(4000)]
    tops, lefts = np.bincount([p.top for p in places]), np.bincount([p.left for p in places])
    assert len(tops) == 7 and len(lefts) == 4  # every valid position, none outside
    assert tops.min() > 0.8 * 4000 / 7 and lefts.min() > 0.8 * 4000 / 4
    assert abs(np.mean([p.flip for p in places]) - 0.5) < 0.03
    centre = place_crop(10, 7, CropSpec(4), None)
    assert (centre.top, centre.left, centre.flip) == (3, 1, False)


def test_large_jpegs_are_decoded_at_a_reduced_scale_with_the_same_result(tmp_path):
    from vaekit.data.transforms import CropSpec, crop_picture

    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).resize((1600, 1200)))
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    spec = CropSpec(64, short_side=150)
    with Image.open(tmp_path / "big.jpg") as image:
        drafted = crop_picture(image, spec, None)
        assert image.size[0] < 1600  # decoded at 1/4 or 1/8 of the size
    with Image.open(tmp_path / "big.jpg") as image:
        image.load()
        full = np.asarray(image.resize((200, 150), Image.Resampling.BICUBIC).crop((68, 43, 132, 107)))
    assert drafted.shape == (64, 64, 3)
    assert np.abs(drafted.astype(float) - full).mean() < 2.0


def test_any_number_of_loader_workers_gives_the_same_batches_and_resume_starts_mid_epoch(tmp_path):
    from vaekit.data import TrainingBatches

    train = dataset(name="folder-crops", path=_photo_folder(tmp_path / "p", count=12), crop_size=32, short_side=48,
                    test_fraction=0.1)
    batches = [[x for x, _ in TrainingBatches(train, 4, seed=3, num_workers=workers).epoch(1)] for workers in (0, 2)]
    assert len(batches[0]) == 3 and all(torch.equal(a, b) for a, b in zip(*batches))
    resumed = [x for x, _ in TrainingBatches(train, 4, seed=3).epoch(1, start_batch=1)]
    assert all(torch.equal(a, b) for a, b in zip(resumed, batches[0][1:]))
    # Two processes each take every other example of each global batch.
    halves = [[x for x, _ in TrainingBatches(train, 4, seed=3, num_processes=2, process_index=p).epoch(1)]
              for p in (0, 1)]
    for whole, first, second in zip(batches[0], *halves):
        assert torch.equal(whole[0::2], first) and torch.equal(whole[1::2], second)


def test_a_streamed_hugging_face_dataset_is_read_in_batches_never_whole(tmp_path, caplog):
    from vaekit.data import TrainingBatches
    from vaekit.data.streaming import StreamingImages

    path = _hf_folder(tmp_path, count=30, bad=(13,), size=(20, 24))
    common = dict(name="hf", path=path, image_column="img", label_column="label", image_size=16, flip="true",
                  streaming="true", test_images=5, shuffle_buffer=8)
    train, test = dataset(**common), dataset("test", **common)
    assert isinstance(train, StreamingImages) and len(train) == 31 - 5 and len(test) == 5
    assert train.class_names == ["a", "b"] and test.images.shape == (5, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger="vaekit"):
        epoch = [TrainingBatches(train, 8, seed=0, num_workers=w).epoch(2) for w in (0, 3)]
        single, threaded = list(epoch[0]), list(epoch[1])
    assert [len(x) for x, _ in single] == [8, 8, 8, 2]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(single, threaded))
    assert "cannot be read as an image" in caplog.text  # the bad row, replaced within its batch
    resumed = list(TrainingBatches(train, 8, seed=0).epoch(2, start_batch=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, single[2:]))
    other_epoch = list(TrainingBatches(train, 8, seed=0).epoch(3))
    assert not torch.equal(other_epoch[0][0], single[0][0])  # reshuffled, new crops
    shares = [list(TrainingBatches(train, 8, seed=0, num_processes=2, process_index=p).epoch(2)) for p in (0, 1)]
    for whole, first, second in zip(single, *shares):
        assert torch.equal(whole[0][0::2], first[0]) and torch.equal(whole[0][1::2], second[0])


def test_a_stream_of_unknown_length_needs_max_images(tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    for i in range(6):
        Image.fromarray(np.full((20, 20, 3), i * 40, dtype=np.uint8)).save(root / f"{i}.png")
    common = dict(name="hf", path=root, streaming="true", test_images=2, image_size=8)
    with pytest.raises(VaekitError, match=r"does not say how many rows its 'train' split has.*set data.max_images"):
        dataset(**common)
    capped = dataset(max_images=3, **common)
    assert len(capped) == 3
    assert [len(x) for x, _ in capped.batches(epoch=0, start_batch=0, batch_size=2)] == [2, 1]


def _odd_folder(root):
    """Images in the modes a photo folder holds: RGB JPEG, grayscale, palette, RGBA and 16-bit PNGs."""
    rng = np.random.default_rng(1)
    root.mkdir()
    smooth = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((160, 120))
    smooth.save(root / "a.jpg", quality=90)
    smooth.convert("L").save(root / "b.png")
    smooth.convert("P").save(root / "c.png")
    smooth.convert("RGBA").save(root / "d.png")
    Image.fromarray(rng.integers(0, 65535, (90, 70), dtype=np.uint16)).save(root / "e.png")
    return root


@pytest.mark.parametrize("spec", [dict(name="folder-crops", crop_size=32, short_side=48),
                                  dict(name="folder-crops", crop_size=40, short_side="null"),
                                  dict(name="folder", image_size=24, grayscale=True),
                                  dict(name="folder", image_size=24, grayscale=False)])
def test_cached_images_give_the_same_pixels_and_spare_the_files(tmp_path, spec):
    root = _odd_folder(tmp_path / "p")
    common = dict(path=root, test_fraction=0.2, **spec)
    cached, plain = dataset(**common), dataset(cache="false", **common)
    for epoch in (0, 3):
        cached.set_epoch(epoch), plain.set_epoch(epoch)
        assert torch.equal(read_all(cached)[0], read_all(plain)[0])
    for path in root.iterdir():  # every training image is in memory now: the files are not read again
        path.unlink()
    cached.set_epoch(4)
    assert read_all(cached)[0].shape[0] == len(cached) and not cached.skipped


def test_the_cache_keeps_what_fits_its_budget_and_decodes_the_rest(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "p").mkdir()
    for i in range(3):  # 400 × 400 × 3 bytes each: two fit in 1 MiB, the third does not
        Image.fromarray(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(tmp_path / "p" / f"{i}.png")
    train = dataset(name="folder-crops", path=tmp_path / "p", test_path=tmp_path / "p", crop_size=32, cache_mb=1)
    read_all(train)
    assert train.source.cached_bytes == 2 * 400 * 400 * 3
    for path in (tmp_path / "p").iterdir():
        path.unlink()
    train.set_epoch(1)
    read_all(train)
    assert len(train.skipped) == 1  # the one image beyond the budget is read from its file, now gone


def test_folder_crops_take_several_crops_per_image_and_a_separate_test_folder(tmp_path):
    train_root, test_root = _photo_folder(tmp_path / "train", count=5), _photo_folder(tmp_path / "test", count=3)
    common = dict(name="folder-crops", path=train_root, test_path=test_root, crop_size=32, crops_per_image=4)
    train, test = dataset(**common), dataset("test", **common)
    assert len(train) == 20 and len(test) == 3  # every file of path trains; test_path is the test split
    assert np.bincount(train.items).tolist() == [4] * 5
    crops = read_all(train)[0].reshape(5, 4, -1)  # four different crops of each image (their order is items')
    assert all(len({c.numpy().tobytes() for c in image}) == 4 for image in crops)
    assert test.name.startswith(f"folder-crops:{test_root}")
    with pytest.raises(ConfigError, match="crops_per_image must be at least 1"):
        dataset(name="folder-crops", path=train_root, crops_per_image=0)
