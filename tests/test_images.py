"""The user's own images: folders, arrays, tensors and torchvision data sets, and every way
they can be wrong."""

import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from pyrovae.data import ImageData, load_images, pixel_levels
from pyrovae.errors import DataError
from pyrovae.images import find_images, images_for_model, read_array, read_images


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode=mode).save(path)
    return path


def _colour(seed, size=(12, 10)):
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


def test_class_folders_give_labels_and_pixels_are_exact(tmp_path):
    for i in range(6):
        _save(tmp_path / ("cats" if i % 2 else "dogs") / f"{i}.png", _colour(i))
    (tmp_path / "README.txt").write_text("not an image")
    data = load_images(tmp_path, test_fraction=0.34)
    assert data.classes == ["cats", "dogs"]
    assert data.image_shape == (3, 12, 10)
    assert len(data.train_images) + len(data.test_images) == 6 and len(data.test_images) == 2
    assert data.levels == 256
    files = find_images(tmp_path)
    assert [p.name for p in files.skipped] == ["README.txt"]
    assert files.labels == [0 if int(p.stem) % 2 else 1 for p in files.paths]  # cats (odd) sort first
    # The decoded pixels are the file's pixels, channels first, scaled by 1/255.
    first = read_images(files.paths[:1])[0]
    expected = torch.from_numpy(_colour(int(files.paths[0].stem))).permute(2, 0, 1).float() / 255
    assert torch.equal(first, expected)


def test_flat_folder_has_no_classes_and_notes_what_was_skipped(tmp_path):
    for i in range(4):
        _save(tmp_path / f"{i}.png", _colour(i))
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"junk")  # hidden files are not read
    data = load_images(tmp_path, test_fraction=0.25)
    assert data.classes is None
    assert set(data.train_labels.tolist()) == {0}
    assert any("skipped 1 file" in note and "notes.md" in note for note in data.notes)
    assert any("held out 1 of 4" in note for note in data.notes)


def test_transparency_is_composited_on_white_not_cut_off(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red ...
    rgba[0, :, 3] = 0  # ... fully transparent in the first row
    rgba[1, :, 3] = 255  # opaque in the second
    rgba[2:, :, 3] = 128  # half transparent below
    images = read_images([_save(tmp_path / "a.png", rgba, "RGBA")])
    assert images.shape == (1, 3, 4, 4)
    assert torch.allclose(images[0, :, 0], torch.ones(3, 4))  # white
    assert torch.allclose(images[0, :, 1], torch.tensor([1.0, 0, 0]).view(3, 1).expand(3, 4))
    assert torch.allclose(images[0, 1, 2], torch.full((4,), 127 / 255), atol=1.5 / 255)  # green: half white


def test_palette_image_with_transparency(tmp_path):
    image = Image.new("P", (3, 3), 0)
    image.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    assert torch.allclose(read_images([tmp_path / "p.png"]), torch.ones(1, 3, 3, 3))


def test_16_bit_grey_keeps_its_levels(tmp_path):
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(tmp_path / "deep.png")
    images = read_images([tmp_path / "deep.png"])
    assert images.shape == (1, 1, 1, 3)
    assert torch.allclose(images.flatten(), torch.tensor([0, 128, 255]) / 255)


def test_grey_among_colour_images_becomes_colour_and_grayscale_converts(tmp_path):
    grey = _save(tmp_path / "g.png", np.full((5, 5), 100), "L")
    colour = _save(tmp_path / "c.png", np.full((5, 5, 3), [255, 0, 0]))
    both = read_images([grey, colour])
    assert both.shape == (2, 3, 5, 5) and torch.allclose(both[0], torch.full((3, 5, 5), 100 / 255))
    grey_both = read_images([grey, colour], grayscale=True)
    assert grey_both.shape == (2, 1, 5, 5)
    assert abs(grey_both[1].mean().item() - 76 / 255) < 2 / 255  # ITU-R 601: 0.299 * 255


def test_mixed_sizes_need_image_size(tmp_path):
    _save(tmp_path / "small.png", _colour(0, (8, 8)))
    _save(tmp_path / "wide.png", _colour(1, (10, 20)))
    with pytest.raises(DataError, match=r"differ in size.*8x8.*10x20.*--image-size"):
        load_images(tmp_path)
    data = load_images(tmp_path, image_size=6, test_fraction=0.5)
    assert data.image_shape == (3, 6, 6)
    assert data.levels == 256  # resized on uint8: still 8-bit
    assert any("resized to 6x6" in note for note in data.notes)


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "holds no image files"),
    (lambda d: (d / "a.txt").write_text("x"), r"holds no image files \(only 1 other files, such as a.txt\)"),
])
def test_empty_folder(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DataError, match=message):
        load_images(tmp_path)


