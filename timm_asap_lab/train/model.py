"""The base checkpoint of a run: where ``model.base`` points, the model it builds, its conversion into the
run's model, and the distillation teacher (the run's own model comes from
:func:`timm_asap_lab.config_model.create_model_from_config`).

``model.base`` names the base checkpoint in one of these forms (:func:`resolve_base`):

* a timm name with tag, ``resnet50.tv_in1k``: timm's pretrained weights (downloaded); with
  ``model.base_file`` a local weights file of that architecture instead;
* ``hf-hub:<org>/<name>[@revision]`` or ``local-dir:<folder>``: timm's Hub format (config.json names the
  architecture and the model_args, model.safetensors holds the weights); both are checked first
  (:mod:`timm_asap.hub.integrity`) and load offline from a filled cache;
* a ``.safetensors``/``.pth`` file whose architecture is recorded: in this project's safetensors header,
  or in the fine-tuning run's ``config.yaml`` beside it;
* a fine-tuning run folder of this project (``config.yaml`` + ``model.safetensors``), e.g. a baseline
  trained by ``timm-asap finetune`` or by the study (``<study>/runs/<model>/seed0``).

:func:`resolve_run_config_base` checks a run against its base before anything is built: the run's
``model.architecture`` must be the base architecture's ``_asap``/``_flc`` variant (or the base architecture
itself), and the model_args recorded with the base (e.g. the ``channels`` of a narrowed network) are
added to the run's ``model.model_args``, so the converted model and the base have the same structure;
a recorded value that differs from the run's is an error.
"""
from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from timm.models import get_pretrained_cfg, load_state_dict

from timm_asap.hub.errors import IntegrityError, UnknownModelError
from timm_asap.hub.integrity import (ARCHITECTURE_KEY, CONFIG_NAME, MODEL_ARGS_KEY, WEIGHTS_NAME, read_config_json,
                                     read_safetensors_header, verify_hub_folder, verify_safetensors)
from timm_asap_lab.config import (RUN_CONFIG_FILE, ConfigError, RunConfig, base_source_kind, config_from_dict,
                                  find_run_config, load_config)

__all__ = ['BaseSource', 'BaseModel', 'resolve_base', 'resolve_run_config_base', 'check_conversion',
           'merge_model_args', 'load_base_model', 'convert_from_base', 'create_teacher']

_logger = logging.getLogger(__name__)

# create_model kwargs that a base records but the run sets itself (timm adapts the stem and the classifier)
_RUN_OWN_ARGS = ('num_classes', 'in_chans', 'pretrained', 'pretrained_cfg', 'pretrained_cfg_overlay')


_NO_TEACHER = ("train.distill: distillation needs a teacher; set model.base to the base checkpoint (a timm name, "
               "hf-hub:<org>/<name>, local-dir:<folder>, a .safetensors/.pth file or a fine-tuning run folder), or "
               "train.distill.teacher")


def _register_models() -> None:
    # registers the ASAP/FLC architectures in timm's registry (present once the model package is built)
    importlib.import_module('timm_asap.models')


def _one_line(e: BaseException, limit: int = 400) -> str:
    """An exception's text on one line (timm's and torch's load errors span many), cut at ``limit`` chars."""
    text = ' '.join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + ' ...'


@dataclass(frozen=True)
class BaseSource:
    """A base checkpoint, resolved: what builds it and where its weights are.

    Attributes:
        name: ``model.base`` as given.
        kind: ``'timm'`` (timm's pretrained weights of a name), ``'file'`` (a weights file), ``'run'`` (a
            fine-tuning run folder) or ``'hub'`` (``hf-hub:``/``local-dir:``, or a folder holding config.json).
        architecture: the base's registered timm architecture.
        create_name: the name ``timm.create_model`` builds it from (``local-dir:<folder>`` for Hub sources:
            the checked files themselves).
        file: the weights file of ``'file'``/``'run'`` sources (``''`` otherwise).
        model_args: ``timm.create_model`` kwargs recorded with the checkpoint (the network's structure),
            without ``num_classes``/``in_chans``, which each run sets itself.
        num_classes: classes of its classifier, where known.
        in_chans: its input channels, where known.
        mean: input normalisation it was trained with, where recorded.
        std: likewise.
    """

    name: str
    kind: str
    architecture: str
    create_name: str
    file: str = ''
    model_args: dict = field(default_factory=dict)
    num_classes: int | None = None
    in_chans: int | None = None
    mean: tuple | None = None
    std: tuple | None = None


