"""The one rule on classes that fine-tuning and evaluation apply to a model and its data.

A model fits data when it has exactly as many classes as the data (where the reader knows the class
names), every label lies in ``0..num_classes-1``, and a class that the model's recorded label names
and the data both name has the same label in both. Anything else trains or scores a model on the
wrong classes, so it is an error naming both sides.
"""
from __future__ import annotations

from typing import Sequence

import torch

from timm_asap_lab.data.errors import DataError

__all__ = ['check_classes', 'check_labels', 'check_label_names']


def _shown(names: Sequence[str], limit: int = 12) -> list[str]:
    names = [str(n) for n in names]
    return names if len(names) <= limit else names[:limit] + ['...']


def check_classes(classes: Sequence[str] | None, num_classes: int, where: str, model: str = 'model.num_classes',
                  fix: str = 'set model.num_classes to match the data') -> None:
    """Refuse data whose class count (as its reader knows it) differs from the model's.

    Args:
        classes: the data's class names in label order; None (a reader that does not know them): not checked.
        num_classes: the model's class count.
        where: the data, for the message (e.g. ``"split 'train'"``).
        model: what ``num_classes`` is, for the message.
        fix: what to do, for the message.

    Raises:
        DataError: naming both counts and the data's classes.

    Example:
        >>> check_classes(['cat', 'dog'], 2, "split 'val'")
        >>> check_classes(['cat', 'dog'], 10, "split 'val'")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        timm_asap_lab.data.errors.DataError: split 'val' has 2 classes ['cat', 'dog'], but model.num_classes is 10; ...
    """
    if classes is not None and len(classes) != num_classes:
        raise DataError(f"{where} has {len(classes)} classes {_shown(classes)}, but {model} is {num_classes}; {fix}")


def check_labels(labels: torch.Tensor, num_classes: int | None, where: str = 'the data',
                 fix: str = 'check model.num_classes against the data') -> None:
    """Refuse labels outside ``0..num_classes-1``.

    Args:
        labels: integer labels.
        num_classes: the model's class count (None: not checked).
        where: the data, for the message.
        fix: what to do, for the message.

    Raises:
        DataError: naming the allowed range and the range found.
    """
    if num_classes is None or not len(labels):
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f"labels must be in 0..{num_classes - 1}, {where} holds {lo}..{hi}; {fix}")


def check_label_names(classes: Sequence[str] | None, label_names: Sequence[str] | None, where: str,
                      recorded_in: str) -> None:
    """Refuse class names that the model's recorded label names put at other labels.

    Names found on one side only are not conclusive (a folder may name a class ``n01440764`` that the
    model calls ``tench``); a name on both sides at different labels means the labels are permuted.

    Args:
        classes: the data's class names in label order (None: not checked).
        label_names: the model's recorded label names in label order (None: not checked).
        where: the data, for the message.
        recorded_in: where the label names are recorded, for the message.

    Raises:
        DataError: naming the first class found at different labels, and both lists.
    """
    if classes is None or label_names is None:
        return
    ours = {str(n): i for i, n in enumerate(classes)}
    for i, name in enumerate(label_names):
        j = ours.get(str(name))
        if j is not None and j != i:
            raise DataError(f"{where} has class {str(name)!r} as label {j}, but {recorded_in} records it as label "
                            f"{i}: the data's classes {_shown(classes)} disagree with the recorded label names "
                            f"{_shown(label_names)}; evaluate on data with the model's classes, in its order")
