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


def test_folder_converts_odd_images_skips_bad_ones_and_labels_from_subfolders(tmp_path, caplog):
    _write_folder(tmp_path / "imgs")
    with caplog.at_level(logging.WARNING, logger="vaekit"):
        train = dataset(name="folder", path=tmp_path / "imgs", image_size=8, test_fraction=0.25)
    test = dataset("test", name="folder", path=tmp_path / "imgs", image_size=8, test_fraction=0.25)
    assert len(train) + len(test) == 8
    assert train.image_shape == (1, 8, 8)
    assert train.class_names == ["cats", "dogs"]
    assert sorted(name.rsplit("/", 1)[-1] for name, _ in train.skipped) == ["corrupt.png", "truncated.jpg"]
    assert "skipped 2 of 10 files" in caplog.text
    x, label = train[0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    rgb = dataset(name="folder", path=tmp_path / "imgs", image_size=8, grayscale="false")
    assert rgb.image_shape == (3, 8, 8)


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
    (tmp_path / "bad" / "a.png").write_bytes(b"garbage")
    with pytest.raises(VaekitError, match=r"has 0 readable image\(s\) \(1 skipped\)"):
        dataset(name="folder", path=tmp_path / "bad")


def test_odd_modes_convert_to_8_bit():
    from vaekit.data.folder import to_mode

    transparent = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(to_mode(transparent, grayscale=False)).min() == 255  # composited onto white
    deep = Image.fromarray(np.full((3, 3), 65535, dtype=np.uint16))
    assert np.asarray(to_mode(deep, grayscale=True)).min() == 255  # 16-bit full scale -> 255
    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))
    assert to_mode(cmyk, grayscale=False).mode == "RGB"


def test_hugging_face_dataset_from_a_local_folder(tmp_path, caplog):
    datasets = pytest.importorskip("datasets")
    import io

    rng = np.random.default_rng(0)
    good = []
    for i in range(10):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (12, 18, 3), dtype=np.uint8)).save(buffer, format="PNG")
        good.append({"bytes": buffer.getvalue(), "path": None})
    rows = good + [{"bytes": b"not an image", "path": None}]
    table = datasets.Dataset.from_dict(
        {"img": rows, "label": [i % 2 for i in range(11)]},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}))
    table.save_to_disk(str(tmp_path / "ds"))
    with caplog.at_level(logging.WARNING, logger="vaekit"):
        train = dataset(name="hf", path=tmp_path / "ds", image_column="img", label_column="label", image_size=8,
                        test_fraction=0.2)
    test = dataset("test", name="hf", path=tmp_path / "ds", image_column="img", label_column="label", image_size=8,
                   test_fraction=0.2)
    assert len(train) + len(test) == 10 and len(test) == 2
    assert train.image_shape == (3, 8, 8) and train.class_names == ["a", "b"]
    assert len(train.skipped) == 1 and "skipped 1 of 11" in caplog.text
    with pytest.raises(VaekitError, match="has no column 'image'"):
        dataset(name="hf", path=tmp_path / "ds")
    with pytest.raises(VaekitError, match="no such dataset folder"):
        dataset(name="hf", path=tmp_path / "nothing-here")
    (tmp_path / "not-a-dataset").mkdir()
    (tmp_path / "not-a-dataset" / "notes.txt").write_text("hello")
    with pytest.raises(VaekitError, match="has no column 'img'; its columns are text"):
        dataset(name="hf", path=tmp_path / "not-a-dataset", image_column="img")  # datasets read it as text


def test_folder_crops_for_image_autoencoders(tmp_path, caplog):
    rng = np.random.default_rng(0)
    (tmp_path / "p" / "sub").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (50 + i, 70, 3), dtype=np.uint8)).save(tmp_path / "p" / "sub" / f"{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "p" / "tiny.png")
    (tmp_path / "p" / "broken.png").write_bytes(b"\x89PNG broken")
    common = dict(name="folder-crops", path=tmp_path / "p", crop_size=32, short_side="null", test_fraction=0.3)
    with caplog.at_level(logging.WARNING, logger="vaekit"):
        train = dataset(num_train=20, small_images="skip", **common)
    test = dataset("test", small_images="skip", **common)
    assert train.images.shape == (20, 3, 32, 32) and test.image_shape == (3, 32, 32)
    assert any("broken.png" in name for name, _ in train.skipped)
    upscaled = dataset(num_train=5, small_images="upscale", **common)
    assert len(upscaled) == 5
    # Random crops from a fixed seed: the same crops every time.
    assert torch.equal(train.images, dataset(num_train=20, small_images="skip", **common).images)