@dataclass
class BaseModel:
    """The base model with its pretrained weights.

    Attributes:
        model: the model, built with the run's ``num_classes`` and ``in_chans``.
        name: ``model.base`` as given.
        pretrained_classes: classes of the pretrained classifier.
        head_loaded: the pretrained classifier was kept (its class count equals ``model.num_classes``);
            otherwise timm left the classifier freshly initialised.
        source: where it came from (:func:`resolve_base`).
    """

    model: nn.Module
    name: str
    pretrained_classes: int | None
    head_loaded: bool
    source: BaseSource | None = None


# ---------------------------------------------------------------------------------------------------
# resolving model.base
# ---------------------------------------------------------------------------------------------------

def _architecture(name: str, key: str, source: str) -> str:
    try:
        from timm_asap.models import check_model_name
        return check_model_name(name, source)
    except UnknownModelError as e:
        raise ConfigError(f"{key} {source!r}: {_one_line(e)}") from None


def _split_args(recorded: dict | None) -> tuple[dict, int | None, int | None]:
    """(structure kwargs, num_classes, in_chans) of recorded create_model kwargs."""
    recorded = dict(recorded or {})
    num_classes, in_chans = recorded.get('num_classes'), recorded.get('in_chans')
    return {k: v for k, v in recorded.items() if k not in _RUN_OWN_ARGS}, num_classes, in_chans


def _file_classes(path: str, classifier: str | None) -> int | None:
    if not classifier:
        return None
    sd = load_state_dict(path)
    w = sd.get(f'{classifier}.weight')
    return int(w.shape[0]) if w is not None and w.ndim >= 1 else None


def _timm_source(name: str) -> BaseSource:
    arch = _architecture(name, 'model.base', name)
    pcfg = get_pretrained_cfg(name)
    if pcfg is None or not pcfg.has_weights:
        raise ConfigError(
            f"model.base {name!r}: timm has no pretrained weights for it; give the base checkpoint itself: "
            f"model.base=<fine-tuning run folder | .safetensors/.pth file | local-dir:<folder> | hf-hub:<org>/<name>>, "
            f"or model.base={arch} with model.base_file=<weights file>")
    return BaseSource(name, 'timm', arch, name, num_classes=pcfg.num_classes, in_chans=pcfg.input_size[0],
                      mean=pcfg.mean, std=pcfg.std)


def _run_config_of(path: Path) -> RunConfig | None:
    """The fine-tuning run config beside a weights file, if any."""
    found = find_run_config(path)
    if found is None:
        return None
    try:
        return load_config(found)
    except ConfigError as e:
        raise ConfigError(f"model.base {str(path)!r}: the run config beside it cannot be read: {e}") from None


def _file_header(path: Path, key: str) -> dict[str, str]:
    """The safetensors header metadata of ``path`` after checking the file ({} for other formats)."""
    if path.suffix != '.safetensors':
        return {}
    try:
        verify_safetensors(path)
        return read_safetensors_header(path)[1]
    except IntegrityError as e:
        raise ConfigError(f"{key}: {e}") from None


def _file_architecture(name: str, path: Path, named: str, recorded: str | None, run: RunConfig | None) -> str:
    """The architecture of a weights file: ``named`` (checked against the header), else the header's, else
    that of the run config beside it."""
    if named:
        arch = _architecture(named, 'model.base', named)
        if recorded and recorded != arch:
            raise ConfigError(f"model.base_file {str(path)!r} holds weights of architecture {recorded!r} (its header "
                              f"records it), model.base names {arch!r}: name the architecture the weights were "
                              f"trained as")
        return arch
    arch = recorded or (run.model.architecture if run is not None else '')
    if not arch:
        raise ConfigError(f"model.base {name!r}: the file does not record its architecture (no "
                          f"'{ARCHITECTURE_KEY}' in a safetensors header, no {RUN_CONFIG_FILE} beside it): set "
                          f"model.base to the architecture (e.g. preactresnet18) and model.base_file to the file")
    return _architecture(arch, 'model.base', name)


