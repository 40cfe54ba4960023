"""The study's conversion arm: its trained baseline converted to ASAP/FLC and measured at each step.

The question a user of ``pretrained=True`` has: starting from a trained network instead of training the
ASAP model from scratch, what does one get, and at what cost? For each seed the trained baseline is
converted (its weights loaded with ``strict=True`` into the ``_asap``/``_flc`` variant, pooling
before or after the strided convolutions) and evaluated with the same metrics and images as the
from-scratch models:

* ``zeroshot``: the base weights as they are;
* ``repaired``: after :func:`timm_asap.recalibrate_norm` re-estimates the BatchNorm statistics from
  unlabeled training images (no gradient);
* ``ft<E>`` / ``ft<E>_kd``: after ``E`` epochs of fine-tuning with the fine-tuning tool (the run's
  recipe at a fine-tuning learning rate), without or with distillation from the base model.

Each arm is an :class:`Arm`; its cost is counted in training images relative to the from-scratch run.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from timm_asap_lab.config import RunConfig, apply_overrides

__all__ = ['Arm', 'conversion_arms', 'arm_config', 'converted_model', 'repaired_model', 'cost_rows', 'goal_check']


@dataclass(frozen=True)
class Arm:
    """One step of the conversion path.

    Attributes:
        pool: ``'asap'`` or ``'flc'``.
        position: where the pooling goes for strided convolutions, ``'before'`` or ``'after'``
            (``asapify``'s ``pool_position``).
        epochs: fine-tuning epochs (0: no fine-tuning).
        repair: BatchNorm statistics re-estimated before use (arms without fine-tuning).
        distill: fine-tuning with distillation from the base model.
    """

    pool: str
    position: str = 'before'
    epochs: int = 0
    repair: bool = False
    distill: bool = False

    @property
    def name(self) -> str:
        """``zeroshot``, ``repaired``, ``ft1``, ``ft2_kd``, ...; ``_after`` for the 'after' placement."""
        if self.epochs:
            stage = f"ft{self.epochs}" + ('_kd' if self.distill else '')
        else:
            stage = 'repaired' if self.repair else 'zeroshot'
        return stage + ('_after' if self.position == 'after' else '')

    def label(self, base_label: str) -> str:
        """The model's name in folders and tables, e.g. ``preactresnet18_w8_asap.conv_ft1``."""
        return f"{base_label}_{self.pool}.conv_{self.name}"

    def describe(self) -> str:
        """In words, e.g. ``ASAP converted (pool before), 1 epoch fine-tuned with distillation``."""
        stage = (f"{self.epochs} epoch{'s' if self.epochs > 1 else ''} fine-tuned"
                 + (' with distillation' if self.distill else '')) if self.epochs else \
            ('BatchNorm re-estimated' if self.repair else 'zero-shot')
        return f"{self.pool.upper()} converted (pool {self.position}), {stage}"


def conversion_arms(pools: Sequence[str], positions: Sequence[str], epochs: Sequence[int],
                    distill: Sequence[bool]) -> list[Arm]:
    """Every arm of the study: per pooling and placement, zero-shot, repaired and each fine-tuning length
    with and without distillation (as asked). No pools: no arms."""
    arms = []
    for pool in pools:
        for position in positions:
            arms += [Arm(pool, position), Arm(pool, position, repair=True)]
            arms += [Arm(pool, position, e, distill=d) for e in epochs for d in distill]
    return arms


def _model_overrides(arm: Arm, base_cfg: RunConfig) -> list[str]:
    return [f"model.architecture={base_cfg.model.architecture}_{arm.pool}", f"model.pool={arm.pool}",
            f"model.pool_position={arm.position}"]


def arm_config(arm: Arm, base_cfg: RunConfig, base_run: str | Path, lr: float, repo_id: str) -> RunConfig:
    """The fine-tuning config of a fine-tuned arm: the baseline's recipe (data, batch, augmentation, seed)
    on the converted architecture, initialised from the baseline's weights, ``arm.epochs`` epochs at
    ``lr`` without warm-up, distilled from the baseline when ``arm.distill``.

    Args:
        arm: a fine-tuned arm (``arm.epochs >= 1``).
        base_cfg: the baseline's run config (its recipe and model arguments).
        base_run: the baseline's run folder (its ``config.yaml`` and ``model.safetensors``: the fine-tuning
            tool's ``model.base`` form for a run of this project).
        lr: the fine-tuning learning rate (peak of the cosine schedule).
        repo_id: the Hub repository id of the fine-tuned model.
    """
    if arm.epochs < 1:
        raise ValueError(f"arm {arm.name!r} has no fine-tuning; only fine-tuned arms have a run config")
    return apply_overrides(base_cfg, _model_overrides(arm, base_cfg) + [
        f"model.base={Path(base_run)}",
        f"train.epochs={arm.epochs}", 'train.warmup_epochs=0', f"train.lr={lr:g}",
        f"train.distill.enabled={'true' if arm.distill else 'false'}", f"hub.repo_id={repo_id}"])


def converted_model(arm: Arm, base_cfg: RunConfig, base: nn.Module) -> nn.Module:
    """The converted architecture with the base model's weights (``strict=True``), in eval mode."""
    from timm_asap_lab.config_model import create_model_from_config

    model = create_model_from_config(apply_overrides(base_cfg, _model_overrides(arm, base_cfg)))
    model.load_state_dict(base.state_dict(), strict=True)
    return model.eval()


def repaired_model(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """``model`` (modified in place) after re-estimating its BatchNorm statistics on uint8 ``images``
    normalised with ``mean``/``std``; in eval mode."""
    from timm_asap import recalibrate_norm

    x = images.float() / 255
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return recalibrate_norm(model, x, batch_size=256).eval()


def cost_rows(arms: dict[str, Arm], scratch_images: int, repair_images: int, n_train: int,
              seconds: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Per arm label: training images (fine-tuning epochs x images; the repair's unlabeled forward passes
    counted apart), their ratio to the from-scratch run's, and the measured fine-tuning seconds."""
    rows = []
    for label, arm in arms.items():
        images = arm.epochs * n_train
        rows.append({'model': label, 'arm': arm.describe(), 'train_images': images,
                     'relative_cost': images / scratch_images, 'forward_only_images': repair_images if arm.repair else 0,
                     'seconds': statistics.fmean(seconds[label]) if seconds.get(label) else None})
    return rows


def cost_table(rows: list[dict[str, Any]], scratch_images: int) -> str:
    """Markdown table of :func:`cost_rows`."""
    lines = [f"| model | arm | training images | relative to from-scratch ({scratch_images}) | fine-tuning time |",
             '|---|---|---:|---:|---:|']
    for r in rows:
        extra = f" + {r['forward_only_images']} unlabeled (forward only)" if r['forward_only_images'] else ''
        secs = f"{r['seconds'] / 60:.1f} min" if r['seconds'] is not None else '-'
        lines.append(f"| {r['model']} | {r['arm']} | {r['train_images']}{extra} | {r['relative_cost']:.2f} | {secs} |")
    return '\n'.join(lines) + '\n'


def goal_check(table_rows: list[dict], base_label: str, scratch_labels: dict[str, str], arms: dict[str, Arm],
               costs: dict[str, float], max_cost: float = 1 / 3) -> list[str]:
    """Which fine-tuned arms reach the conversion goal, one line each.

    The goal: clean top-1 at least the base's (within the two models' combined standard error), the
    corruption mCA gain over the base at least the from-scratch model's of the same pooling, at no more
    than ``max_cost`` of the from-scratch training images.

    Args:
        table_rows: the study table's rows (mean over seeds; ``<metric> se`` where known).
        base_label: the baseline's label.
        scratch_labels: pool -> the from-scratch model's label.
        arms: label -> arm, for the arms to check.
        costs: label -> training images relative to from-scratch.
        max_cost: the cost bound.
    """
    by_model = {r['model']: r for r in table_rows}
    base = by_model.get(base_label)
    lines = []
    if base is None:
        return lines
    for label, arm in arms.items():
        row, scratch = by_model.get(label), by_model.get(scratch_labels.get(arm.pool, ''))
        if row is None or scratch is None or not arm.epochs:
            continue
        se = ((row.get('clean top-1 se') or 0) ** 2 + (base.get('clean top-1 se') or 0) ** 2) ** 0.5
        clean_ok = row['clean top-1'] >= base['clean top-1'] - se
        gain, scratch_gain = (row['corruption mCA'] - base['corruption mCA'],
                              scratch['corruption mCA'] - base['corruption mCA'])
        cost_ok = costs[label] <= max_cost + 1e-9
        reached = clean_ok and gain >= scratch_gain and cost_ok
        lines.append(f"{label}: {'reaches' if reached else 'does not reach'} the goal (clean "
                     f"{row['clean top-1'] - base['clean top-1']:+.1f} pp vs the base, SE {se:.1f}; corruption mCA "
                     f"gain {gain:+.1f} pp vs from-scratch {arm.pool.upper()}'s {scratch_gain:+.1f} pp; cost "
                     f"{costs[label]:.2f} of from-scratch, bound {max_cost:.2f})")
    return lines
