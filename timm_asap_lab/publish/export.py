"""Building a complete Hub folder from a trained model: weights, config.json, model card, recipe, results.

A Hub folder holds::

    model.safetensors     weights (safetensors only, sha256 of the tensor data in the header)
    config.json           timm's Hub config: architecture, num_classes, num_features, global_pool,
                          label_names, model_args (JSON-safe), pretrained_cfg (mean, std, input_size,
                          crop_pct, interpolation, license, ...)
    README.md             model card with YAML metadata and model-index
    run_config.yaml       the resolved run configuration (model, data, recipe, hub)
    results.json          evaluation results (when given)
    plots/*.png           evaluation plots (when given)

It is written into a temp folder beside the destination, checked, and moved into place in one rename,
under the destination's folder lock. An existing destination is replaced only when it is empty or a Hub
folder written by publishing (:func:`entries_not_published` lists nothing), and never when it holds the
checkpoint or another input (:func:`timm_asap_lab.files.check_replaceable`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from timm_asap._files import LOCK_NAME, atomic_write_text
from timm_asap.hub.errors import IntegrityError
from timm_asap.hub.image_processor import IMAGE_PROCESSOR_NAME
from timm_asap.hub.integrity import (CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, save_safetensors, verify_hub_folder,
                                     weights_metadata)
from timm_asap.models.weight_tags import FASHION_MNIST_LABELS, paper_ids
from timm_asap.version import __version__
from timm_asap_lab.checkpoints import load_checkpoint_state_dict, load_state_dict_checked, load_trained_model
from timm_asap_lab.config import (RUN_CONFIG_FILE, ConfigError, RunConfig, apply_overrides, base_source_kind,
                                  find_run_config, load_config, save_config)
from timm_asap_lab.config_model import check_pooling, create_model_from_config, model_kwargs
from timm_asap_lab.files import check_replaceable, folder_lock, replace_dir, staging_dir
from timm_asap_lab.publish.card import build_model_card
from timm_asap_lab.publish.errors import HubPublishError, MissingEvaluationError
from timm_asap_lab.publish.results import EvalResults, find_eval_results, load_eval_results

__all__ = ['RUN_CONFIG_NAME', 'TRAIN_CONFIG_NAME', 'resolve_label_names', 'check_publishable', 'create_model_from_config',
           'check_pooling', 'load_checkpoint_state_dict', 'load_state_dict_checked', 'load_trained_model',
           'hub_config_json', 'build_hub_folder', 'resolve_run_config', 'export_output_dir', 'export_resolved',
           'HUB_FOLDER_FILES', 'PUBLISH_WRITER', 'entries_not_published', 'check_hub_output', 'publish_inputs',
           'METRICS_NAME', 'read_training_record']

RUN_CONFIG_NAME = 'run_config.yaml'
TRAIN_CONFIG_NAME = RUN_CONFIG_FILE  # the resolved config the fine-tuning tool writes beside model.safetensors
METRICS_NAME = 'metrics.json'  # what the fine-tuning run recorded (precision, device, epochs) beside it
PUBLISH_WRITER = 'timm-asap publish'
#: the files :func:`build_hub_folder` writes; besides them a Hub folder holds ``plots/`` with PNG files
HUB_FOLDER_FILES = frozenset({WEIGHTS_NAME, CONFIG_NAME, 'README.md', RUN_CONFIG_NAME, 'results.json', 'results.md'})
_PLOTS = 'plots'


def _written_by_publishing(config_path: Path) -> bool:
    """Whether a config.json carries the ``timm_asap`` record :func:`hub_config_json` writes."""
    try:
        record = json.loads(config_path.read_text(encoding='utf-8')).get('timm_asap')
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(record, dict) and 'version' in record


def entries_not_published(folder: str | Path) -> list[str]:
    """The entries of an existing folder that publishing did not write (a folder's name ends in ``/``).

    This defines a Hub folder written by :func:`build_hub_folder`, the only kind publishing replaces: its
    ``config.json`` carries the ``timm_asap`` record, and it holds nothing but :data:`HUB_FOLDER_FILES`
    (as files) and ``plots/`` with PNG files. A folder without that config.json is not ours at all, so
    every entry is listed; otherwise only the entries that are not among those.

    Example:
        >>> entries_not_published('output/hub/resnet18_cifar_asap.fmnist')  # doctest: +SKIP
        []
    """
    folder = Path(folder)
    entries = sorted((e for e in os.scandir(folder) if e.name != LOCK_NAME), key=lambda e: e.name)
    name = lambda e: e.name + ('/' if e.is_dir(follow_symlinks=False) else '')  # noqa: E731
    if not _written_by_publishing(folder / CONFIG_NAME):
        return [name(e) for e in entries]
    bad = []
    for e in entries:
        if e.name == _PLOTS and e.is_dir(follow_symlinks=False):
            bad += [f"{_PLOTS}/{p.name}" for p in sorted(os.scandir(e.path), key=lambda p: p.name)
                    if not (p.name.endswith('.png') and p.is_file(follow_symlinks=False))]
        elif not (e.name in HUB_FOLDER_FILES and e.is_file(follow_symlinks=False)):
            bad.append(name(e))
    return bad


def check_hub_output(output_dir: str | Path, inputs: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Refuse a Hub folder destination that publishing may not replace; the checks of
    :func:`timm_asap_lab.files.check_replaceable` with :func:`entries_not_published` as what is ours.

    Args:
        output_dir: the Hub folder to write.
        inputs: what the publishing reads (``{'checkpoint': path, ...}``); the folder may not hold them.

    Raises:
        OutputFolderError: one line naming the folder and what is there.
    """
    return check_replaceable(output_dir, writer=PUBLISH_WRITER, foreign=entries_not_published, inputs=inputs)


def _result_inputs(results: EvalResults | None) -> dict[str, Path]:
    if results is None:
        return {}
    files = {'evaluation results': results.path}
    if results.table is not None:
        files['evaluation table'] = results.table
    files.update({f"evaluation plot {p.name}": p for p in results.plots})
    return files


def read_training_record(path: str | Path, cfg: RunConfig) -> dict[str, Any]:
    """A fine-tuning run's ``metrics.json``, checked to be the run of ``cfg``'s architecture.

    The card reads what the run actually used from it (``amp``: the autocast dtype or ``'off'``,
    ``device``, ``world_size``, ``epochs_completed``, ``status``), not what its config asked for.

    Raises:
        HubPublishError: the file is unreadable, not a JSON object, or records another architecture.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise HubPublishError(f"{path}: cannot read the run's record ({type(e).__name__}: {e})") from None
    if not isinstance(record, dict):
        raise HubPublishError(f"{path}: expected a JSON object (the fine-tuning run's metrics), got "
                              f"{type(record).__name__}")
    arch = record.get('architecture')
    if arch is not None and arch != cfg.model.architecture:
        raise HubPublishError(f"{path}: records a run of {arch!r}, but the model published is "
                              f"{cfg.model.architecture!r}; publish the checkpoint of that run's folder")
    return record


def resolve_label_names(cfg: RunConfig, num_classes: int) -> list[str] | None:
    """Class names for config.json.

    ``data.label_names`` when given (one per class), else the Fashion-MNIST class names for that dataset.
    For 1000 classes without names, None: timm and transformers both resolve the ImageNet-1k names
    themselves (as for timm's own ImageNet-1k weights).

    Raises:
        ConfigError: names of the wrong count, or none for a dataset that is not ImageNet-1k.
    """
    names = cfg.data.label_names
    if names is None:
        from timm_asap_lab.data import is_fashion_mnist
        if is_fashion_mnist(cfg.data.dataset) and num_classes == len(FASHION_MNIST_LABELS):
            names = FASHION_MNIST_LABELS
    if names is not None:
        if len(names) != num_classes:
            raise ConfigError(f"data.label_names: expected {num_classes} names (model.num_classes), got {len(names)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"data.label_names: names must be unique, got {names}")
        return list(names)
    if num_classes == 1000:
        return None
    raise ConfigError(f"data.label_names: required for a {num_classes}-class model (config.json and the "
                      f"transformers pipeline name the classes), got none")


def check_publishable(cfg: RunConfig, repo_id: str | None = None) -> None:
    """Check that a run config carries what publishing needs.

    Needed: ``model.architecture`` and ``model.tag``; ``hub.repo_id`` (``<org>/<name>``), ``hub.license``
    and ``hub.datasets`` (card metadata); class names (``data.label_names``, implied for Fashion-MNIST
    and ImageNet-1k); ``data.mean``/``data.std`` for a model that is not 3-channel; a ``model.base`` timm
    name with a Hub id (card ``base_model``; a local base, a file, run folder or ``local-dir:``, has none
    and is named in the card text only).

    Raises:
        ConfigError: listing every missing or wrong item.
    """
    from timm_asap_lab.publish.card import base_model_repo
    problems = []
    repo_id = repo_id or cfg.hub.repo_id
    if not cfg.model.architecture:
        problems.append('model.architecture: empty')
    if not cfg.model.tag:
        problems.append('model.tag: empty (the weights are registered as <architecture>.<tag>)')
    if not repo_id or repo_id.count('/') != 1:
        problems.append(f"hub.repo_id: must look like '<org>/<name>', got {repo_id!r}")
    if not cfg.hub.license:
        problems.append('hub.license: empty (the card and pretrained_cfg need a licence)')
    if not cfg.hub.datasets:
        problems.append('hub.datasets: empty (the card metadata names the training data by Hub dataset id)')
    try:
        resolve_label_names(cfg, cfg.model.num_classes)
    except ConfigError as e:
        problems.append(str(e))
    if cfg.model.in_chans != 3 and (cfg.data.mean is None or cfg.data.std is None):
        problems.append(f"data.mean/data.std: required for in_chans={cfg.model.in_chans}")
    if base_source_kind(cfg.model.base) == 'name' and not cfg.model.base_file \
            and base_model_repo(cfg.model.base) is None:
        problems.append(f"model.base: {cfg.model.base!r} is not a timm checkpoint with a Hub id (card base_model)")
    if problems:
        raise ConfigError(f"{cfg.name or 'config'} cannot be published: " + '; '.join(problems))


def _json_safe(value: Any, key: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        raise HubPublishError(f"config.json: {key}={value!r} is not JSON-serialisable; give a JSON-safe "
                              "replacement in model.model_args") from None


def hub_config_json(model: nn.Module, cfg: RunConfig, path: str | Path,
                    label_names: list[str] | None) -> dict[str, Any]:
    """Write timm's config.json for ``model`` (via timm's own exporter) and return it.

    ``model_args`` drops ``num_classes`` (stored at the top level; transformers passes it separately and a
    second copy fails there) and must be JSON-safe; ``pretrained_cfg`` gets the run's normalisation, input
    size, crop, interpolation, licence and the paper; ``timm_asap`` records the pooling and package version.
    """
    from timm.models._hub import save_config_for_hf

    from timm_asap_lab.data import run_data_config
    resolved = run_data_config(cfg, model)
    data_config = {k: resolved[k] for k in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'crop_mode')
                   if resolved.get(k) is not None}
    model_config = {}
    if label_names is not None:
        model_config['label_names'] = list(label_names)
    try:
        save_config_for_hf(model, str(path), model_config=model_config, data_config=data_config)
    except ValueError as e:
        raise HubPublishError(f"config.json for {cfg.name}: {e}") from e
    config = json.loads(Path(path).read_text())
    model_args = {k: v for k, v in (config.get('model_args') or {}).items() if k not in ('num_classes', 'pretrained')}
    if cfg.model.pool != 'none':  # band mode and placement are not visible in the weights: loaders must be told
        model_args.setdefault('pool_mode', cfg.model.mode)
        if model_args['pool_mode'] != cfg.model.mode:
            raise HubPublishError(f"model.mode is {cfg.model.mode!r} but the model was built with "
                                  f"pool_mode={model_args['pool_mode']!r}")
        if cfg.model.pool_position != 'before':  # the default placement is left out: configs stay as they were
            model_args.setdefault('pool_position', cfg.model.pool_position)
        if model_args.get('pool_position', 'before') != cfg.model.pool_position:
            raise HubPublishError(f"model.pool_position is {cfg.model.pool_position!r} but the model was built with "
                                  f"pool_position={model_args['pool_position']!r}")
    config['model_args'] = _json_safe(model_args, 'model_args')
    pcfg = config['pretrained_cfg']
    pcfg['tag'] = cfg.model.tag or pcfg.get('tag')
    if cfg.hub.license:
        pcfg['license'] = cfg.hub.license
    pcfg['paper_ids'] = paper_ids(cfg.model.pool)
    pcfg['paper_name'] = ('Fix your downsampling ASAP! Be natively more robust via Aliasing and Spectral '
                          'Artifact free Pooling') if cfg.model.pool != 'flc' else \
        'FrequencyLowCut Pooling - Plug & Play against Catastrophic Overfitting'
    pooling = 'without spectral pooling (baseline)' if cfg.model.pool == 'none' else f"with {cfg.model.pool.upper()} pooling"
    pcfg['description'] = f"{cfg.model.architecture} {pooling}" + (f", fine-tuned from {cfg.model.base}"
                                                                  if cfg.model.base else '')
    pcfg.pop('origin_url', None)  # the base checkpoint's origin, not this model's
    placement = f" pool_position={cfg.model.pool_position}" if cfg.model.pool_position != 'before' else ''
    pcfg['notes'] = [f"pool={cfg.model.pool} mode={cfg.model.mode}{placement}"] + (
        [f"initialised from {cfg.model.base}"] if cfg.model.base else ['trained from random initialisation'])
    config['pretrained_cfg'] = {k: v for k, v in pcfg.items() if v is not None or k in ('pool_size', 'first_conv',
                                                                                          'classifier')}
    if cfg.model.in_chans == 1:  # transformers' pipeline hands over RGB: name our grey-converting processor
        config['image_processor_type'] = IMAGE_PROCESSOR_NAME
    config['timm_asap'] = {'version': __version__, 'pool': cfg.model.pool, 'mode': cfg.model.mode,
                           'pool_position': cfg.model.pool_position, 'base': cfg.model.base or None}
    if config['architecture'] != cfg.model.architecture:
        raise HubPublishError(f"config.json architecture {config['architecture']!r} differs from "
                              f"model.architecture {cfg.model.architecture!r}")
    atomic_write_text(path, json.dumps(config, indent=2) + '\n')
    return config


def build_hub_folder(model: nn.Module, cfg: RunConfig, output_dir: str | Path, *,
                     results: EvalResults | str | Path | None = None, allow_no_eval: bool = False,
                     repo_id: str | None = None, eval_model: str | None = None,
                     inputs: Mapping[str, str | os.PathLike] | None = None,
                     training: dict[str, Any] | str | Path | None = None) -> Path:
    """Write a complete, checked Hub folder for a trained model (atomically: all or nothing).

    Args:
        model: the trained model (its state dict is saved; it must match ``cfg.model``).
        cfg: the run configuration (model, data, recipe, hub).
        output_dir: the folder to write. An existing folder there is replaced as a whole, and only when it
            is empty or a Hub folder that publishing wrote (see :func:`check_hub_output`); it is locked
            while it is written (:func:`timm_asap_lab.files.folder_lock`).
        results: evaluation results (an :class:`EvalResults`, or a results.json / evaluation folder).
        allow_no_eval: publish without evaluation results.
        repo_id: Hub repository id for the card (default ``cfg.hub.repo_id``).
        eval_model: the model's name in the results (default: found by name, see
            :meth:`EvalResults.select_model`).
        inputs: the files the model was read from (``{'checkpoint': path}``); the folder may not hold
            them. The results' files are added.
        training: the fine-tuning run's ``metrics.json`` (path or its content): the card's precision, device
            and completed epochs come from it (None: the card says they were not recorded).

    Returns:
        ``output_dir``.

    Raises:
        OutputFolderError: ``output_dir`` holds what publishing did not write, or an input.
        FolderInUseError: another process is writing ``output_dir``.
        MissingEvaluationError: no results and ``allow_no_eval`` not set.
        ConfigError: missing repo id or label names, or the model's pooling layers differ from
            ``model.pool``/``model.mode``.
        IntegrityError: the written folder failed its checks (nothing is left behind).
    """
    repo_id = repo_id or cfg.hub.repo_id
    check_publishable(cfg, repo_id)
    if results is not None and not isinstance(results, EvalResults):
        results = load_eval_results(results)
    if results is None and not allow_no_eval:
        raise MissingEvaluationError(
            f"refusing to publish {cfg.name} without evaluation results: evaluate it (timm-asap-evaluate) and "
            "pass its output folder, or allow publishing without results (--allow-no-eval)")
    eval_model = results.select_model(cfg.model.architecture, cfg.name, eval_model) if results is not None else None
    if training is not None and not isinstance(training, dict):
        training = read_training_record(training, cfg)
    num_classes = getattr(model, 'num_classes', cfg.model.num_classes)
    if num_classes != cfg.model.num_classes:
        raise ConfigError(f"model.num_classes: the model has {num_classes} classes, the config says "
                          f"{cfg.model.num_classes}")
    label_names = resolve_label_names(cfg, num_classes)
    check_pooling(model, cfg.model.pool, cfg.model.mode, repr(cfg.model.architecture), cfg.model.pool_position)
    output_dir = Path(output_dir)
    inputs = {**(inputs or {}), **_result_inputs(results)}
    check_hub_output(output_dir, inputs)
    with folder_lock(output_dir, PUBLISH_WRITER), staging_dir(output_dir) as tmp:
        save_safetensors(model.state_dict(), tmp / WEIGHTS_NAME,
                         metadata={**weights_metadata(model, cfg.model.architecture, model_kwargs(cfg)),
                                   'timm_asap': __version__})
        config = hub_config_json(model, cfg, tmp / CONFIG_NAME, label_names)
        save_config(cfg, tmp / RUN_CONFIG_NAME)
        plots = []
        if results is not None:
            shutil.copyfile(results.path, tmp / 'results.json')
            if results.table is not None:
                shutil.copyfile(results.table, tmp / 'results.md')
            for p in results.plots:
                dest = Path('plots') / p.name
                (tmp / 'plots').mkdir(exist_ok=True)
                shutil.copyfile(p, tmp / dest)
                plots.append(dest.as_posix())
        num_params = sum(p.numel() for p in model.parameters())
        card = build_model_card(cfg, repo_id, config, results, plots, num_params, RUN_CONFIG_NAME, eval_model,
                                training)
        atomic_write_text(tmp / 'README.md', card)
        verify_hub_folder(tmp)
        replace_dir(tmp, output_dir, writer=PUBLISH_WRITER, foreign=entries_not_published, inputs=inputs)
    return output_dir


def resolve_run_config(config: RunConfig | str | Path | None, checkpoint: str | Path,
                       overrides: Sequence[str] = ()) -> RunConfig:
    """The run config to publish with.

    The fine-tuning tool saves the resolved config (``config.yaml``) beside ``model.safetensors``: it
    describes what was trained, so its model, data and train sections are used. The hub section and the
    weight tag (``model.tag``) come from ``config`` when given (where to publish, under which name), else
    from the saved config. Both must name the same architecture, class count and input channels.
    ``overrides`` (``section.key=value``) apply to the result.

    Raises:
        ConfigError: no config anywhere, the two disagree, or a bad override.
    """
    ckpt = Path(checkpoint)
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    saved_path = find_run_config(ckpt)
    saved = load_config(saved_path) if saved_path is not None else None
    given = config if isinstance(config, RunConfig) or config is None else load_config(config)
    if saved is None and given is None:
        raise ConfigError(f"no run config: pass a hub_configs YAML, or a checkpoint folder holding "
                          f"{TRAIN_CONFIG_NAME} (looked in {folder})")
    if saved is None or given is None:
        cfg = saved or given
    else:
        for key in ('architecture', 'num_classes', 'in_chans'):
            a, b = getattr(saved.model, key), getattr(given.model, key)
            if a != b:
                raise ConfigError(f"model.{key}: the checkpoint's {folder / TRAIN_CONFIG_NAME} says {a!r}, the "
                                  f"given config says {b!r}")
        saved.hub = given.hub
        saved.model.tag = given.model.tag or saved.model.tag
        cfg = saved
    return apply_overrides(cfg, list(overrides)) if overrides else cfg


def _checkpoint_file(checkpoint: str | Path) -> Path:
    ckpt = Path(checkpoint)
    if ckpt.is_dir():
        if (ckpt / WEIGHTS_NAME).is_file():
            return ckpt / WEIGHTS_NAME
        candidates = sorted(p.name for p in ckpt.iterdir() if p.name.endswith(('.safetensors',) + PICKLE_SUFFIXES))
        raise IntegrityError(ckpt / WEIGHTS_NAME, f"checkpoint not found in the folder (it holds {candidates})")
    return ckpt


def publish_inputs(checkpoint: str | Path) -> dict[str, Path]:
    """The files publishing reads for a checkpoint (its weights and run config), by description, for
    :func:`check_hub_output`."""
    ckpt_file = _checkpoint_file(checkpoint)
    inputs = {'checkpoint': ckpt_file}
    run_config = find_run_config(ckpt_file)
    if run_config is not None:
        inputs['run config'] = run_config
    return inputs


def export_output_dir(checkpoint: str | Path, output_dir: str | Path, *, config: RunConfig | str | Path | None = None,
                      eval_dir: str | Path | None = None, allow_no_eval: bool = False,
                      repo_id: str | None = None, eval_model: str | None = None,
                      overrides: Sequence[str] = ()) -> Path:
    """Write the Hub folder of a trained checkpoint (no network): a dry-run publish.

    Args:
        checkpoint: ``model.safetensors`` (or a timm ``.pth.tar``), or the fine-tuning output folder holding
            ``model.safetensors`` and ``config.yaml``.
        output_dir: Hub folder to write (an existing one is replaced as a whole only when :func:`check_hub_output`
            allows it).
        config: hub_configs YAML (path or shipped name) or RunConfig; default: the checkpoint folder's
            ``config.yaml``.
        eval_dir: evaluation output folder (``results.json``, table, plots); default: ``<checkpoint
            folder>/eval`` or the checkpoint folder itself, whichever holds a results.json.
        allow_no_eval: write the folder without evaluation results.
        repo_id: override ``hub.repo_id``.
        eval_model: the model's name in the evaluation results (default: found by name).
        overrides: ``section.key=value`` changes to the resolved run config (:func:`resolve_run_config`).

    Returns:
        ``output_dir``.
    """
    return export_resolved(resolve_run_config(config, checkpoint, overrides), checkpoint, output_dir,
                           eval_dir=eval_dir, allow_no_eval=allow_no_eval, repo_id=repo_id, eval_model=eval_model)


def export_resolved(cfg: RunConfig, checkpoint: str | Path, output_dir: str | Path, *,
                    eval_dir: str | Path | None = None, allow_no_eval: bool = False,
                    repo_id: str | None = None, eval_model: str | None = None) -> Path:
    """:func:`export_output_dir` with the run config already resolved (:func:`resolve_run_config`).

    The output folder is checked (:func:`check_hub_output`) before the model is loaded; the checkpoint
    folder's ``metrics.json`` (when there) gives the card what the run used.
    """
    ckpt_file = _checkpoint_file(checkpoint)
    inputs = publish_inputs(ckpt_file)
    check_hub_output(output_dir, inputs)
    if eval_dir is not None:
        results = load_eval_results(eval_dir)
    else:
        results = find_eval_results(ckpt_file.parent / 'eval', ckpt_file.parent)
    model = load_trained_model(cfg, ckpt_file)
    record = ckpt_file.parent / METRICS_NAME
    return build_hub_folder(model, cfg, output_dir, results=results, allow_no_eval=allow_no_eval, repo_id=repo_id,
                            eval_model=eval_model, inputs=inputs,
                            training=record if record.is_file() else None)