def _file_args(name: str, meta: dict[str, str], run: RunConfig | None) -> tuple[dict, int | None, int | None]:
    """(structure kwargs, num_classes, in_chans) a weights file records: its header, else its run config."""
    if MODEL_ARGS_KEY in meta:
        try:
            return _split_args(json.loads(meta[MODEL_ARGS_KEY]))
        except (json.JSONDecodeError, TypeError, ValueError):
            raise ConfigError(f"model.base {name!r}: header entry {MODEL_ARGS_KEY} is not a JSON object: "
                              f"{meta[MODEL_ARGS_KEY]!r}") from None
    if run is not None:
        return _split_args(run.model.model_args)[0], run.model.num_classes, run.model.in_chans
    return {}, None, None


def _file_source(name: str, path: Path, named: str = '', kind: str = 'file') -> BaseSource:
    """A weights file; its architecture from ``named`` (``model.base`` with ``model.base_file``), its
    safetensors header or the run config beside it."""
    key = 'model.base_file' if named else 'model.base'
    if not path.is_file():
        raise ConfigError(f"{key} {str(path)!r}: no such file")
    meta = _file_header(path, key)
    run = _run_config_of(path)
    arch = _file_architecture(name, path, named, meta.get(ARCHITECTURE_KEY), run)
    if run is not None and run.model.architecture != arch:
        run = None  # a config.yaml beside it that describes another model
    args, num_classes, in_chans = _file_args(name, meta, run)
    pcfg = get_pretrained_cfg(named or arch)
    if num_classes is None:
        try:
            num_classes = _file_classes(str(path), getattr(pcfg, 'classifier', None))
        except (OSError, RuntimeError, ValueError) as e:
            raise ConfigError(f"{key} {str(path)!r}: cannot be read: {_one_line(e)}") from None
    mean = std = None
    if run is not None:
        mean, std = run.data.mean, run.data.std
    elif named and pcfg is not None:
        mean, std = pcfg.mean, pcfg.std
    return BaseSource(name, kind, arch, named or arch, str(path), args, num_classes, in_chans,
                      tuple(mean) if mean else None, tuple(std) if std else None)


def _hub_source(name: str, folder: Path | None = None) -> BaseSource:
    """``hf-hub:<repo>`` (downloaded or cached, checked) or a local Hub folder (checked)."""
    from huggingface_hub.errors import HfHubHTTPError

    from timm_asap.hub.load import download_hub_files
    try:
        if name.startswith('hf-hub:'):
            folder = download_hub_files(name[len('hf-hub:'):])
        else:
            folder = Path(name[len('local-dir:'):] if folder is None else folder).expanduser()
            verify_hub_folder(folder, allow_pickle=True)
        config = read_config_json(folder / CONFIG_NAME)
    except (IntegrityError, UnknownModelError, HfHubHTTPError) as e:
        raise ConfigError(f"model.base {name!r}: {_one_line(e)}") from None
    arch = _architecture(config['architecture'], 'model.base', name)
    args, num_classes, in_chans = _split_args(config.get('model_args'))
    pcfg = config['pretrained_cfg']
    num_classes = config.get('num_classes', pcfg.get('num_classes')) if num_classes is None else num_classes
    in_chans = in_chans or (pcfg.get('input_size') or [None])[0]
    mean, std = pcfg.get('mean'), pcfg.get('std')
    return BaseSource(name, 'hub', arch, f"local-dir:{Path(folder).resolve()}", '', args, num_classes, in_chans,
                      tuple(mean) if mean else None, tuple(std) if std else None)


