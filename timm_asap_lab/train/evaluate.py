"""Validation during fine-tuning: loss, top-1/top-5 and agreement with the teacher, summed over ranks."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F
from timm.utils import accuracy
from tqdm import tqdm

from timm_asap_lab.train.distributed import DistEnv

__all__ = ['validate']


@torch.no_grad()
def validate(model: Callable[[torch.Tensor], torch.Tensor], loader, env: DistEnv, *,
             autocast: Callable[[], object] = nullcontext, channels_last: bool = False,
             teacher: Callable[[torch.Tensor], torch.Tensor] | None = None, labelled: bool = True, progress: bool = False) -> dict[str, float]:
    """Evaluate ``model`` on ``loader`` (this rank's shard) and combine the counts of all ranks.

    Args:
        model: eval-mode callable, images -> logits.
        loader: yields ``(images, labels[, unreadable])``.
        env: the process's distributed environment.
        autocast: context factory for mixed precision.
        channels_last: feed channels_last inputs.
        teacher: eval-mode callable (the model's inputs -> teacher logits); when given, also report the share
            of images where student and teacher agree on the top class.
        labelled: compute loss and accuracy (False: labels are placeholders).
        progress: show a tqdm bar.

    Returns:
        ``loss`` (mean cross-entropy), ``top1``, ``top5`` (percent), ``teacher_agree`` (percent, with a
        teacher), ``images`` and ``unreadable`` (counts).
    """
    device = env.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct1 = torch.zeros((), dtype=torch.float64, device=device)
    correct5 = torch.zeros((), dtype=torch.float64, device=device)
    agree = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    unreadable = 0
    for batch in tqdm(loader, desc='validate', disable=not progress, leave=False, dynamic_ncols=True,
                      mininterval=1.0):
        x, y = batch[0], batch[1]
        if len(batch) > 2:
            unreadable += int(batch[2].sum())
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with autocast():
            logits = model(x)
            t_logits = teacher(x) if teacher is not None else None
        logits = logits.float()
        count += x.shape[0]
        if labelled:
            loss_sum += F.cross_entropy(logits, y, reduction='sum').double()
            top1, top5 = accuracy(logits, y, topk=(1, 5))  # percent of this batch (top-5 capped at the classes)
            correct1 += (top1.double() * x.shape[0] / 100).round()
            correct5 += (top5.double() * x.shape[0] / 100).round()
        if t_logits is not None:
            agree += (logits.argmax(-1) == t_logits.float().argmax(-1)).sum().double()
    loss_sum, correct1, correct5, agree, count, unreadable = env.all_reduce_sum(
        [loss_sum.item(), correct1.item(), correct5.item(), agree.item(), count, unreadable])
    n = max(count, 1.0)
    out: dict[str, float] = {}
    if labelled:
        out.update(loss=loss_sum / n, top1=100.0 * correct1 / n, top5=100.0 * correct5 / n)
    if teacher is not None:
        out['teacher_agree'] = 100.0 * agree / n
    out.update(images=int(count), unreadable=int(unreadable))
    return out
