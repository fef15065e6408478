"""Decoded images kept on disk: a folder of image files (or an array that must be converted
first) is decoded once into a ``.npy`` in the cache folder and memory-mapped from then on,
so a data set larger than memory is read only where it is used.

A cache file is named by what it was made from: the source's place and the options that
change pixels (the key), and the source's files with their sizes and modification times
(the fingerprint). A changed source gives a new name, so a stale cache is never read; the
old file is removed once the new one is complete. A cache is written under a temporary
name and renamed when complete, so it is never half-written, and two processes that build
the same one at once both end with a complete file. A damaged cache is rebuilt.
"""

import errno
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections import deque
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from pyrovae.errors import DataError
from pyrovae.pixels import CHUNK, MappedImages, Pixels

__all__ = ["CacheWriteError", "Decoded", "decode_folder", "convert_array", "open_cached", "CACHE_VERSION", "cpu_count"]

# Bumped whenever decoding would give other pixels, so that old caches are not read.
CACHE_VERSION = 1
# Bytes kept free on the cache's disk beyond the cache itself.
DISK_MARGIN = 64 << 20
# Names of files that could not be read, given in a note.
EXAMPLES = 3


class CacheWriteError(DataError):
    """The cache could not be written (no space, no permission); nothing was kept."""


@dataclass
class Decoded:
    """A cache: the images (memory-mapped), their labels and class names, and notes on how they were made."""

    pixels: Pixels
    labels: torch.Tensor
    classes: Optional[List[str]]
    notes: List[str]


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ordered_map(pool: ThreadPoolExecutor, function, items: Sequence, window: int) -> Iterator:
    """``function`` of each item, in order, with at most ``window`` results waiting (memory stays
    bounded however many items there are)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], default=str).encode()).hexdigest()[:16]


def _fingerprint(paths: Iterable[Path], root: Path) -> str:
    """A hash of each file's place, size and modification time: it changes when any does."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(root) if root in path.parents else path}\0{stat.st_size}\0"
                      f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _stem(source: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", source.name or "images")[:40]


def open_cached(path: Path) -> Optional[Decoded]:
    """The cache at ``path`` (a ``.npy`` beside its ``.json``), or None when either is missing,
    unreadable or disagrees with the other (damaged, truncated, half-copied)."""
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        labels = np.asarray(meta["labels"], dtype=np.int64)
        if (meta.get("version") != CACHE_VERSION or array.ndim != 4 or len(array) != len(labels)
                or list(array.shape) != meta["shape"] or str(array.dtype) != meta["dtype"]):
            return None
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    return Decoded(MappedImages(array, str(path), channels_last=False), torch.from_numpy(labels),
                   meta.get("classes"), list(meta.get("notes", [])))


def _target(directory: Path, source: Path, key: str, fingerprint: str) -> Path:
    return directory / f"{_stem(source)}-{key}-{fingerprint}.npy"


def _remove_stale(directory: Path, source: Path, key: str, keep: Path) -> None:
    for old in directory.glob(f"{_stem(source)}-{key}-*"):
        if old.stem != keep.stem and old.suffix in (".npy", ".json"):
            try:
                old.unlink()
            except OSError:
                pass


class _Writer:
    """Writes a ``.npy`` of ``shape`` (N, C, H, W) row by row under a temporary name; ``finish``
    renames it into place with as many rows as were written."""

    def __init__(self, target: Path, shape: Tuple[int, ...], dtype: np.dtype):
        self.target, self.shape, self.dtype = target, tuple(shape), np.dtype(dtype)
        row = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        needed = row * self.shape[0] + DISK_MARGIN
        target.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(target.parent).free
        if free < needed:
            raise CacheWriteError(f"The decoded images need {needed >> 20} MiB in the cache folder {target.parent} "
                                  f"but only {free >> 20} MiB is free; free space there or set PYROVAE_CACHE_DIR to a "
                                  "larger disk.")
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".part")
        self.path = Path(name)
        self.file = os.fdopen(handle, "wb")
        self.rows = 0
        self.file.write(self._header(self.shape[0]))

    def _header(self, count: int) -> bytes:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (count, *self.shape[1:])}
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, header)
        return buffer.getvalue()

    def write(self, rows: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += len(rows)

    def finish(self) -> Path:
        self.file.flush()
        if self.rows != self.shape[0]:  # some files failed to decode: a header for the rows written
            old, new = self._header(self.shape[0]), self._header(self.rows)
            row = int(np.prod(self.shape[1:])) * self.dtype.itemsize
            if len(new) == len(old):
                self.file.seek(0)
                self.file.write(new)
                self.file.truncate(len(new) + self.rows * row)
            else:  # the header's length changed: copy the rows after a new one
                self.file.close()
                source, (handle, name) = self.path, tempfile.mkstemp(dir=self.target.parent,
                                                                     prefix=f".{self.target.stem}.", suffix=".part")
                self.path, self.file = Path(name), os.fdopen(handle, "wb")
                self.file.write(new)
                with open(source, "rb") as f:
                    f.seek(len(old))
                    shutil.copyfileobj(f, self.file)
                source.unlink()
            self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.path, self.target)
        return self.target

    def discard(self) -> None:
        try:
            self.file.close()
        finally:
            self.path.unlink(missing_ok=True)