def test_truncated_and_fake_images_are_named_and_refused_when_strict(tmp_path):
    good = _save(tmp_path / "good.png", _colour(0))
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png cannot be read"):
        load_images(tmp_path, strict=True)
    (tmp_path / "cut.png").unlink()
    (tmp_path / "fake.jpg").write_text("this is text")
    with pytest.raises(DataError, match=r"fake\.jpg cannot be read"):
        load_images(tmp_path, strict=True)


def test_unreadable_images_are_skipped_with_a_count_and_names(tmp_path):
    """One broken file among many does not end the run before it starts: it is left out, and
    the notes say how many and which."""
    for i in range(6):
        _save(tmp_path / f"good{i}.png", _colour(i))
    data = _save(tmp_path / "good0.png", _colour(0)).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # header fine, pixels cut
    (tmp_path / "fake.jpg").write_text("this is text")  # no header at all
    loaded = load_images(tmp_path, test_fraction=0.5)
    assert len(loaded.train_pixels) + len(loaded.test_pixels) == 6
    note = next(note for note in loaded.notes if "cannot be read" in note)
    assert note.startswith("skipped 2 image file(s)") and "cut.png" in note and "fake.jpg" in note


def _png_claiming(width, height):
    """A valid 1x1 PNG whose header then claims ``width`` x ``height`` pixels."""
    import io

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    raw = bytearray(buffer.getvalue())
    start = raw.index(b"IHDR")
    raw[start + 4:start + 12] = struct.pack(">II", width, height)
    raw[start + 17:start + 21] = struct.pack(">I", zlib.crc32(bytes(raw[start:start + 17])))
    return bytes(raw)


@pytest.mark.parametrize("side", [9000, 30000])  # above pyrovae's limit; above Pillow's own
def test_decompression_bomb_is_refused_before_decoding(tmp_path, side):
    (tmp_path / "bomb.png").write_bytes(_png_claiming(side, side))
    with pytest.raises(DataError, match=r"bomb\.png .*decompression bomb"):
        load_images(tmp_path)


def test_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x_train=x, y_train=np.arange(20) % 3, x_test=x[:5], y_test=np.arange(5))
    data = load_images(tmp_path / "a.npz")
    assert data.image_shape == (3, 8, 8) and len(data.train_images) == 20 and len(data.test_images) == 5
    assert torch.equal(data.train_images[3], torch.from_numpy(x[3]).permute(2, 0, 1).float() / 255)
    assert data.train_labels.tolist() == (np.arange(20) % 3).tolist()
    np.save(tmp_path / "grey.npy", rng.random((10, 6, 6)).astype(np.float32))
    grey = load_images(tmp_path / "grey.npy", test_fraction=0.2)
    assert grey.image_shape == (1, 6, 6) and len(grey.test_images) == 2 and grey.levels is None


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 5), np.uint8), r"shape \(4, 5\); images must be"),
    (np.zeros((4, 5, 5, 2), np.uint8), r"C = 1, 3 or 4"),
    (np.zeros((4, 5, 5), np.int32), "holds int32 values"),
    (np.full((4, 5, 5), 2.0, np.float32), r"outside \[0, 1\]"),
    (np.full((4, 5, 5), np.nan, np.float32), r"outside \[0, 1\]"),
    (np.zeros((0, 5, 5), np.uint8), "holds no images"),
])
def test_bad_arrays(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DataError, match=message):
        load_images(tmp_path / "x.npy")


