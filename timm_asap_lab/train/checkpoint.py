"""Training checkpoints and exported weights, written atomically.

A checkpoint (``last.pth``, ``best.pth``) holds everything a resumed run needs: model, EMA,
optimizer, scheduler and grad-scaler state, the position in training (epoch, batches done in that
epoch, optimizer updates), every rank's random-number-generator state, the metric history and the
resolved config. It is written to a temporary file in the same folder and renamed over the old one,
so a crash mid-write never leaves a damaged checkpoint. Checkpoints are loaded with
``torch.load(weights_only=True)``: plain containers and tensors only.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from timm_asap._files import atomic_path
from timm_asap.hub.integrity import save_safetensors
from timm_asap_lab.train.errors import CheckpointError

__all__ = ['CHECKPOINT_FORMAT', 'save_checkpoint', 'load_run_checkpoint', 'link_or_copy', 'save_weights',
           'get_rng_state', 'set_rng_state']

CHECKPOINT_FORMAT = 'timm_asap.finetune/1'


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` with ``torch.save`` to a temp file, fsync it, and rename it to ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make ``dst`` a hard link to (or, where links fail, a copy of) ``src``, atomically."""
    src, dst = Path(src), Path(dst)
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
    return dst


def load_run_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a fine-tuning checkpoint onto the CPU.

    Raises:
        CheckpointError: missing or unreadable file, or not a checkpoint written by this trainer.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises many types for damaged or foreign pickles
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        found = state.get('format') if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{str(path)!r} is not a timm-asap fine-tuning checkpoint "
                              f"(format {found!r}, expected {CHECKPOINT_FORMAT!r}); to start from plain weights "
                              f"use model.base_file instead of resuming")
    return state


def save_weights(state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write a state dict as ``.safetensors`` (weights only, CPU, contiguous), atomically, with the digest of
    its data in the header (:func:`timm_asap.hub.integrity.save_safetensors`, which the checked loaders verify)."""
    save_safetensors(state_dict, path, metadata)
    return Path(path)


def get_rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA generator states, as plain containers and tensors."""
    np_state = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if state.get('cuda') and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
