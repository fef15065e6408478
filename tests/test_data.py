import gzip

import numpy as np
import pytest
import torch
from conftest import write_idx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyrovae.data import DEBIAN_FASHION_MNIST, DataFallbackWarning, binarize, load_dataset, read_idx
from pyrovae.errors import DataError


def test_read_idx_round_trip_plain_and_gzip(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for name in ("images", "images.gz"):
        path = write_idx(tmp_path / name, array)
        np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize(
    "content, message",
    [
        (gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 5]) + b"12345")[:-6], "damaged gzip"),
        (b"not gzip at all", "not gzip-compressed"),
    ],
)
def test_broken_gzip_is_named(tmp_path, content, message):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x00\x00", "too short"),
        (bytes([1, 2, 8, 3]) + b"\x00" * 12, "magic number"),
        (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\x00" * 4, "only unsigned bytes"),
        (bytes([0, 0, 8, 3, 0, 0]), "header"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 10]) + b"\x00" * 9, "truncated or corrupt"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 10]) + b"\x00" * 11, "truncated or corrupt"),
    ],
)
def test_malformed_idx_is_named(tmp_path, payload, message):
    path = tmp_path / "labels"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200), compress=st.booleans())
def test_fuzzed_bytes_give_arrays_or_data_errors(tmp_path, data, compress):
    path = tmp_path / "fuzz.gz"
    path.write_bytes(gzip.compress(data) if compress else data)
    try:
        array = read_idx(path)
    except DataError:
        return
    assert array.dtype == np.uint8 and array.size == int(np.prod(array.shape))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 10_000), value=st.integers(0, 255), cut=st.integers(0, 10_000))
def test_mutated_real_files_give_arrays_or_data_errors(tmp_path, position, value, cut):
    array = np.random.default_rng(0).integers(0, 256, (3, 28, 28))
    payload = bytearray(gzip.compress(bytes([0, 0, 8, 3]) + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                                      + array.astype(np.uint8).tobytes()))
    payload[position % len(payload)] = value
    path = tmp_path / "mutated.gz"
    path.write_bytes(bytes(payload[: len(payload) - cut % len(payload)]))
    try:
        result = read_idx(path)
    except DataError:
        return
    assert result.dtype == np.uint8


def test_load_folder_of_gzip_files(idx_folder):
    data = load_dataset("mnist", idx_folder)
    assert data.name == "mnist" and data.source == str(idx_folder)
    assert data.train_images.shape == (60, 1, 28, 28) and data.test_images.shape == (20, 1, 28, 28)
    assert data.train_images.dtype == torch.float32
    assert 0 <= data.train_images.min() and data.train_images.max() <= 1
    assert data.train_labels.dtype == torch.int64


def test_load_torchvision_layout(idx_folder, tmp_path):
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in idx_folder.iterdir():  # torchvision keeps them uncompressed
        (raw / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
    data = load_dataset("fashion-mnist", tmp_path / "root")
    assert data.source == str(raw) and len(data.train_images) == 60


def test_incomplete_folder_names_missing_file(idx_folder):
    (idx_folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", idx_folder)


def test_image_label_count_mismatch(idx_folder):
    write_idx(idx_folder / "train-labels-idx1-ubyte.gz", np.zeros(59))
    with pytest.raises(DataError, match="60 images but 59 labels"):
        load_dataset("mnist", idx_folder)


def test_wrong_image_size(idx_folder):
    write_idx(idx_folder / "train-images-idx3-ubyte.gz", np.zeros((60, 32, 32)))
    with pytest.raises(DataError, match=r"\(32, 32\)"):
        load_dataset("mnist", idx_folder)


def test_missing_and_empty_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nowhere")
    with pytest.raises(DataError, match="holds no mnist files"):
        load_dataset("mnist", tmp_path, download=False)


def test_unknown_dataset():
    with pytest.raises(DataError, match="mnist, fashion-mnist, mnist5k"):
        load_dataset("cifar")


def test_mnist_falls_back_to_mnist5k_offline(offline):
    with pytest.warns(DataFallbackWarning, match="mnist5k"):
        data = load_dataset("mnist")
    assert data.name == "mnist5k"


def test_fallback_can_be_refused(offline, tmp_path):
    with pytest.raises(DataError, match="no network"):
        load_dataset("mnist", fallback=False)
    with pytest.raises(DataError, match="no network"):  # only MNIST has a stand-in
        load_dataset("fashion-mnist", tmp_path)


def test_explicit_data_dir_never_falls_back(offline, tmp_path):
    with pytest.raises(DataError, match="no network"):
        load_dataset("mnist", tmp_path)


def test_mnist5k_split_is_balanced_and_disjoint(mnist5k):
    assert len(mnist5k.train_images) == 4000 and len(mnist5k.test_images) == 1000
    assert torch.bincount(mnist5k.test_labels).tolist() == [100] * 10
    assert torch.bincount(mnist5k.train_labels).tolist() == [400] * 10
    train = {tuple(x.flatten().tolist()) for x in mnist5k.train_images[:200]}
    assert not train & {tuple(x.flatten().tolist()) for x in mnist5k.test_images}
    assert 0 <= mnist5k.train_images.min() and mnist5k.train_images.max() == 1


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_is_found(monkeypatch, tmp_path):
    monkeypatch.setenv("PYROVAE_DATA_DIR", str(tmp_path))
    data = load_dataset("fashion-mnist")
    assert data.source == str(DEBIAN_FASHION_MNIST)
    assert (len(data.train_images), len(data.test_images)) == (60000, 10000)


def test_binarize_fixed_seed_is_reproducible_and_binary(mnist5k):
    images = mnist5k.test_images[:50]
    a, b = binarize(images, seed=0), binarize(images, seed=0)
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, binarize(images, seed=1))
    # The fraction of ones matches the grey levels.
    assert abs(a.mean().item() - images.mean().item()) < 0.01


def _emoji_tarball(path, names):
    """A stand-in for the npm package: emoji.json and a few 64x64 RGBA PNGs."""
    import io
    import json as json_module
    import tarfile

    from PIL import Image

    index = [{"image": names[0], "category": "Smileys & Emotion",
              "skin_variations": {"1F3FB": {"image": names[1]}}},
             {"image": names[2], "category": "Flags"}]
    with tarfile.open(path, "w:gz") as archive:
        def add(name, payload):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))

        add("package/emoji.json", json_module.dumps(index).encode())
        for i, name in enumerate(names):
            buffer = io.BytesIO()
            Image.new("RGBA", (64, 64), (200, 10 * i, 0, 255 if i else 0)).save(buffer, format="PNG")
            add(f"package/img/twitter/64/{name}", buffer.getvalue())
        add("package/img/twitter/32/ignored.png", b"x")
    return path


