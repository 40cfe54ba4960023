"""Writing and checking the files of a Hub folder: safetensors weights and timm's config.json.

Weights are written with a sha256 of their tensor data in the safetensors header metadata
(``timm_asap.data_sha256``), so a file can be checked on its own wherever it lies (output folder,
``local-dir:`` folder, Hub cache). The checks read only the header (and hash the data), never unpickle
anything, and name the offending file in every error.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from timm_asap._files import atomic_write_bytes
from timm_asap.hub.errors import IntegrityError
from timm_asap.models.convert import pooling_signature
from timm_asap.models.registry import check_architecture

__all__ = ['WEIGHTS_NAME', 'CONFIG_NAME', 'DIGEST_KEY', 'ARCHITECTURE_KEY', 'POOLING_KEY', 'MODEL_ARGS_KEY',
           'PICKLE_SUFFIXES', 'recorded_model_args', 'config_model_args',
           'save_safetensors', 'read_safetensors_header', 'verify_safetensors', 'load_safetensors', 'read_config_json',
           'config_model', 'expected_state_shapes', 'weights_metadata', 'check_recorded_model', 'check_weights_match_config',
           'state_shape_mismatch', 'verify_hub_folder']

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
DIGEST_KEY = 'timm_asap.data_sha256'
PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.pkl', '.pickle', '.ckpt', '.tar')
ARCHITECTURE_KEY = 'architecture'
POOLING_KEY = 'timm_asap.pooling'
MODEL_ARGS_KEY = 'timm_asap.model_args'  # JSON of the timm.create_model kwargs that rebuild the model


def _cpu_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, seen = {}, set()
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"state_dict[{k!r}] is a {type(v).__name__}, only tensors can be saved")
        t = v.detach().to('cpu').contiguous()
        if t.numel():
            storage = t.untyped_storage().data_ptr()
            if storage in seen:
                t = t.clone()  # safetensors refuses tensors sharing storage
            else:
                seen.add(storage)
        out[k] = t
    return out


def _data_section(blob: bytes) -> memoryview:
    n = int.from_bytes(blob[:8], 'little')
    return memoryview(blob)[8 + n:]


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path,
                     metadata: dict[str, str] | None = None) -> str:
    """Write ``state_dict`` as safetensors, atomically, with the sha256 of its tensor data in the header.

    Args:
        state_dict: name -> tensor (any device; saved from CPU copies).
        path: destination file.
        metadata: extra string metadata for the header.

    Returns:
        The hex sha256 of the tensor data section.
    """
    tensors = _cpu_tensors(state_dict)
    meta = {'format': 'pt', **{str(k): str(v) for k, v in (metadata or {}).items()}}
    meta.pop(DIGEST_KEY, None)
    first = safetensors.torch.save(tensors, metadata=meta)
    digest = hashlib.sha256(_data_section(first)).hexdigest()
    blob = safetensors.torch.save(tensors, metadata={**meta, DIGEST_KEY: digest})
    if _data_section(blob) != _data_section(first):  # serialisation must be deterministic for the digest to hold
        raise RuntimeError(f"safetensors serialisation of {path} was not reproducible; refusing to write it")
    atomic_write_bytes(path, blob)
    return digest


def _header_problem(size: int, detail: str) -> str:
    """Our explanation of a safetensors header error (safetensors' own text kept in brackets)."""
    if 'too small' in detail:
        return f"only {size} bytes: too short to be a safetensors file (truncated?)"
    if 'too large' in detail:
        return (f"header length does not fit in the file's {size} bytes (truncated, corrupted or not a "
                f"safetensors file)")
    if 'not fully covered' in detail or 'incomplete' in detail:
        return (f"its {size} bytes do not match the tensors its header describes: the file is truncated (or has "
                f"trailing bytes) [{detail}]")
    if any(w in detail for w in ('invalid type', 'unknown variant', 'missing field', 'invalid shape')):
        return f"malformed header entry: a tensor's dtype, shape or offsets are invalid (corrupted header) [{detail}]"
    return f"safetensors header is not valid JSON; the file is corrupted [{detail}]"


def read_safetensors_header(path: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """Read a safetensors header with safetensors' ``safe_open`` (which checks it against the file size).

    Returns:
        ``(tensors, metadata, data_start)``: tensor name -> ``{'dtype', 'shape'}``, the
        ``__metadata__`` strings, and the byte offset of the data section.

    Raises:
        IntegrityError: the file is missing, too short, truncated, has trailing bytes, or its header is
            not valid safetensors (naming the file; safetensors' own errors do not).
    """
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(path, 'weights file not found')
    size = path.stat().st_size
    try:
        with safe_open(str(path), framework='pt') as f:
            metadata = dict(f.metadata() or {})
            tensors = {}
            for name in f.keys():
                view = f.get_slice(name)
                tensors[name] = {'dtype': view.get_dtype(), 'shape': list(view.get_shape())}
    except SafetensorError as e:
        raise IntegrityError(path, _header_problem(size, str(e).split('header: ', 1)[-1])) from None
    with open(path, 'rb') as f:  # the format: an 8-byte little-endian header length, the header, the data
        data_start = 8 + int.from_bytes(f.read(8), 'little')
    return tensors, metadata, data_start


def verify_safetensors(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Check a safetensors file: header, size and, when recorded, the sha256 of the tensor data.

    Returns:
        Tensor name -> ``(dtype, shape)``.

    Raises:
        IntegrityError: naming the file, for truncation, a malformed header or changed tensor bytes.
    """
    path = Path(path)
    header, metadata, start = read_safetensors_header(path)
    digest = metadata.get(DIGEST_KEY)
    if digest:
        h = hashlib.sha256()
        with open(path, 'rb') as f:
            f.seek(start)
            for chunk in iter(lambda: f.read(1 << 22), b''):
                h.update(chunk)
        if h.hexdigest() != digest:
            raise IntegrityError(path, f"tensor data sha256 {h.hexdigest()} differs from the {digest} recorded in "
                                       "its header: the file is corrupted")
    return {k: (v['dtype'], tuple(v['shape'])) for k, v in header.items()}


def load_safetensors(path: str | Path, device: str | torch.device = 'cpu') -> dict[str, torch.Tensor]:
    """:func:`verify_safetensors`, then load the tensors (no pickle involved)."""
    verify_safetensors(path)
    try:
        return safetensors.torch.load_file(str(path), device=str(device))
    except Exception as e:  # safetensors' own errors do not name the file
        raise IntegrityError(path, f"cannot load safetensors: {e}") from e


def read_config_json(path: str | Path) -> dict[str, Any]:
    """Read a timm config.json and check the keys the loaders need.

    Raises:
        IntegrityError: missing file, invalid JSON, or a missing/ill-typed ``architecture``,
            ``num_classes``, ``model_args`` or ``pretrained_cfg``.
    """
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(path, 'config file not found')
    try:
        cfg = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntegrityError(path, f"not valid JSON ({e}); the file is corrupted or truncated") from None
    if not isinstance(cfg, dict):
        raise IntegrityError(path, f"expected a JSON object, got {type(cfg).__name__}")
    if not isinstance(cfg.get('architecture'), str) or not cfg['architecture']:
        raise IntegrityError(path, f"'architecture' must be a non-empty string, got {cfg.get('architecture')!r}")
    if 'num_classes' in cfg and (isinstance(cfg['num_classes'], bool) or not isinstance(cfg['num_classes'], int)):
        raise IntegrityError(path, f"'num_classes' must be an integer, got {cfg['num_classes']!r}")
    if not isinstance(cfg.get('model_args', {}), dict):
        raise IntegrityError(path, f"'model_args' must be an object, got {cfg['model_args']!r}")
    if not isinstance(cfg.get('pretrained_cfg'), dict):
        raise IntegrityError(path, "'pretrained_cfg' must be an object (timm's Hub config format)")
    return cfg


def config_model_args(config: dict[str, Any]) -> dict[str, Any]:
    """The ``timm.create_model`` arguments a config.json records: its ``model_args`` and ``num_classes``.

    Example:
        >>> config_model_args({'architecture': 'a', 'num_classes': 10,
        ...                    'model_args': {'in_chans': 1, 'pretrained': True}})
        {'in_chans': 1, 'num_classes': 10}
    """
    kwargs = dict(config.get('model_args') or {})
    kwargs.pop('pretrained', None)
    if config.get('num_classes') is not None:
        kwargs['num_classes'] = config['num_classes']
    return kwargs


def config_model(config: dict[str, Any], source: str | None = None) -> torch.nn.Module:
    """The (untrained) model a config.json describes, built on the meta device (no memory, no init).

    Raises:
        UnknownModelError: the architecture is not registered (the message says ``import timm_asap``).
    """
    import timm
    arch = check_architecture(config['architecture'], source)
    kwargs = config_model_args(config)
    try:
        with torch.device('meta'):
            return timm.create_model(arch, pretrained=False, **kwargs)
    except (RuntimeError, NotImplementedError):  # a model whose init needs real tensors
        return timm.create_model(arch, pretrained=False, **kwargs)


def expected_state_shapes(config: dict[str, Any], source: str | None = None) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of the model a config.json describes (see :func:`config_model`)."""
    return {k: tuple(v.shape) for k, v in config_model(config, source).state_dict().items()}


def weights_metadata(model: torch.nn.Module, architecture: str, model_args: dict[str, Any] | None = None) -> dict[str, str]:
    """What a weights file records about the model it holds: the architecture, its spectral pooling and,
    when given, the ``timm.create_model`` kwargs that rebuild it.

    Two architectures (or pooling options, or placements of the pooling) can share every state-dict name
    and shape, e.g. ``resnet18_cifar_asap`` and ``resnet18_cifar_flc``, or ``resnet18_asap`` built with
    ``pool_position='before'`` and ``'after'``: the checked loaders compare these entries
    (:func:`~timm_asap.models.pooling_signature`) with the config.json so such a mix-up is an error, not a
    silently different model. ``model_args`` (e.g. ``num_classes``, ``in_chans``, the ``channels`` of a
    narrowed network) make the file usable on its own, e.g. as the base checkpoint of a fine-tuning run;
    kwargs that are not JSON-safe are not recorded.
    """
    meta = {ARCHITECTURE_KEY: architecture, POOLING_KEY: json.dumps(pooling_signature(model))}
    if model_args is not None:
        try:
            meta[MODEL_ARGS_KEY] = json.dumps(model_args, sort_keys=True)
        except (TypeError, ValueError):
            pass  # e.g. a layer class as a kwarg: the run's config.yaml is then the only record
    return meta


def recorded_model_args(weights_path: str | Path, metadata: dict[str, str]) -> dict[str, Any] | None:
    """The ``timm.create_model`` arguments a safetensors header records (:func:`weights_metadata`), or None.

    Raises:
        IntegrityError: the entry is not a JSON object.
    """
    if MODEL_ARGS_KEY not in metadata:
        return None
    try:
        args = json.loads(metadata[MODEL_ARGS_KEY])
    except json.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise IntegrityError(weights_path, f"header entry {MODEL_ARGS_KEY} is not a JSON object: "
                                           f"{metadata[MODEL_ARGS_KEY]!r}")
    return args


def check_recorded_model(weights_path: str | Path, architecture: str, model: torch.nn.Module | None, named_in: str,
                         metadata: dict[str, str] | None = None, recorded_in: str = 'its header') -> None:
    """Check weights against the architecture (and built model) they are loaded into, where they record them.

    The one comparison of recorded and asked-for architecture and pooling, for every weights format that
    records them: a safetensors header (read when ``metadata`` is None), or the same entries taken from
    another record (a fine-tuning checkpoint) and passed as ``metadata``.

    Args:
        weights_path: the weights file (named in the message).
        architecture: the architecture the weights are loaded into (a tag is ignored).
        model: the built model (its pooling is compared with the recorded one); None: the architecture only,
            e.g. before building.
        named_in: where ``architecture`` was given, for the message (e.g. ``"the model name 'x'"``).
        metadata: :data:`ARCHITECTURE_KEY` / :data:`POOLING_KEY` entries (None: the safetensors header's).
        recorded_in: where the weights record them, for the message.

    Raises:
        IntegrityError: the weights record another architecture or other pooling options, naming both.

    Example:
        >>> check_recorded_model('w.safetensors', 'resnet18_cifar_asap', None, 'the model name',
        ...                      metadata={ARCHITECTURE_KEY: 'resnet18_cifar_asap'})
    """
    config = {'architecture': architecture.split('.')[0]}
    if metadata is None:
        metadata = read_safetensors_header(weights_path)[1]
    _check_recorded_model(weights_path, named_in, config, metadata, model, recorded_in)


def _check_recorded_model(weights_path, config_path, config: dict[str, Any], metadata: dict[str, str],
                          model: torch.nn.Module | None, recorded_in: str = 'its header') -> None:
    recorded = metadata.get(ARCHITECTURE_KEY)
    if recorded and recorded != config['architecture']:
        raise IntegrityError(weights_path, f"holds weights of architecture {recorded!r} ({recorded_in} records it) "
                                           f"but {config_path} names {config['architecture']!r}; they may have the "
                                           f"same tensors but compute different functions: name the architecture the "
                                           f"weights were trained as")
    if model is None or POOLING_KEY not in metadata:
        return
    built = pooling_signature(model)
    try:
        trained = json.loads(metadata[POOLING_KEY])
    except json.JSONDecodeError:
        raise IntegrityError(weights_path, f"header entry {POOLING_KEY} is not valid JSON: "
                                           f"{metadata[POOLING_KEY]!r}") from None
    if trained != built and _placement_free(trained) == _placement_free(built):
        want, got = _placement(trained), _placement(built)
        raise IntegrityError(weights_path, f"was trained with the pooling placed {want} the strided convolutions "
                                           f"(pool_position={want!r}, {recorded_in} records it) but {config_path} "
                                           f"(model_args={config.get('model_args') or {}}) builds it {got} them: "
                                           f"the same tensors compute another function; set pool_position={want!r} "
                                           f"in the config's model_args")
    if trained != built:
        raise IntegrityError(weights_path, f"was trained with pooling {trained} ({recorded_in} records it) but "
                                           f"{config_path} (model_args={config.get('model_args') or {}}) builds "
                                           f"{built or 'no spectral pooling'}: fix pool_mode/pool_args/pool_position "
                                           f"in the config's model_args")


_PLACEMENT_PREFIX = 'pool_position='


def _placement_free(signature: list) -> list:
    return [e for e in signature if not str(e).startswith(_PLACEMENT_PREFIX)]


def _placement(signature: list) -> str:
    """The placement a :func:`~timm_asap.models.pooling_signature` records (no entry: the paper's, 'before')."""
    return next((str(e)[len(_PLACEMENT_PREFIX):].strip("'") for e in signature if str(e).startswith(_PLACEMENT_PREFIX)),
                'before')


def _preview(names, limit: int = 6) -> str:
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ''
    return ', '.join(names[:limit]) + more


def state_shape_mismatch(expected: dict, got: dict, got_name: str, expected_name: str,
                         missing_label: str = 'missing', unexpected_label: str = 'unexpected') -> list[str]:
    """How two ``{tensor name: shape}`` maps differ, as message parts (empty when they agree)."""
    missing, unexpected = expected.keys() - got.keys(), got.keys() - expected.keys()
    wrong = [f"{k} ({got_name} {list(got[k])}, {expected_name} {list(expected[k])})"
             for k in sorted(expected.keys() & got.keys()) if tuple(got[k]) != tuple(expected[k])]
    parts = []
    if missing:
        parts.append(f"{missing_label}: {_preview(missing)}")
    if unexpected:
        parts.append(f"{unexpected_label}: {_preview(unexpected)}")
    if wrong:
        parts.append(f"wrong shape: {'; '.join(wrong[:6])}{' ...' if len(wrong) > 6 else ''}")
    return parts


def check_weights_match_config(weights_path: str | Path, config_path: str | Path,
                               tensors: dict[str, tuple[str, tuple[int, ...]]] | None = None) -> None:
    """Check that the weights file holds the model the config describes.

    The tensors (names and shapes) must be exactly those of the config's model, and where the file's
    header records the architecture and pooling (:func:`weights_metadata`) they must be the config's.

    Args:
        weights_path: model.safetensors.
        config_path: config.json describing the architecture.
        tensors: the weights' header as returned by :func:`verify_safetensors` (read when None).

    Raises:
        IntegrityError: naming the weights file, listing missing, unexpected and wrong-shaped tensors,
            or naming the recorded and the configured architecture or pooling.
        UnknownModelError: the config's architecture is not registered.
    """
    config = read_config_json(config_path)
    if tensors is None:
        tensors = verify_safetensors(weights_path)
    model = config_model(config, str(config_path))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: shape for k, (_, shape) in tensors.items()}
    problems = state_shape_mismatch(expected, got, 'file', 'architecture', 'missing from the file',
                                    'not in the architecture')
    if problems:
        head = (f"does not fit {config_path}: architecture {config['architecture']!r} with "
                f"num_classes={config.get('num_classes')} and model_args={config.get('model_args') or {}} "
                f"expects {len(expected)} tensors, the file has {len(got)}")
        raise IntegrityError(weights_path, '; '.join([head, *problems]))
    _check_recorded_model(weights_path, config_path, config, read_safetensors_header(weights_path)[1], model)


def verify_hub_folder(folder: str | Path, allow_pickle: bool = False) -> dict[str, Any]:
    """Check a Hub folder (or a downloaded snapshot): config.json, model.safetensors and that they agree.

    Args:
        folder: the folder.
        allow_pickle: accept pickle weight files beside the safetensors (never written by timm-asap).

    Returns:
        The parsed config.json.

    Raises:
        IntegrityError: naming the first bad file.
        UnregisteredArchitectureError: the config's architecture is not registered.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IntegrityError(folder, 'not a folder')
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (config_path, weights_path):
        if not p.is_file():
            present = sorted(x.name for x in folder.iterdir())
            raise IntegrityError(p, f"missing; the folder holds {present}")
    if not allow_pickle:
        pickles = sorted(p.name for p in folder.rglob('*') if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise IntegrityError(folder, f"pickle weight files are not allowed (safetensors only): {pickles}")
    config = read_config_json(config_path)
    check_weights_match_config(weights_path, config_path, verify_safetensors(weights_path))
    return config