def resolve_base(base: str, base_file: str = '') -> BaseSource:
    """Where ``model.base`` (with ``model.base_file``) points: the forms of this module's docstring.

    Args:
        base: ``model.base``.
        base_file: ``model.base_file`` (then ``base`` must be a timm name: the file's architecture).

    Returns:
        The resolved source; nothing is built yet.

    Raises:
        ConfigError: one line naming the value: an unknown architecture, a missing or damaged file, a
            folder that is neither a run nor a Hub folder, a file whose architecture is not recorded, a
            timm name without pretrained weights.
        HubDownloadError: an ``hf-hub:`` repository neither reachable nor cached.

    Example:
        >>> resolve_base('resnet50.tv_in1k').architecture
        'resnet50'
    """
    _register_models()
    kind = base_source_kind(base)
    if base_file:
        if kind != 'name':
            raise ConfigError(f"model.base_file {base_file!r} is given, so model.base must name the base's timm "
                              f"architecture (e.g. preactresnet18 or resnet50.tv_in1k), got {base!r}; or give the "
                              f"file or folder as model.base and leave model.base_file empty")
        return _file_source(base, Path(base_file).expanduser(), named=base)
    if kind == 'none':
        raise ConfigError("model.base: empty; name the base checkpoint")
    if kind == 'name':
        return _timm_source(base)
    if kind in ('hf-hub', 'local-dir'):
        return _hub_source(base)
    path = Path(base).expanduser()
    if path.is_dir():
        if (path / RUN_CONFIG_FILE).is_file():
            if not (path / WEIGHTS_NAME).is_file():
                raise ConfigError(f"model.base {base!r}: the run folder holds no {WEIGHTS_NAME} (has the run "
                                  f"finished?); it holds {sorted(p.name for p in path.iterdir())}")
            return _file_source(base, path / WEIGHTS_NAME, kind='run')
        if (path / CONFIG_NAME).is_file():
            return _hub_source(base, path)
        raise ConfigError(f"model.base {base!r}: a folder, but neither a fine-tuning run ({RUN_CONFIG_FILE} + "
                          f"{WEIGHTS_NAME}) nor a Hub folder ({CONFIG_NAME} + {WEIGHTS_NAME}); it holds "
                          f"{sorted(p.name for p in path.iterdir())[:10]}")
    if path.is_file():
        return _file_source(base, path)
    hint = f" (a Hub repository is written hf-hub:{base})" if base.count('/') == 1 and not base.startswith(('.', '/', '~')) else ''
    raise ConfigError(f"model.base {base!r}: no such file or folder{hint}")


def check_conversion(architecture: str, source: BaseSource) -> None:
    """Check that ``architecture`` converts the base: its ``_asap``/``_flc`` variant, or the base
    architecture itself (fine-tuning the base unchanged).

    Raises:
        ConfigError: naming both architectures and the variants that would fit.
    """
    from timm_asap.models import get_variant, list_variants
    arch = architecture.split('.')[0]
    if arch == source.architecture:
        return
    try:
        variant = get_variant(arch)
    except UnknownModelError:
        variant = None
    if variant is not None and variant.pool != 'none' and variant.base == source.architecture:
        return
    fits = [v for v in list_variants(f"{source.architecture}_*") if get_variant(v).base == source.architecture
            and get_variant(v).pool != 'none']
    hint = (f"set model.architecture to {' or '.join(fits)}" if fits else
            f"timm_asap registers no ASAP/FLC variant of {source.architecture!r} (timm_asap.asapify converts any model)")
    raise ConfigError(f"model.architecture {architecture!r} is not a conversion of the base {source.name!r}, whose "
                      f"architecture is {source.architecture!r}: {hint}")


def _comparable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, sort_keys=True))  # tuples and lists compare equal
    except (TypeError, ValueError):
        return value