def _write_meta(path: Path, labels, classes, notes, shape, dtype) -> None:
    meta = {"version": CACHE_VERSION, "shape": list(shape), "dtype": str(np.dtype(dtype)),
            "labels": [int(label) for label in labels], "classes": classes, "notes": notes}
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".part")
    with os.fdopen(handle, "w") as f:
        json.dump(meta, f)
    os.replace(name, path.with_suffix(".json"))


def _build(target: Path, shape, dtype, blocks: Iterable[np.ndarray], labels: Callable[[], Sequence[int]],
           classes, notes: Callable[[], List[str]]) -> Decoded:
    """Write the cache at ``target`` from ``blocks`` of rows, all or nothing."""
    try:
        writer = _Writer(target, shape, dtype)
    except OSError as e:
        raise CacheWriteError(f"Cannot write the decoded images to {target.parent}: {e.strerror or e}; set "
                              "PYROVAE_CACHE_DIR to a folder you can write.") from None
    try:
        for block in blocks:
            writer.write(block)
        if not writer.rows:
            raise DataError("None of the images could be read.")
        written = writer.finish()
    except OSError as e:
        writer.discard()
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheWriteError(f"The disk of the cache folder {target.parent} filled up while the decoded images "
                                  "were written; nothing was kept. Free space there or set PYROVAE_CACHE_DIR to a "
                                  "larger disk.") from None
        raise CacheWriteError(f"Cannot write the decoded images to {target.parent}: {e.strerror or e}.") from None
    except BaseException:
        writer.discard()
        raise
    try:
        _write_meta(written, labels(), classes, notes(), (writer.rows, *shape[1:]), dtype)
    except OSError as e:
        written.unlink(missing_ok=True)
        raise CacheWriteError(f"Cannot write the decoded images to {target.parent}: {e.strerror or e}.") from None
    decoded = open_cached(written)
    if decoded is None:
        raise DataError(f"The cache {written} could not be read back after it was written; is the disk full?")
    return decoded


def decode_folder(folder: Path, files, image_size: Optional[int], grayscale: bool, directory: Path,
                  progress=None, strict: bool = False) -> Decoded:
    """The images of ``files`` (an :class:`~pyrovae.images.ImageFiles` of ``folder``) as a
    memory-mapped cache in ``directory``, decoded in parallel on first use.

    A file that cannot be read is skipped, with a count and the first few names in the notes;
    with ``strict`` it refuses the folder.

    :param progress: a counter with ``update(n)`` (:func:`pyrovae.progress.progress`), told of each file.
    """
    key = _key(str(folder.resolve()), image_size, grayscale)
    target = _target(directory, folder, key, _fingerprint(files.paths, folder))
    cached = open_cached(target)
    if cached is not None:
        return cached
    notes = []
    if target.exists() or target.with_suffix(".json").exists():
        notes.append(f"rebuilt the damaged cache {target.name}")
    with _one_torch_thread() as threads:  # the files in parallel, each worker's resizing on one thread
        return _decode(folder, files, image_size, grayscale, directory, progress, strict, key, target, notes,
                       workers=min(8, cpu_count(), threads))


