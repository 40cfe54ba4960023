"""Models as evaluated: inputs in [0, 1], normalisation inside (the RobustBench convention), eval mode."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ['NormalizedModel', 'wrap_model', 'create_eval_model', 'check_eval_mode', 'model_input_info']


class NormalizedModel(nn.Module):
    """``model((x - mean) / std)`` for inputs ``x`` in [0, 1].

    Attacks and corruptions then work in pixel space (eps in units of the [0, 1] range) while the
    model keeps its own normalisation.

    Args:
        model: the classifier, taking normalised (N, C, H, W) inputs.
        mean: per-channel mean (length C, or 1 to broadcast).
        std: per-channel std.

    Shape:
        - Input: (N, C, H, W) in [0, 1]
        - Output: the model's logits (N, num_classes)
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std need the same length, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.model = model
        self.register_buffer('mean', torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)
        std = self.std.to(x.dtype)
        return self.model((x - mean) / std)


def _pretrained_norm(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    mean = tuple(cfg.get('mean', (0.485, 0.456, 0.406)))
    std = tuple(cfg.get('std', (0.229, 0.224, 0.225)))
    in_chans = _in_chans(model)
    if in_chans is not None and len(mean) != in_chans:
        # e.g. a 1-channel model built from an RGB config: use the channel mean of the statistics
        mean = (sum(mean) / len(mean),) * in_chans
        std = (sum(std) / len(std),) * in_chans
    return mean, std


def _in_chans(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def wrap_model(model: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> nn.Module:
    """Wrap ``model`` so it takes [0, 1] inputs, and put it in eval mode.

    Args:
        model: a classifier. A :class:`NormalizedModel` is returned as is (in eval mode).
        mean: normalisation mean, one value per input channel (or one for all); None takes the model's
            ``pretrained_cfg`` (timm), else ImageNet's.
        std: normalisation std; likewise.

    Returns:
        A :class:`NormalizedModel` in eval mode.

    Raises:
        ValueError: a ``mean`` or ``std`` whose length fits neither the model's input channels nor one.
    """
    if isinstance(model, NormalizedModel):
        return model.eval()
    in_chans = _in_chans(model)
    if in_chans is not None and (mean is not None or std is not None):
        from timm_asap_lab.data.transforms import fit_channels
        remedy = 'give one value' if in_chans == 1 else f"give {in_chans} values (one per input channel) or one"
        mean = None if mean is None else fit_channels('mean', mean, in_chans, average=False, remedy=remedy)
        std = None if std is None else fit_channels('std', std, in_chans, average=False, remedy=remedy)
    if mean is None or std is None:
        cfg_mean, cfg_std = _pretrained_norm(model)
        mean = cfg_mean if mean is None else mean
        std = cfg_std if std is None else std
    return NormalizedModel(model, mean, std).eval()


def create_eval_model(
        name: str,
        pretrained: bool = False,
        checkpoint_path: str = '',
        num_classes: int | None = None,
        in_chans: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **kwargs,
) -> nn.Module:
    """Create a timm model by name (registered ``*_asap`` / ``*_flc`` names need ``import timm_asap.models``).

    With a checkpoint, the model is built as the checkpoint records it and checked against ``name``
    (:func:`timm_asap_lab.checkpoints.create_checkpoint_model`): its recorded architecture and pooling
    must be ``name``'s, its recorded ``model_args``, classes and channels are applied (given values may not
    contradict them), and its recorded label names, normalisation and input settings go into the model's
    ``pretrained_cfg``.

    Args:
        name: timm model name, optionally with a pretrained tag (``resnet50.tv_in1k``).
        pretrained: load pretrained weights through timm (from the Hub or timm's cache); not used with a
            checkpoint, whose weights replace every tensor.
        checkpoint_path: a weights file (``.safetensors``, a fine-tuning ``last.pth``/``best.pth``, a timm
            ``.pth.tar``), a fine-tuning run folder or a Hub folder.
        num_classes: classifier outputs (None: the checkpoint's, else the model's default).
        in_chans: input channels (None: the checkpoint's, else the model's default).
        mean: normalisation mean inside the wrapper (None: the statistics the checkpoint records, from its
            run config or Hub config, else the model's pretrained_cfg).
        std: normalisation std (None: as ``mean``).
        **kwargs: further ``timm.create_model`` arguments.

    Returns:
        The model wrapped by :func:`wrap_model`, in eval mode.

    Raises:
        IntegrityError: a missing or damaged checkpoint, one of another architecture or pooling, or tensors
            that do not fit the model.
        ValueError: arguments that contradict the checkpoint or that the architecture does not take.
        UnknownModelError: an unknown model name.
        HubDownloadError: pretrained weights neither downloadable nor cached.
    """
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    from timm_asap.hub.load import hub_unreachable_error
    from timm_asap.models import check_model_name
    if checkpoint_path:
        from timm_asap_lab.checkpoints import create_checkpoint_model
        model, _ = create_checkpoint_model(name, checkpoint_path, num_classes, in_chans, **kwargs)
        return wrap_model(model, mean, std)
    check_model_name(name)
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    if in_chans is not None:
        kwargs['in_chans'] = in_chans
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:  # no network and not in the cache
        cfg = timm.models.get_pretrained_cfg(name)
        repo_id = (cfg.hf_hub_id if cfg is not None else None) or name
        raise hub_unreachable_error(f"the pretrained weights of {name}", repo_id, None, None, e) from None
    except TypeError as e:
        raise ValueError(f"{name!r} cannot be built with {kwargs}: {e}") from None
    return wrap_model(model, mean, std)


def check_eval_mode(model: nn.Module, name: str = 'model') -> None:
    """Raise if any module of ``model`` is in training mode.

    Raises:
        ValueError: naming the first module found in training mode.
    """
    for module_name, module in model.named_modules():
        if module.training:
            where = f" (submodule {module_name!r})" if module_name else ''
            raise ValueError(f"{name} is in training mode{where}; evaluation needs model.eval() "
                             "(batch-norm statistics and dropout would change the results)")


def model_input_info(model: nn.Module) -> dict:
    """Input size, channels, crop fraction and interpolation from a timm model's pretrained_cfg, where it has one."""
    inner = model.model if isinstance(model, NormalizedModel) else model
    cfg = getattr(inner, 'pretrained_cfg', None) or {}
    return {'input_size': tuple(cfg['input_size']) if 'input_size' in cfg else None,
            'in_chans': _in_chans(inner), 'crop_pct': cfg.get('crop_pct'), 'interpolation': cfg.get('interpolation')}