def merge_model_args(source: BaseSource, model_args: dict | None) -> dict:
    """``model_args`` plus the kwargs recorded with the base that it does not set.

    Raises:
        ConfigError: a key set in both to different values, naming both.

    Example:
        >>> src = BaseSource('runs/base', 'run', 'preactresnet18', 'preactresnet18', model_args={'stem_chs': 8})
        >>> merge_model_args(src, {'drop_rate': 0.1})
        {'drop_rate': 0.1, 'stem_chs': 8}
    """
    model_args = dict(model_args or {})
    clash = sorted(k for k, v in source.model_args.items()
                   if k in model_args and _comparable(model_args[k]) != _comparable(v))
    if clash:
        ours = ', '.join(f"{k}={model_args[k]!r}" for k in clash)
        theirs = ', '.join(f"{k}={source.model_args[k]!r}" for k in clash)
        raise ConfigError(f"model.model_args {ours} disagrees with the base {source.name!r}, which was built with "
                          f"{theirs}: the converted model must have the base's structure; leave these keys out of "
                          f"model.model_args (the base's values apply) or use a base built with them")
    return {**model_args, **{k: v for k, v in source.model_args.items() if k not in model_args}}


def _stats_differ(a, b) -> bool:
    # other channel counts (grey data from an RGB base) are timm's to adapt: only same-length stats compare
    return a is not None and b is not None and len(a) == len(b) and any(abs(x - y) > 1e-4 for x, y in zip(a, b))


def resolve_run_config_base(cfg: RunConfig) -> tuple[RunConfig, BaseSource | None]:
    """Check a run against its base and add the base's recorded model_args to ``model.model_args``.

    Called before a run is built (fresh or resumed), so the saved ``config.yaml`` describes the model
    trained. A normalisation (``data.mean``/``data.std``) other than the one the base records is logged
    as a warning: the converted model starts from weights trained on other input statistics.

    Args:
        cfg: the run configuration.

    Returns:
        ``(cfg, source)``: ``cfg`` itself when nothing is added (else a validated copy), and the base's
        source (None without ``model.base``).

    Raises:
        ConfigError: a bad base (:func:`resolve_base`), an architecture that does not convert it
            (:func:`check_conversion`), disagreeing model_args (:func:`merge_model_args`), a
            ``model.base_file`` without ``model.base``, or distillation without a teacher.
    """
    m = cfg.model
    if cfg.train.distill.enabled and not (cfg.train.distill.teacher or m.base):
        raise ConfigError(_NO_TEACHER)
    if not m.base:
        if m.base_file:
            raise ConfigError(f"model.base_file {m.base_file!r} is given but model.base is empty: set model.base to "
                              f"the file's architecture (e.g. preactresnet18), or give the file as model.base")
        return cfg, None
    source = resolve_base(m.base, m.base_file)
    check_conversion(m.architecture, source)
    merged = merge_model_args(source, m.model_args)
    d = cfg.data
    if _stats_differ(d.mean, source.mean) or _stats_differ(d.std, source.std):
        _logger.warning(f"the base {m.base!r} was trained with mean {list(source.mean or [])} / std "
                        f"{list(source.std or [])}, this run normalises with {d.mean} / {d.std}: set data.mean and "
                        f"data.std to the base's unless the change is meant")
    if merged == m.model_args:
        return cfg, source
    data = cfg.to_dict()
    data['model']['model_args'] = merged
    return config_from_dict(data), source


# ---------------------------------------------------------------------------------------------------
# building the base, conversion, teacher
# ---------------------------------------------------------------------------------------------------

def _create(source: BaseSource, num_classes: int, in_chans: int, model_args: dict) -> nn.Module:
    overlay = None
    if source.file:
        overlay = {'file': source.file}
        if source.num_classes is not None:
            overlay['num_classes'] = source.num_classes
        pcfg = get_pretrained_cfg(source.create_name)
        if source.in_chans is not None and pcfg is not None and pcfg.input_size:
            overlay['input_size'] = (source.in_chans, *pcfg.input_size[1:])  # timm adapts the stem from there
    return timm.create_model(source.create_name, pretrained=True, num_classes=num_classes, in_chans=in_chans,
                             pretrained_cfg_overlay=overlay, **model_args)