@contextmanager
def _one_torch_thread() -> Iterator[int]:
    """torch computes on one thread inside the block (workers of a pool each use one, so that
    together they use no more cores than torch was allowed); yields the threads it had."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def _decode(folder, files, image_size, grayscale, directory, progress, strict, key, target, notes,
            workers: int) -> Decoded:
    from pyrovae.images import decode_file, probe_file

    with ThreadPoolExecutor(workers) as pool:
        probes = list(pool.map(lambda p: probe_file(p, strict), files.paths, chunksize=64))
    good = [i for i, probe in enumerate(probes) if not isinstance(probe, DataError)]
    bad = [files.paths[i] for i, probe in enumerate(probes) if isinstance(probe, DataError)]
    if not good:
        raise DataError(f"None of the {len(files.paths)} images in {folder} can be read ({probes[0]}).")
    channels = 1 if grayscale or all(probes[i][0] == 1 for i in good) else 3
    if image_size is not None:
        height = width = image_size
    else:
        sizes: dict = {}
        for i in good:
            sizes.setdefault(probes[i][1], files.paths[i])
        if len(sizes) > 1:
            examples = "; ".join(f"{p.name} is {h}x{w}" for (h, w), p in list(sizes.items())[:3])
            raise DataError(f"The images differ in size ({examples}); pass --image-size N to resize them all to NxN.")
        height, width = next(iter(sizes))
    kept: List[int] = []

    def blocks():
        with ThreadPoolExecutor(workers) as pool:
            decoded = ordered_map(pool, lambda i: (i, decode_file(files.paths[i], image_size, grayscale, channels,
                                                                  strict)), good, window=64 * workers)
            batch, batch_rows = [], []
            for i, image in decoded:
                if progress is not None:
                    progress.update(1)
                if isinstance(image, DataError):
                    bad.append(files.paths[i])
                    continue
                batch.append(image)
                batch_rows.append(i)
                if len(batch) == 256:
                    kept.extend(batch_rows)
                    yield np.stack(batch)
                    batch, batch_rows = [], []
            if batch:
                kept.extend(batch_rows)
                yield np.stack(batch)

    def all_notes():
        out = list(notes)
        if files.skipped:
            examples = ", ".join(p.name for p in files.skipped[:EXAMPLES])
            out.append(f"skipped {len(files.skipped)} file(s) that are not images by their extension ({examples})")
        if bad:
            examples = ", ".join(p.name for p in sorted(bad)[:EXAMPLES])
            out.append(f"skipped {len(bad)} image file(s) that cannot be read ({examples}); --strict-images refuses "
                       "such a folder instead")
        if image_size is not None:
            out.append(f"resized to {image_size}x{image_size} (shorter side scaled, centre cut)")
        return out

    if progress is not None:
        progress.update(len(bad))
    decoded = _build(target, (len(good), channels, height, width), np.uint8, blocks(),
                     lambda: [files.labels[i] for i in kept], files.classes, all_notes)
    _remove_stale(directory, folder, key, target)
    return decoded


def convert_array(path: Path, pixels: MappedImages, transform: Callable[[torch.Tensor], torch.Tensor],
                  options, directory: Path, dtype, labels: Sequence[int], notes: List[str]) -> Decoded:
    """An array that must be converted before training (resized, made grey, alpha composited)
    as a memory-mapped cache in ``directory``, converted chunk by chunk."""
    key = _key(str(path.resolve()), *options)
    target = _target(directory, path, key, _fingerprint([path], path.parent))
    cached = open_cached(target)
    if cached is not None:
        return cached
    first = transform(pixels[0:1])
    shape = (len(pixels), *first.shape[1:])

    def blocks():
        for chunk in pixels.split(CHUNK):
            yield transform(chunk).numpy()

    decoded = _build(target, shape, np.dtype(dtype), blocks(), lambda: list(labels), None, lambda: notes)
    _remove_stale(directory, path, key, target)
    return decoded
