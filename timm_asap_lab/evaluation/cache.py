"""Corrupted test sets made once per run: generated on every core, cached on disk, shared by all models.

A corrupted set is one (corruption, severity) applied to a fixed set of clean images. It depends on
the clean pixels, the image ids (they seed each image's random draws, see
:func:`~timm_asap_lab.evaluation.corruptions.image_rng`), the corruption seed, the protocol's parameter
table, and the code that makes it. :func:`corruption_key` hashes all of them (the corruption module's
source and the versions of the libraries it calls included), so an entry made with other parameters
or by other code is never reused.

Entries are safetensors files ``<cache_dir>/<key>.safetensors`` holding one uint8 (N, C, H, W) tensor,
with the key's parameters and the SHA-256 of the pixels in the header. They are written through a
temporary file and ``os.replace`` (a crash leaves no half-written entry); an entry that fails to
load, whose header names other parameters, or whose pixels do not match their checksum is rebuilt,
not trusted.

While sets are generated and written, the cache folder is locked (:func:`timm_asap_lab.files.folder_lock`):
a second process that would write there at the same time is refused at once; reading a complete cache
takes no lock.

Generation runs in a process pool sized to ``os.cpu_count()`` (the corruptions are NumPy/OpenCV/SciPy
code on single images), in chunks, so 75 sets of 1000 images take seconds on a few cores.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from timm_asap_lab.evaluation._deps import library_versions
from timm_asap_lab.evaluation.corruptions import corrupt, image_rng, resolve_protocol
from timm_asap_lab.evaluation.data import EvalImages

__all__ = ['CorruptionCache', 'corruption_key', 'corruption_code_version', 'generate_corrupted',
           'iter_corrupted_sets', 'default_workers']

_logger = logging.getLogger(__name__)

_CHUNK = 64  # images per pool task: small enough to spread 1000 images over 16 workers
_POOL_MIN_S = 4.0  # below this much corruption work (estimated) the pool's start-up costs more than it saves
CORRUPT_S_PER_IMAGE = 0.62e-3  # CPU seconds per 32x32 image and set, mean of the 15 corruptions (measured, one core)
_LIBRARIES = ('version_numpy', 'version_opencv', 'version_scikit_image', 'version_scipy', 'version_corrupt_tta',
              'version_pillow')


def default_workers() -> int:
    """Corruption-generation processes: every core (``os.cpu_count()``)."""
    return os.cpu_count() or 1


@lru_cache(maxsize=1)
def corruption_code_version() -> str:
    """SHA-256 (16 hex digits) of the corruption implementation: this package's corruption source and the
    versions of the libraries it calls (NumPy, OpenCV, scikit-image, SciPy, corrupt-tta, Pillow)."""
    from timm_asap_lab.evaluation import corruptions

    digest = hashlib.sha256(Path(corruptions.__file__).read_bytes())
    versions = library_versions()
    digest.update(json.dumps({k: versions[k] for k in _LIBRARIES}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _pixels_digest(images: torch.Tensor) -> str:
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


def corruption_key(data: EvalImages, corruption: str, severity: int, seed: int, protocol: str) -> dict:
    """Every parameter a corrupted set depends on, with its hash under ``'key'``.

    Args:
        data: the clean images (their pixels, shape and ids enter the key).
        corruption: corruption name.
        severity: 1..5.
        seed: corruption seed.
        protocol: ``'imagenet'``, ``'cifar'`` or ``'auto'`` (resolved for the image size).

    Returns:
        ``{'corruption', 'severity', 'seed', 'protocol', 'shape', 'ids_sha256', 'clean_sha256', 'code', 'key'}``.
    """
    h, w = data.images.shape[-2:]
    params = {
        'corruption': corruption, 'severity': int(severity), 'seed': int(seed),
        'protocol': resolve_protocol(protocol, h, w), 'shape': list(data.images.shape),
        'ids_sha256': hashlib.sha256(json.dumps(list(data.indices)).encode()).hexdigest(),
        'clean_sha256': _pixels_digest(data.images), 'code': corruption_code_version(),
    }
    params['key'] = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:32]
    return params


def _pool_context():
    """spawn: the caller holds torch's (and OpenCV's) thread pools, and a forked child of a threaded process
    can deadlock (seen with fork after ART attacks ran). A script using the pool therefore needs the usual
    ``if __name__ == '__main__':`` guard (or ``corruption_workers=0``)."""
    return multiprocessing.get_context('spawn')


def _init_worker() -> None:
    """One thread per worker: the pool already uses every core (and OpenCV's own pool is not fork-safe)."""
    try:
        import cv2
        cv2.setNumThreads(1)
    except ImportError:  # the corruptions needing OpenCV raise their own clear error
        pass


def _corrupt_chunk(images: np.ndarray, ids: Sequence[int], corruption: str, severity: int, seed: int,
                   protocol: str) -> np.ndarray:
    """Corrupt a chunk of uint8 (n, C, H, W) images (runs in a pool worker)."""
    out = np.empty_like(images)
    for j, (img, index) in enumerate(zip(images, ids)):
        res = corrupt(img.transpose(1, 2, 0), corruption, severity, image_rng(seed, corruption, index), protocol)
        out[j] = res.reshape(img.shape[1], img.shape[2], -1).transpose(2, 0, 1)
    return out


def generate_corrupted(data: EvalImages, jobs: Sequence[tuple[str, int]], seed: int, protocol: str,
                       workers: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Corrupt the images for each (corruption, severity) job; yields ``(job index, uint8 tensor)`` in job order.

    Args:
        data: the clean images.
        jobs: (corruption, severity) pairs.
        seed: corruption seed.
        protocol: parameter table (``'auto'`` resolved for the image size).
        workers: pool processes (None: :func:`default_workers`; 0 or 1: in this process). Work estimated
            under a few seconds runs in this process too (starting the pool costs more).

    Shape:
        - Each yielded tensor: (N, C, H, W) uint8, as ``data.images``.
    """
    h, w = data.images.shape[-2:]
    protocol = resolve_protocol(protocol, h, w)
    workers = default_workers() if workers is None else workers
    images = data.images.numpy()
    ids = list(data.indices)
    chunks = [(s, min(s + _CHUNK, len(ids))) for s in range(0, len(ids), _CHUNK)]
    work_s = len(jobs) * len(ids) * CORRUPT_S_PER_IMAGE * (h * w / 1024)
    if workers <= 1 or not jobs or work_s < _POOL_MIN_S:
        for j, (c, s) in enumerate(jobs):
            yield j, torch.from_numpy(np.concatenate([_corrupt_chunk(images[a:b], ids[a:b], c, s, seed, protocol)
                                                      for a, b in chunks]))
        return
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_init_worker) as pool:
        window = max(2, 2 * workers // max(1, len(chunks)) + 1)  # jobs in flight: keeps every worker busy
        pending: dict[int, list[concurrent.futures.Future]] = {}

        def submit(j: int) -> None:
            c, s = jobs[j]
            pending[j] = [pool.submit(_corrupt_chunk, images[a:b], ids[a:b], c, s, seed, protocol) for a, b in chunks]

        for j in range(min(window, len(jobs))):
            submit(j)
        for j in range(len(jobs)):
            if j + window < len(jobs):
                submit(j + window)
            try:
                parts = [f.result() for f in pending.pop(j)]
            except concurrent.futures.process.BrokenProcessPool as e:
                raise RuntimeError(f"the corruption worker processes stopped ({e}); a script starting the evaluation "
                                   "needs an `if __name__ == '__main__':` guard, or run with corruption_workers=0 "
                                   "(--corruption-workers 0) to make the corruptions in this process") from None
            yield j, torch.from_numpy(np.concatenate(parts))


@dataclass
class CorruptionCache:
    """A folder of corrupted test sets (see the module docstring).

    Args:
        root: the cache folder (created on first write).

    Example:
        >>> cache = CorruptionCache('study_output/eval_cache')  # doctest: +SKIP
        >>> images = cache.load(corruption_key(data, 'fog', 3, seed=0, protocol='cifar'))  # doctest: +SKIP
    """

    root: str | os.PathLike

    def path(self, key: dict) -> Path:
        return Path(self.root) / f"{key['key']}.safetensors"

    def load(self, key: dict) -> torch.Tensor | None:
        """The cached set for ``key``, or None when there is none or it cannot be trusted (then it is removed)."""
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework='pt') as f:
                meta = f.metadata() or {}
                images = f.get_tensor('images')
            problem = None
            if json.loads(meta.get('params', '{}')) != key:
                problem = 'its header names other parameters'
            elif list(images.shape) != key['shape'] or images.dtype != torch.uint8:
                problem = f"it holds {images.dtype} {list(images.shape)}, expected uint8 {key['shape']}"
            elif _pixels_digest(images) != meta.get('sha256'):
                problem = 'its pixels do not match their checksum'
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
            problem, images = f"it cannot be read ({type(e).__name__}: {e})", None
        if problem is None:
            return images
        _logger.warning(f"corruption cache entry {path} ({key['corruption']} severity {key['severity']}) is not "
                        f"usable: {problem}; rebuilding it")
        path.unlink(missing_ok=True)
        return None

    def writing(self) -> contextlib.AbstractContextManager[Path]:
        """Hold the cache folder's lock while entries are written (created if missing; see
        :func:`timm_asap_lab.files.folder_lock`).

        Raises:
            FolderInUseError: another process is writing entries there.
            FolderError: the cache path exists and is not a folder.
        """
        from timm_asap_lab.files import folder_lock

        return folder_lock(self.root, 'the corruption cache')

    def save(self, key: dict, images: torch.Tensor) -> Path:
        """Write one set atomically (temporary file, then ``os.replace``)."""
        from safetensors.torch import save

        from timm_asap._files import atomic_write_bytes

        meta = {'params': json.dumps(key, sort_keys=True), 'sha256': _pixels_digest(images)}
        return atomic_write_bytes(self.path(key), save({'images': images.contiguous()}, metadata=meta))


def iter_corrupted_sets(data: EvalImages, jobs: Sequence[tuple[str, int]], seed: int, protocol: str,
                        cache: CorruptionCache | None = None, workers: int | None = None,
                        stats: dict | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Each job's corrupted images, from ``cache`` where it holds them, else generated (and cached).

    Args:
        data: the clean images.
        jobs: (corruption, severity) pairs.
        seed: corruption seed.
        protocol: parameter table.
        cache: where sets are kept between models, seeds and runs (None: generate every time).
        workers: generation processes (None: every core).
        stats: filled with ``cached`` and ``generated`` counts of sets.

    Yields:
        ``(job index, uint8 (N, C, H, W) tensor)``, cached jobs first, then the generated ones in order.

    Raises:
        FolderInUseError: sets have to be written into ``cache`` and another process is writing there.
    """
    stats = stats if stats is not None else {}
    stats.update(cached=0, generated=0)
    keys = [corruption_key(data, c, s, seed, protocol) for c, s in jobs]
    with contextlib.ExitStack() as lock:
        if cache is not None and not all(cache.path(key).is_file() for key in keys):
            lock.enter_context(cache.writing())  # before the first set: a second writer stops at once
        missing = []
        for j, key in enumerate(keys):
            images = cache.load(key) if cache is not None else None
            if images is None:
                missing.append(j)
                continue
            stats['cached'] += 1
            yield j, images
        if cache is not None and missing:
            lock.enter_context(cache.writing())  # a damaged entry to rebuild (nested when already held)
        for k, images in generate_corrupted(data, [jobs[j] for j in missing], seed, protocol, workers):
            j = missing[k]
            if cache is not None:
                cache.save(keys[j], images)
            stats['generated'] += 1
            yield j, images