def load_base_model(name: str, num_classes: int, in_chans: int, file: str = '',
                    model_args: dict | None = None) -> BaseModel:
    """The base model of ``model.base`` with its pretrained weights, fitted to ``num_classes``/``in_chans``.

    timm's loader does the fitting: a classifier of another class count is left freshly initialised,
    and the first convolution is adapted to ``in_chans``.

    Args:
        name: ``model.base`` in any of the forms of :func:`resolve_base`, e.g. ``resnet50.tv_in1k``,
            ``hf-hub:org/name``, ``local-dir:/models/base``, ``runs/base``.
        num_classes: classifier outputs wanted.
        in_chans: input channels wanted.
        file: ``model.base_file``: a local weights file for a ``name`` that names a timm architecture.
        model_args: further ``timm.create_model`` arguments (the run's ``model.model_args``, so the base
            has the same structure as the converted model); the base's recorded ones are added.

    Raises:
        ConfigError: unknown model or tag, no pretrained weights, an unreadable file, or weights that do
            not fit the architecture built (one line).
        HubDownloadError: an ``hf-hub:`` base neither reachable nor cached.
    """
    source = resolve_base(name, file)
    args = merge_model_args(source, model_args)
    try:
        model = _create(source, num_classes, in_chans, args)
    except RuntimeError as e:
        raise ConfigError(f"base model {name!r}: {_one_line(e)}") from None
    except (OSError, ValueError) as e:
        where = f"file {source.file!r}" if source.file else source.create_name
        raise ConfigError(f"base model {name!r}: pretrained weights unavailable ({where}): {_one_line(e)}") from None
    head_loaded = source.num_classes is not None and source.num_classes == num_classes
    return BaseModel(model, name, source.num_classes, head_loaded, source)


def convert_from_base(model: nn.Module, base: BaseModel) -> None:
    """Load the base model's weights into ``model`` (zero-shot conversion: same keys and shapes).

    Raises:
        ConfigError: the state dicts differ in keys or shapes (the base is not this architecture's base).
    """
    src = base.model.state_dict()
    dst = model.state_dict()
    missing = sorted(set(dst) - set(src))
    unexpected = sorted(set(src) - set(dst))
    shapes = [f"{k}: {tuple(src[k].shape)} vs {tuple(dst[k].shape)}" for k in sorted(set(src) & set(dst))
              if src[k].shape != dst[k].shape]
    if missing or unexpected or shapes:
        raise ConfigError(f"model.base {base.name!r} does not fit {type(model).__name__}: "
                          f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}")
    model.load_state_dict(src, strict=True)
    _logger.info(f"converted {base.name} into the model: {len(src)} tensors loaded"
                 + ('' if base.head_loaded else
                    f" (classifier freshly initialised: base has {base.pretrained_classes} classes)"))


def create_teacher(cfg: RunConfig, base: BaseModel | None = None) -> BaseModel:
    """The distillation teacher: ``train.distill.teacher``, else ``model.base``, with its own classifier.

    The teacher is loaded as the base is (:func:`load_base_model`, any form of :func:`resolve_base`); when
    it is ``model.base`` it gets ``model.base_file`` and the run's ``model_args``.

    Args:
        cfg: the run configuration.
        base: the already loaded base model, reused when it is the teacher.

    Raises:
        ConfigError: no teacher named, or a teacher whose pretrained classifier does not have
            ``model.num_classes`` outputs (its logits would be meaningless).
    """
    name = cfg.train.distill.teacher or cfg.model.base
    if not name:
        raise ConfigError(_NO_TEACHER)
    if base is not None and base.name == name:
        teacher = base
    else:
        same = name == cfg.model.base
        teacher = load_base_model(name, cfg.model.num_classes, cfg.model.in_chans,
                                  cfg.model.base_file if same else '', cfg.model.model_args if same else None)
    if not teacher.head_loaded:
        raise ConfigError(f"train.distill: teacher {name!r} was trained for {teacher.pretrained_classes} classes, "
                          f"model.num_classes is {cfg.model.num_classes}; distillation needs a teacher "
                          f"for the same classes")
    teacher.model.eval()
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    return teacher