def test_emoji_from_a_package_tarball_in_the_data_dir(tmp_path, monkeypatch):
    from pyrovae.data import EMOJI_CREDIT, EMOJI_PACKAGE, EMOJI_VERSION

    monkeypatch.setenv("PATH", "")  # no npm: the tarball placed in --data-dir is used
    _emoji_tarball(tmp_path / f"{EMOJI_PACKAGE}-{EMOJI_VERSION}.tgz", ["a.png", "b.png", "c.png", "d.png"])
    data = load_dataset("emoji", tmp_path, test_fraction=0.25)
    assert data.classes == ["flags", "other", "smileys-and-emotion"]  # d.png is in no category
    assert data.image_shape == (3, 64, 64) and len(data.train_images) == 3 and len(data.test_images) == 1
    everything = torch.cat([data.train_images, data.test_images])
    assert everything.amin(dim=(1, 2, 3)).max() == 1  # the transparent a.png is all white
    assert EMOJI_CREDIT in data.notes
    assert (tmp_path / f"emoji-twitter-{EMOJI_VERSION}" / ".complete").is_file()  # cached: the tarball can go
    (tmp_path / f"{EMOJI_PACKAGE}-{EMOJI_VERSION}.tgz").unlink()
    assert len(load_dataset("emoji", tmp_path).train_images) == 3


def test_emoji_without_npm_or_tarball_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(DataError, match="fetched with npm .*, which is not installed"):
        load_dataset("emoji", tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written
    (tmp_path / "emoji-datasource-twitter-16.0.0.tgz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="is not a readable emoji-datasource-twitter package"):
        load_dataset("emoji", tmp_path)


@pytest.fixture(scope="session")
def emoji():
    """The real 3,786 Twemoji images, where npm can fetch them (or they are cached)."""
    try:
        return load_dataset("emoji")
    except DataError as error:
        pytest.skip(f"the emoji data set is not available here: {error}")


def test_real_emoji_data_set(emoji):
    assert len(emoji.train_images) + len(emoji.test_images) == 3786
    assert emoji.image_shape == (3, 64, 64) and emoji.levels == 256 and len(emoji.classes) == 10
    assert "smileys-and-emotion" in emoji.classes
    corners = emoji.train_images[:, :, 0, 0]
    assert (corners == 1).float().mean() > 0.9  # transparent surroundings are composited on white


def test_validation_images_are_a_seeded_part_of_the_training_images():
    data = load_dataset("mnist5k")
    split, again = data.with_validation(300), data.with_validation(300)
    assert torch.equal(split.validation_images, again.validation_images)
    assert len(split.train_images) == len(data.train_images) - 300 and len(split.validation_images) == 300
    both = torch.cat([split.train_images, split.validation_images]).flatten(1)
    torch.testing.assert_close(both.sum(0), data.train_images.flatten(1).sum(0))  # nothing lost or repeated
    assert torch.equal(split.test_images, data.test_images) and "validation set" in split.notes[-1]
    assert "validation=300" in repr(split)
