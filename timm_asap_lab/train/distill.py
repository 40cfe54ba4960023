"""The training task (timm.task): plain classification, or logit distillation with our own input
normalisation for the teacher."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from timm.task import ClassificationTask, LogitDistillationTask
from timm.task.distillation import DistillationTeacher

from timm_asap_lab.config import RunConfig
from timm_asap_lab.data.transforms import fit_channels

__all__ = ['TeacherInput', 'teacher_statistics', 'build_task']


class TeacherInput(nn.Module):
    """A teacher that takes the student's normalised input and re-normalises it for itself.

    timm's ``DistillationTeacher`` re-normalises with the teacher's and student's ``pretrained_cfg``
    statistics; a run's normalisation comes from its config instead. This wrapper carries
    ``pretrained_cfg`` mean/std equal to the student's, so timm's step is the identity, and applies the
    run's statistics itself: ``((x * s_std + s_mean) - t_mean) / t_std``.

    Args:
        teacher: the teacher model (eval mode, frozen).
        student_mean: the run's normalisation mean.
        student_std: the run's normalisation std.
        teacher_mean: the teacher's mean (``in_chans`` values).
        teacher_std: the teacher's std.
        pretrained_cfg: the student's ``pretrained_cfg`` (only its ``mean``/``std`` are read by timm).

    Shape:
        ``(B, C, H, W)`` -> the teacher's logits.
    """

    def __init__(self, teacher: nn.Module, student_mean, student_std, teacher_mean, teacher_std,
                 pretrained_cfg: dict):
        super().__init__()
        self.model = teacher
        self.pretrained_cfg = {'mean': tuple(pretrained_cfg['mean']), 'std': tuple(pretrained_cfg['std'])}
        for name, values in (('s_mean', student_mean), ('s_std', student_std),
                             ('t_mean', teacher_mean), ('t_std', teacher_std)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.same = tuple(student_mean) == tuple(teacher_mean) and tuple(student_std) == tuple(teacher_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.same:
            x = (x * self.s_std + self.s_mean - self.t_mean) / self.t_std
        return self.model(x)


def teacher_statistics(cfg: RunConfig, teacher: nn.Module, norm: dict) -> tuple[tuple, tuple]:
    """The mean/std the teacher expects: the run's when it is the base model (the usual teacher, which
    shares the student's normalisation), else its own ``pretrained_cfg``'s fitted to ``in_chans``."""
    t, c = cfg.train, cfg.model.in_chans
    if t.distill.teacher in ('', cfg.model.base):
        return tuple(norm['mean']), tuple(norm['std'])
    pcfg = getattr(teacher, 'pretrained_cfg', None) or {}
    remedy = f"distill from a teacher whose pretrained_cfg has {c} values (or one, or three for 1 channel)"
    mean = fit_channels("the teacher's pretrained_cfg mean", pcfg.get('mean', norm['mean']), c, average=True,
                        remedy=remedy)
    std = fit_channels("the teacher's pretrained_cfg std", pcfg.get('std', norm['std']), c, average=True,
                       remedy=remedy)
    return mean, std


def build_task(cfg: RunConfig, model: nn.Module, teacher: nn.Module | None, criterion: nn.Module,
               norm: dict, device: torch.device) -> tuple[nn.Module, Callable | None]:
    """The timm task of a run and, when distilling, the teacher as validation calls it.

    Args:
        cfg: the run configuration.
        model: the student (on ``device``).
        teacher: the teacher model (on ``device``), or None for plain classification.
        criterion: the classification loss.
        norm: the run's data config (``mean``/``std`` of the student's input).
        device: the training device.

    Returns:
        ``(task, teacher_eval)``: ``teacher_eval`` maps the student's input to teacher logits (None
        without a teacher), exactly as the training loss feeds it.
    """
    if teacher is None:
        return ClassificationTask(model, criterion=criterion, device=device, verbose=False), None
    t = cfg.train
    t_mean, t_std = teacher_statistics(cfg, teacher, norm)
    wrapped = TeacherInput(teacher, norm['mean'], norm['std'], t_mean, t_std, model.pretrained_cfg).to(device)
    task = LogitDistillationTask(
        model, DistillationTeacher(wrapped, device=device), criterion=criterion,
        task_loss_weight=1.0 - t.distill.alpha, distill_loss_weight=t.distill.alpha,
        temperature=t.distill.temperature, device=device, verbose=False)
    return task, wrapped
