"""What an evaluation's ``results.json`` records about how its numbers were made, and whether a stored
result answers the evaluation asked for now.

:func:`evaluation_record` is written into every ``results.json`` (by :func:`~timm_asap_lab.evaluation.evaluate_models`):
the options, the models (names and a digest of their weights as evaluated), the images (a digest of their
pixels and labels) and the precision. A stored result is reused only when
:func:`record_differences` finds nothing between its record and the record of the evaluation asked for
now; options that do not change a number (:data:`NON_SEMANTIC_OPTIONS`) are left out of the comparison.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any, Sequence

import torch
from torch import nn

from timm_asap_lab.runtime import resolve_amp

__all__ = ['NON_SEMANTIC_OPTIONS', 'weights_sha256', 'images_sha256', 'evaluation_record', 'record_differences',
           'describe_differences']

#: evaluation options that change no number of the results: how the work is spread and shown, where the
#: corruption cache lies (its sets are keyed by everything they depend on)
NON_SEMANTIC_OPTIONS = frozenset({'workers', 'corruption_workers', 'corruption_cache', 'progress', 'plots'})
_DIGESTS = {'model_sha256': "the models' weights", 'images_sha256': 'the test images'}


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers as evaluated: names, dtypes, shapes and values.

    Buffers that are not saved in a state dict count too (e.g. the normalisation of a
    :class:`~timm_asap_lab.evaluation.NormalizedModel`): they change the outputs.

    Example:
        >>> len(weights_sha256(nn.Linear(2, 2)))
        64
    """
    h = hashlib.sha256()
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        t = t.detach().to('cpu').contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def images_sha256(images) -> str:
    """SHA-256 of an :class:`~timm_asap_lab.evaluation.EvalImages`: shape, pixels and labels, in order."""
    h = hashlib.sha256(f"{tuple(images.images.shape)}\n".encode())
    h.update(images.images.contiguous().numpy().tobytes())
    h.update(images.labels.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def evaluation_record(options, models: Sequence[tuple[str, nn.Module]], images, device: torch.device) -> dict[str, Any]:
    """What a ``results.json`` records about how its numbers were made.

    Args:
        options: the :class:`~timm_asap_lab.evaluation.EvalOptions`.
        models: (name, model) pairs as evaluated (wrapped, before any forward pass).
        images: the :class:`~timm_asap_lab.evaluation.EvalImages` evaluated.
        device: the device the passes run on.

    Returns:
        ``options`` (all fields), ``models`` (names), ``model_sha256`` (name -> :func:`weights_sha256`),
        ``images_sha256`` and ``precision`` of the clean, corruption and shift passes.
    """
    return {'options': options.to_dict(), 'models': [name for name, _ in models],
            'model_sha256': {name: weights_sha256(model) for name, model in models},
            'images_sha256': images_sha256(images),
            'precision': str(resolve_amp(device, options.amp) or 'float32').replace('torch.', '')}


def _as_json(value: Any) -> Any:
    from timm_asap_lab.evaluation.report import _clean_value
    return json.loads(json.dumps(_clean_value(value)))


def record_differences(recorded: dict, wanted: dict) -> dict[str, tuple[Any, Any]]:
    """What differs between a stored result's record and the record of the evaluation asked for now.

    Args:
        recorded: the ``config`` of a ``results.json`` (:func:`~timm_asap_lab.evaluation.read_results`).
        wanted: :func:`evaluation_record` of the evaluation asked for now.

    Returns:
        ``{key: (recorded, wanted)}``; options are compared one by one (``'options.severities'``), leaving
        out :data:`NON_SEMANTIC_OPTIONS`; a key the stored record lacks counts as different. Empty: reusable.

    Example:
        >>> record_differences({'options': {'count': 64, 'workers': 2}}, {'options': {'count': 32, 'workers': 0}})
        {'options.count': (64, 32)}
    """
    wanted = _as_json(wanted)
    out: dict[str, tuple[Any, Any]] = {}
    for key, value in wanted.items():
        if key == 'options':
            stored = recorded.get('options') or {}
            out.update({f'options.{k}': (stored.get(k), v) for k, v in value.items()
                        if k not in NON_SEMANTIC_OPTIONS and stored.get(k) != v})
        elif recorded.get(key) != value:
            out[key] = (recorded.get(key), value)
    return out


def describe_differences(diff: dict[str, tuple[Any, Any]], limit: int = 6) -> str:
    """``diff`` of :func:`record_differences` in words: ``options.severities: [1] there vs [3] now, ...``."""
    parts = [(f"{_DIGESTS[k]} differ" if pair[0] is not None else f"no record of {_DIGESTS[k]}") if k in _DIGESTS
             else f"{k}: {pair[0]!r} there vs {pair[1]!r} now" for k, pair in diff.items()]
    return ', '.join(parts[:limit]) + (f" and {len(parts) - limit} more" if len(parts) > limit else '')