def test_bad_array_files(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 3, 3)), b=np.zeros((2, 3, 3)))
    with pytest.raises(DataError, match="holds arrays a, b; name the images"):
        read_array(tmp_path / "two.npz")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="not a readable .npy/.npz file"):
        read_array(tmp_path / "junk.npy")
    np.savez(tmp_path / "labels.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.array([0.5, 1, 2]))
    with pytest.raises(DataError, match="one integer label per image"):
        read_array(tmp_path / "labels.npz")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="neither a folder of images nor a .npy/.npz array"):
        load_images(tmp_path / "x.csv")


def test_from_tensor_split_is_seeded_and_stated():
    images = torch.rand(50, 3, 7, 9)
    a, b = ImageData.from_tensor(images), ImageData.from_tensor(images)
    assert torch.equal(a.test_images, b.test_images) and len(a.test_images) == 5
    assert not any(torch.equal(t, x) for t in a.test_images for x in a.train_images)
    assert "held out 5 of 50 images (10%, seed 0)" in a.notes[0]
    pixels = (images * 255).round().to(torch.uint8)
    uint8 = ImageData.from_tensor(pixels, pixels[:3])
    assert uint8.levels == 256 and len(uint8.test_images) == 3
    with pytest.raises(DataError, match="shape"):
        ImageData.from_tensor(images, torch.rand(3, 1, 7, 9))
    with pytest.raises(DataError, match="one integer label per image"):
        ImageData.from_tensor(images, train_labels=torch.zeros(3, dtype=torch.long))


def test_from_torchvision_dataset():
    from torchvision.datasets import FakeData

    data = ImageData.from_dataset(FakeData(size=20, image_size=(3, 9, 11), num_classes=4),
                                  FakeData(size=6, image_size=(3, 9, 11), num_classes=4, random_offset=7))
    assert data.image_shape == (3, 9, 11) and len(data.train_images) == 20 and len(data.test_images) == 6
    assert data.levels == 256 and int(data.train_labels.max()) < 4


@settings(max_examples=60, deadline=None)
@given(count=st.integers(2, 400), fraction=st.floats(0.001, 0.999))
def test_split_partitions_the_images(count, fraction):
    images = torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1) / count
    data = ImageData.from_tensor(images, test_fraction=fraction)
    together = torch.cat([data.train_images, data.test_images]).flatten().sort().values
    assert torch.equal(together, images.flatten())
    held_out = len(data.test_images)
    assert 1 <= held_out <= count - 1
    if 1 < held_out < count - 1:  # not clamped: the stated fraction, rounded
        assert abs(held_out - fraction * count) <= 0.5 + 1e-9


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=64))
def test_pixel_levels(values):
    pixels = torch.tensor(values, dtype=torch.float32) / 255
    expected = 2 if set(values) <= {0, 255} else 256
    assert pixel_levels(pixels) == expected
    assert pixel_levels(torch.cat([pixels, torch.tensor([0.3 / 255])])) is None


def test_images_for_model_resizes_and_converts(tmp_path):
    colour = _save(tmp_path / "c.png", _colour(0, (30, 40)))
    images, names, notes = images_for_model([colour], (1, 10, 10))
    assert images.shape == (1, 1, 10, 10) and names == [str(colour)]
    assert "resized to the model's 10x10" in notes[0]
    np.save(tmp_path / "x.npy", np.zeros((3, 10, 10), np.uint8))
    images, names, notes = images_for_model([tmp_path / "x.npy"], (3, 10, 10))
    assert images.shape == (3, 3, 10, 10) and names[2] == "x.npy[2]" and not notes
