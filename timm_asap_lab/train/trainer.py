"""Fine-tune a run configuration: zero-shot conversion of a base timm checkpoint, then training.

:func:`finetune` trains one :class:`~timm_asap_lab.config.RunConfig` into an output folder and returns
its metrics; :func:`ensure_finetuned` returns a finished run's metrics without training again and
resumes an unfinished one. Both work in a single process (CPU or one GPU) and under torchrun (one
process per GPU or CPU slot, NCCL or gloo); only rank 0 logs and writes files.

The pieces come from timm: ``timm.data`` datasets and transforms (see :mod:`timm_asap_lab.data`),
``timm.optim.create_optimizer_v2``, ``timm.scheduler.create_scheduler_v2`` (stepped per optimizer
update), ``timm.loss.create_classification_loss``, ``timm.data.Mixup``, ``timm.utils.ModelEmaV3``,
``timm.utils.NativeScaler`` and the ``timm.task`` classification and logit-distillation tasks.

The run is put together from parts with one job each: :mod:`.build` (model, teacher, data, task,
optimizer, schedule, EMA, precision), :mod:`.resume` (checkpoint contents and resume state),
:mod:`.loop` (the epoch loop), :mod:`.records` (metrics.json, summary.csv, TensorBoard) and
:mod:`.signals` (preemption). The training batches come from the DataLoader path or the in-memory path
(``data.loader``, see :mod:`timm_asap_lab.data.memory`); everything else is shared.

Example:
    >>> from timm_asap_lab.config import apply_overrides, load_config
    >>> cfg = apply_overrides(load_config('resnet18_cifar_asap.fmnist'), ['train.epochs=1'])
    >>> metrics = finetune(cfg, 'output/r18_asap', device='cpu')  # doctest: +SKIP

Output folder:

* ``config.yaml``: the resolved configuration (overrides applied, label names filled in).
* ``last.pth``: resumable checkpoint after the last finished epoch (or of the interruption).
* ``best.pth``: the checkpoint of the epoch with the best validation top-1.
* ``model.safetensors``: weights only, of the model chosen by ``train.export``.
* ``summary.csv``, ``metrics.json``, ``train.log`` and, when installed, ``tensorboard/``.

While a run writes there, the output folder is locked (:func:`timm_asap_lab.files.folder_lock`, taken by rank 0):
a second fine-tune into the same folder is refused at once.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from timm.utils import random_seed

from timm_asap.hub.integrity import weights_metadata
from timm_asap_lab.config import RUN_CONFIG_FILE, RunConfig, config_from_dict, load_config, save_config
from timm_asap_lab.config_model import model_kwargs
from timm_asap_lab.files import FolderError, folder_lock
from timm_asap_lab.train import resume as _resume
from timm_asap_lab.train.build import Parts, build_parts
from timm_asap_lab.train.checkpoint import load_run_checkpoint, save_weights, set_rng_state
from timm_asap_lab.train.distributed import DistEnv, init_distributed
from timm_asap_lab.train.errors import RunExistsError, TrainingInterrupted
from timm_asap_lab.train.loop import EpochLoop, TrainState
from timm_asap_lab.train.model import resolve_run_config_base
from timm_asap_lab.train.records import RunLogFile, RunRecords, load_results
from timm_asap_lab.train.resume import NON_SEMANTIC, Progress, config_differences
from timm_asap_lab.train.signals import SignalCatcher

__all__ = ['finetune', 'ensure_finetuned', 'check_reusable', 'TrainState', 'config_differences', 'load_results']

_logger = logging.getLogger(__name__)


def _start(cfg: RunConfig, out: Path, env: DistEnv, ckpt_path: Path | None, records: RunRecords,
           progress_bar: bool) -> tuple[Parts, Progress]:
    """Build the run's parts and take up the checkpoint's state when resuming."""
    t = cfg.train
    ckpt = load_run_checkpoint(ckpt_path) if ckpt_path is not None else None
    diff = _resume.check_checkpoint(cfg, ckpt, ckpt_path, env) if ckpt is not None else {}
    parts = build_parts(cfg, env, ckpt, ckpt_path)
    progress = Progress()
    if ckpt is not None:
        progress = _resume.restore(parts, ckpt, ckpt_path, env, diff, t.grad_accum_steps)
        _resume.carry_best(progress, ckpt_path, out, env)
    if t.compile:
        parts.task.compile()
        if parts.ema is not None:
            parts.task.compile_ema()
    if env.distributed:
        parts.task.prepare_distributed(device_ids=[env.device.index] if env.device.type == 'cuda' else None)
    records.attach(parts, progress)
    if env.is_primary:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / RUN_CONFIG_FILE)
        _log_start(cfg, parts, env)
    if ckpt is not None:  # the random state last: everything built above may have drawn from it
        rng = ckpt['rng']
        if len(rng) == env.world_size:
            set_rng_state(rng[env.rank])
        else:
            _logger.warning(f"checkpoint has RNG states of {len(rng)} process(es), this run has "
                            f"{env.world_size}; random streams restart from the seed")
            random_seed(t.seed + progress.start_epoch, env.rank)
    return parts, progress


def _lock_output(out: Path, env: DistEnv, held: contextlib.ExitStack) -> None:
    """Rank 0 takes the output folder's lock into ``held``; when it is refused, every rank stops with the
    refusal (the other ranks never lock: they would be refused by their own rank 0)."""
    refusal = None
    if env.is_primary:
        try:
            held.enter_context(folder_lock(out, 'timm-asap finetune'))
        except Exception as e:  # every rank must hear of it, or the others would wait for rank 0
            refusal = e
    message = env.gather_objects(None if refusal is None else str(refusal))[0]
    if refusal is not None:
        raise refusal
    if message is not None:
        raise FolderError(f"rank 0 could not lock the output folder: {message}")


def _log_start(cfg: RunConfig, parts: Parts, env: DistEnv) -> None:
    t = cfg.train
    nparams = sum(p.numel() for p in parts.model.parameters())
    _logger.info(f"{cfg.name}: {nparams / 1e6:.2f}M parameters, {parts.batches_per_epoch} batches of "
                 f"{t.batch_size} x {env.world_size} process(es) per epoch ({parts.data.loader} loader), "
                 f"lr {t.effective_lr(env.world_size):.4g}, device {env.device}, AMP {parts.amp_name}, "
                 f"channels_last {parts.channels_last}, compile {t.compile}"
                 + (f", distilling from {t.distill.teacher or cfg.model.base}" if t.distill.enabled else ''))


def _export(cfg: RunConfig, parts: Parts, progress: Progress, env: DistEnv, out: Path) -> dict[str, Any]:
    """Write ``model.safetensors`` with the weights ``train.export`` chooses; returns the export record."""
    kind = cfg.train.export
    if kind == 'best' and progress.best_epoch is None:
        _logger.warning("train.export 'best' without validation: exporting the final weights")
        kind = 'ema' if parts.ema is not None else 'last'
    epoch = len(progress.history)
    if env.is_primary:
        if kind == 'best':
            best = load_run_checkpoint(out / 'best.pth')
            weights = best['state_dict_ema'] if parts.ema is not None else best['state_dict']
            epoch = progress.best_epoch
        elif kind == 'ema':
            weights = parts.ema.module.state_dict()
        else:
            weights = parts.model.state_dict()
        save_weights(weights, out / 'model.safetensors', metadata={
            **weights_metadata(parts.model, cfg.model.architecture, model_kwargs(cfg)), 'name': cfg.name, 'export': kind,
            'epoch': str(epoch)})
        save_config(cfg, out / RUN_CONFIG_FILE)
        _logger.info(f"finished {cfg.name}: exported {kind} weights (epoch {epoch}) to {out / 'model.safetensors'}")
    return {'kind': kind, 'epoch': epoch, 'file': 'model.safetensors'}


def finetune(cfg: RunConfig, output_dir: str | Path, *, resume: str | Path | bool | None = None,
             device: str | torch.device | None = None, progress: bool = True,
             callbacks: Sequence[Callable[[TrainState], None]] = (), handle_signals: bool = True) -> dict[str, Any]:
    """Fine-tune ``cfg`` into ``output_dir`` and return its metrics (what ``metrics.json`` holds).

    A fresh run builds ``model.architecture``, loads ``model.base``'s weights into it (zero-shot
    conversion; the base may be a timm name, ``hf-hub:``/``local-dir:``, a weights file or a run folder,
    see :mod:`timm_asap_lab.train.model`), and trains with the ``train`` recipe. Launched by torchrun, every process calls this;
    the process group is joined from the environment (NCCL on CUDA, gloo on CPU).

    Args:
        cfg: the run configuration (validated again here).
        output_dir: folder for checkpoints, weights and records (created).
        resume: None: start fresh (error if ``output_dir`` holds a run); ``'auto'``: resume
            ``output_dir/last.pth`` when it exists, else start fresh; True or ``'last'``: resume
            ``output_dir/last.pth``; a path: resume that checkpoint.
        device: ``cuda``, ``cpu``, ``cuda:1``; None: CUDA when available. In distributed CUDA runs each
            process takes ``cuda:<LOCAL_RANK>``.
        progress: tqdm bars (rank 0 only).
        callbacks: called with a :class:`TrainState` after every optimizer update.
        handle_signals: on the first SIGTERM/SIGINT, write a resumable checkpoint and raise
            :class:`TrainingInterrupted` (main thread only).

    Returns:
        The metrics: ``status``, ``val_top1``/``val_top5``/``val_loss`` of the last epoch, ``best_metric``
        and ``best_epoch``, ``train_images_per_sec``, ``history`` (one row per epoch), ``export``, ``config``.

    Raises:
        ConfigError: invalid settings (unknown architecture or optimizer, teacher without matching head, ...).
        DataError: missing/empty data, class-count mismatch, too many unreadable images.
        CheckpointError: resume checkpoint unreadable, foreign, or from another model.
        RunExistsError: ``output_dir`` holds a run and ``resume`` is None.
        FolderInUseError: another process is writing into ``output_dir`` (it holds the folder's lock).
        NonFiniteLossError: the loss became NaN/Inf (the last good checkpoint is kept).
        TrainingInterrupted: a signal stopped the run after writing ``last.pth``.
    """
    cfg = config_from_dict(cfg.to_dict())  # validated private copy
    cfg = resolve_run_config_base(cfg)[0]  # the base's recorded model_args join the run's (fresh or resumed)
    out = Path(output_dir)
    signals = SignalCatcher(handle_signals)
    env = init_distributed(device)
    log_file = None
    records = RunRecords(cfg, out, env)
    training = False  # set once the epochs start: failures before that leave metrics.json alone
    held = contextlib.ExitStack()  # the output folder's lock, released last
    try:
        _lock_output(out, env, held)
        ckpt_path = _resume.resolve_resume(resume, out)
        if env.is_primary:
            out.mkdir(parents=True, exist_ok=True)
            log_file = RunLogFile(out / 'train.log')
        parts, state = _start(cfg, out, env, ckpt_path, records, progress and env.is_primary)
        training = True
        EpochLoop(cfg, parts, state, env, records, signals, callbacks, progress and env.is_primary).run()
        records.status = {'export': _export(cfg, parts, state, env, out)}
        metrics = records.write('finished')
        env.barrier()
        return metrics
    except TrainingInterrupted as e:
        if records.parts is not None:
            records.write('interrupted', str(e))
        if env.is_primary:
            _logger.warning(str(e))
        raise
    except Exception as e:
        if training:
            try:
                records.write('failed', f"{type(e).__name__}: {e}")
            except Exception as record_error:  # the original error matters more
                _logger.warning(f"could not record the failure in metrics.json: {record_error!r}")
        raise
    finally:
        signals.restore()
        records.close()
        if log_file is not None:
            log_file.close()
        held.close()
        env.close()


def check_reusable(cfg: RunConfig, output_dir: str | Path, *, unfinished: bool = True) -> str | None:
    """What ``output_dir`` holds for ``cfg`` before anything is written there, refusing another configuration.

    A finished run (``metrics.json`` with status ``finished`` and ``model.safetensors``) is compared by the
    configuration its metrics record; an unfinished one (``last.pth``) by its ``config.yaml`` (else the
    checkpoint's). Keys that do not change what a run computes (:data:`~timm_asap_lab.train.resume.NON_SEMANTIC`)
    are left out.

    Args:
        cfg: the configuration asked for now.
        output_dir: the run's folder.
        unfinished: also refuse an unfinished run of another configuration (False: leave it to resuming, which
            takes up the changed settings and warns about them).

    Returns:
        ``'finished'``, ``'unfinished'`` or None (no run there).

    Raises:
        RunExistsError: one line naming the folder and the differing keys (recorded vs asked).

    Example:
        >>> check_reusable(cfg, 'output/r18_asap')  # doctest: +SKIP
        'finished'
    """
    out = Path(output_dir)
    done = load_results(out)
    if done is not None and done.get('status') == 'finished' and (out / 'model.safetensors').is_file():
        state, recorded = 'finished', done.get('config', {})
    elif (out / 'last.pth').is_file():
        state = 'unfinished'
        if not unfinished:
            return state
        saved = out / RUN_CONFIG_FILE
        recorded = load_config(saved) if saved.is_file() else load_run_checkpoint(out / 'last.pth')['config']
    else:
        return None
    diff = config_differences(recorded, cfg, ignore=sorted(NON_SEMANTIC))
    if diff:
        shown = ', '.join(f'{k}: {a!r} vs {b!r}' for k, (a, b) in list(diff.items())[:6])
        more = f' and {len(diff) - 6} more' if len(diff) > 6 else ''
        raise RunExistsError(f"{out} holds a{'n' if state == 'unfinished' else ''} {state} run of another "
                             f"configuration (there vs now: {shown}{more}); use another output folder or remove {out}")
    return state


def ensure_finetuned(cfg: RunConfig, output_dir: str | Path, **kwargs) -> dict[str, Any]:
    """Train ``cfg`` into ``output_dir`` unless it already holds that finished run; return its metrics.

    A finished run (``metrics.json`` with status ``finished``) of the same config is returned as is,
    without loading a model; an unfinished one is resumed from ``last.pth``; otherwise training starts.

    Args:
        cfg: the run configuration.
        output_dir: the run's folder.
        **kwargs: passed to :func:`finetune` (``device``, ``progress``, ``callbacks``, ...), not ``resume``.

    Raises:
        RunExistsError: ``output_dir`` holds a finished run of a different configuration (see
            :func:`check_reusable`).
        Everything :func:`finetune` raises.
    """
    if 'resume' in kwargs:
        raise TypeError("ensure_finetuned decides about resuming itself; do not pass resume")
    cfg = resolve_run_config_base(cfg)[0]  # compared as finetune saves it: with the base's model_args
    if check_reusable(cfg, output_dir, unfinished=False) == 'finished':
        _logger.info(f"{output_dir}: finished run found, not training again")
        return load_results(output_dir)
    return finetune(cfg, output_dir, resume='auto', **kwargs)
