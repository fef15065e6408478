"""Decoded folders and converted arrays are cached on disk, memory-mapped, rebuilt when their
source changes or the cache is damaged, never half-written, and a full disk loses nothing."""

import errno
import multiprocessing
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from pyrovae import cache as cache_module
from pyrovae.data import cache_dir, load_images
from pyrovae.errors import DataError
from pyrovae.pixels import MappedImages


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_CACHE_DIR", str(tmp_path / "cache"))


def _folder(root, count=12, size=(10, 8), seed=0):
    rng = np.random.default_rng(seed)
    for i in range(count):
        (root / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        image.save(root / ("a" if i % 2 else "b") / f"{i}.png")
    return root


def _caches():
    return sorted(p.name for p in cache_dir().glob("*.npy"))


def _no_partial_files():
    return not [p for p in cache_dir().glob(".*") if p.suffix == ".part"]


def test_a_folder_is_decoded_once_then_memory_mapped(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "imgs")
    first = load_images(folder, test_fraction=0.25)
    assert first.mapped and isinstance(first.train_pixels, MappedImages)
    assert first.classes == ["a", "b"] and first.image_shape == (3, 10, 8)
    # the second load decodes nothing
    monkeypatch.setattr("pyrovae.images.decode_file", lambda *a, **k: pytest.fail("decoded again"))
    second = load_images(folder, test_fraction=0.25)
    assert torch.equal(second.train_images, first.train_images)
    assert torch.equal(second.train_labels, first.train_labels)
    # the pixels are the files' own
    expected = torch.from_numpy(np.array(Image.open(folder / "b" / "0.png"))).permute(2, 0, 1)
    everything = torch.cat([second.train_pixels.load(), second.test_pixels.load()])
    assert any(torch.equal(image, expected) for image in everything)


def test_options_that_change_pixels_have_caches_of_their_own(tmp_path):
    folder = _folder(tmp_path / "imgs")
    assert load_images(folder, image_size=6).image_shape == (3, 6, 6)
    assert load_images(folder, grayscale=True).image_shape == (1, 10, 8)
    assert load_images(folder).image_shape == (3, 10, 8)
    assert len([name for name in _caches() if name.startswith("imgs-")]) == 3


def test_a_changed_source_is_decoded_again_and_the_stale_cache_removed(tmp_path):
    folder = _folder(tmp_path / "imgs")
    load_images(folder)
    before = _caches()
    image = folder / "a" / "1.png"
    Image.fromarray(np.zeros((10, 8, 3), np.uint8)).save(image)
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))
    data = load_images(folder, test_fraction=0.5)
    after = _caches()
    assert len(after) == len(before) and after != before
    zeros = torch.zeros(3, 10, 8, dtype=torch.uint8)
    assert any(torch.equal(x, zeros) for x in torch.cat([data.train_pixels.load(), data.test_pixels.load()]))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "meta"])
def test_a_damaged_cache_is_rebuilt_with_a_note(tmp_path, damage):
    folder = _folder(tmp_path / "imgs")
    expected = load_images(folder).train_images
    (npy,) = [cache_dir() / name for name in _caches() if name.startswith("imgs-")]
    if damage == "truncate":
        with open(npy, "r+b") as f:
            f.truncate(npy.stat().st_size // 2)
    elif damage == "garbage":
        npy.write_bytes(b"not an array")
    else:
        npy.with_suffix(".json").write_text("{")
    data = load_images(folder)
    assert torch.equal(data.train_images, expected)
    assert any("rebuilt the damaged cache" in note for note in data.notes)


def _load_in_process(folder, queue):
    try:
        data = load_images(folder)
        queue.put(data.train_images.sum().item())
    except BaseException as error:  # pragma: no cover - reported to the parent
        queue.put(repr(error))


def test_two_processes_building_the_same_cache_both_end_with_it(tmp_path):
    folder = _folder(tmp_path / "imgs", count=60, size=(32, 32))
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_load_in_process, args=(folder, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert all(isinstance(r, float) for r in results) and results[0] == results[1], results
    assert len([n for n in _caches() if n.startswith("imgs-")]) == 1 and _no_partial_files()
    assert load_images(folder).train_images.sum().item() == results[0]


def test_a_full_disk_while_writing_keeps_nothing_and_says_so(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "imgs")

    def full(self, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module._Writer, "write", full)
    monkeypatch.setattr("pyrovae.data.available_host_memory", lambda: 0)  # too big to decode into memory
    with pytest.raises(DataError, match="filled up while the decoded images were written; nothing was kept"):
        load_images(folder)
    assert _no_partial_files() and not [n for n in _caches() if n.startswith("imgs-")]


def test_without_a_writable_cache_a_small_folder_is_decoded_into_memory(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "imgs")
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("Usage", (), {"free": 0})())
    data = load_images(folder, test_fraction=0.25)
    assert not data.mapped and data.train_pixels.dtype == torch.uint8
    assert any(note.startswith("decoded into memory") and "free space" in note for note in data.notes)


def test_an_npy_is_memory_mapped_where_it_is(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (30, 5, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", array)
    data = load_images(tmp_path / "x.npy", test_fraction=0.2)
    assert data.mapped and data.train_pixels.path == str(tmp_path / "x.npy") and not _caches()
    both = torch.cat([data.train_pixels.load(), data.test_pixels.load()])
    assert sorted(map(bytes, both.permute(0, 2, 3, 1).numpy())) == sorted(map(bytes, array))


def test_an_npy_that_must_be_converted_goes_through_the_cache(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 4), dtype=np.uint8)
    np.save(tmp_path / "rgba.npy", rgba)
    data = load_images(tmp_path / "rgba.npy", image_size=4)
    assert data.mapped and data.image_shape == (3, 4, 4)
    assert data.train_pixels.dtype == torch.float32  # alpha composited: values off the 8-bit grid
    assert any("converted into the cache" in note for note in data.notes)
    grey = load_images(tmp_path / "rgba.npy", grayscale=True)
    assert grey.image_shape == (1, 8, 8)


@pytest.mark.parametrize("shape, dtype, message", [
    ((4, 0, 0), np.uint8, "at least one pixel"),
    ((4, 5, 5), np.int16, "holds int16 values"),
    ((4, 5, 5, 2), np.uint8, "C = 1, 3 or 4"),
])
def test_an_npy_of_the_wrong_shape_or_type_is_one_sentence(tmp_path, shape, dtype, message):
    np.save(tmp_path / "x.npy", np.zeros(shape, dtype))
    with pytest.raises(DataError, match=message):
        load_images(tmp_path / "x.npy")


def test_a_truncated_npy_is_named(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((100, 8, 8), np.uint8))
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"x\.npy is truncated: its header describes more images"):
        load_images(tmp_path / "x.npy")
