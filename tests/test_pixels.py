"""How images are stored: uint8 where that keeps every value, memory-mapped files read where
indexed, and floats made per batch exactly as the images always were."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pyrovae.data import ImageData
from pyrovae.pixels import MappedImages, compact, pixel_levels, to_unit, value_range


def test_eight_bit_floats_are_stored_as_bytes_and_come_back_bit_for_bit(mnist5k):
    assert mnist5k.train_pixels.dtype == torch.uint8
    floats = mnist5k.train_pixels.float() / 255  # what the images were as float32
    assert torch.equal(to_unit(mnist5k.train_pixels), floats)
    assert torch.equal(mnist5k.train_images, floats)
    assert mnist5k.train_pixels.element_size() * 4 == floats.element_size()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=64), st.floats(0, 1), st.booleans())
def test_compact_never_changes_a_value(levels, other, perturb):
    """uint8 only when every float comes back exactly; anything else stays float32."""
    images = torch.tensor(levels, dtype=torch.float32).div(255).reshape(-1, 1, 1, 1)
    if perturb:
        images = torch.cat([images, torch.tensor([other]).reshape(1, 1, 1, 1)])
    stored = compact(images)
    assert torch.equal(to_unit(stored), images)
    if not perturb:
        assert stored.dtype == torch.uint8


def test_float64_models_see_the_float32_pixels_they_always_saw():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(-1, 1, 1, 1)
    assert torch.equal(to_unit(pixels, torch.float64), (pixels.float() / 255).double())


def test_pixel_levels_of_bytes():
    assert pixel_levels(torch.tensor([0, 255], dtype=torch.uint8)) == 2
    assert pixel_levels(torch.tensor([0, 3, 255], dtype=torch.uint8)) == 256


def test_mapped_images_read_only_what_is_indexed(tmp_path):
    array = np.arange(5 * 4 * 3 * 2, dtype=np.uint8).reshape(5, 4, 3, 2)[..., :1].repeat(3, -1)  # (5, 4, 3, 3)
    np.save(tmp_path / "a.npy", array)
    mapped = MappedImages(np.load(tmp_path / "a.npy", mmap_mode="r"), tmp_path / "a.npy")
    expected = torch.from_numpy(array).permute(0, 3, 1, 2)
    assert mapped.shape == expected.shape and mapped.dtype == torch.uint8 and len(mapped) == 5
    assert torch.equal(mapped[torch.tensor([3, 1])], expected[[3, 1]])
    assert torch.equal(mapped[1:3], expected[1:3])
    assert torch.equal(mapped.load(), expected)
    view = mapped.take(torch.tensor([4, 0, 2]))
    assert torch.equal(view.load(), expected[[4, 0, 2]])
    assert torch.equal(view[torch.tensor([1])], expected[[0]])
    assert torch.equal(torch.cat(list(view.split(2))), expected[[4, 0, 2]])
    chunk = mapped[0:2]
    chunk += 1  # a copy, never the file
    assert torch.equal(mapped[0:2], expected[0:2])


def test_value_range_reads_by_chunk_and_sees_nan():
    assert value_range(torch.tensor([[0.25, 0.5]])) == (0.25, 0.5)
    assert value_range(torch.tensor([3, 200], dtype=torch.uint8)) == pytest.approx((3 / 255, 200 / 255))
    low, high = value_range(torch.tensor([0.1, float("nan")]))
    assert np.isnan(low) and np.isnan(high)


def test_image_data_keeps_its_old_float_view_and_replace(mnist5k):
    data = mnist5k.replace(train_images=mnist5k.train_images[:100])
    assert data.train_pixels.dtype == torch.uint8 and len(data.train_images) == 100
    assert data.train_images.dtype == torch.float32 and data.train_images.max() <= 1
    floats = ImageData("x", "memory", torch.rand(10, 1, 2, 2), torch.zeros(10), torch.rand(4, 1, 2, 2), torch.zeros(4))
    assert floats.train_pixels.dtype == torch.float32 and floats.levels is None


@pytest.mark.parametrize("count", [0, 3])
def test_with_validation_of_a_mapped_set_stays_mapped(tmp_path, count):
    np.save(tmp_path / "a.npy", np.random.default_rng(0).integers(0, 256, (20, 4, 4), dtype=np.uint8))
    from pyrovae.data import load_images

    data = load_images(tmp_path / "a.npy", test_fraction=0.25)
    assert data.mapped and isinstance(data.test_pixels, MappedImages)
    if count:
        held = data.with_validation(count)
        assert isinstance(held.train_pixels, MappedImages) and len(held.validation_pixels) == count
        assert len(held.train_pixels) == len(data.train_pixels) - count


def test_assigning_float_images_stores_them_compactly(mnist5k):
    data = mnist5k.replace()
    data.train_images = mnist5k.train_images[:10]
    assert data.train_pixels.dtype == torch.uint8 and len(data.train_images) == 10
    data.test_images = torch.full((3, 1, 28, 28), 0.3)
    assert data.test_pixels.dtype == torch.float32 and data.levels is None
