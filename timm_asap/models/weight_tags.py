"""The weight tags this project trains, in one declarative table read by the registry.

Each :class:`WeightTag` is one ``<architecture>.<tag>`` of timm's registry beyond the base checkpoints
(the ``<base_tag>_base`` tags, which come from timm's own pretrained cfgs): where its weights live on
the Hub, their licence, the input config they were trained with, and whether they are published.
Only published tags get a weights source in their timm pretrained cfg, so ``timm.list_pretrained()``
and ``timm.is_model_pretrained()`` list exactly what can be downloaded; ``pretrained=True`` on an
unpublished tag raises :class:`~timm_asap.models.WeightsNotAvailableError`.

This table is the one source of what it says about a tag. The training recipes that produce these weights,
``hub_configs/<architecture>.<tag>.yaml`` of the lab (read by the fine-tuning tool only), name their tag and
take its input size, classes, base, pooling, normalisation, label names, Hub repository, licence and
published state from here. A shipped config under any other file name (``convert_asap.fmnist.yaml``) is a
template for users' own runs and claims no tag.
Publishing a tag means setting ``published=True`` here once its Hub repository exists.

Example:
    >>> from timm_asap.models.weight_tags import WEIGHT_TAGS
    >>> [t.name for t in WEIGHT_TAGS if t.published]
    []
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ['HUB_ORG', 'PAPER_IDS', 'FLC_PAPER_IDS', 'paper_ids', 'FASHION_MNIST_LABELS', 'WeightTag', 'WEIGHT_TAGS', 'weight_tag']

HUB_ORG = 'timm-asap'
PAPER_IDS = 'arXiv:2307.09804'      # ASAP (and the baselines it is compared with)
FLC_PAPER_IDS = 'arXiv:2204.00491'  # FLC pooling, ASAP's predecessor


def paper_ids(pool: str) -> str:
    """The paper of a pooling kind: FLC's for ``'flc'``, ASAP's for ``'asap'`` and the baselines."""
    return FLC_PAPER_IDS if pool == 'flc' else PAPER_IDS


#: the Fashion-MNIST class names in label order (the one copy: the lab's dataset reader uses it too)
FASHION_MNIST_LABELS = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                        'Ankle boot')


@dataclass(frozen=True)
class WeightTag:
    """One trained weight tag of a registered architecture.

    Attributes:
        architecture: registered name, e.g. ``resnet50_asap``.
        tag: the tag, e.g. ``ft_in1k``.
        published: whether the Hub repository holds the weights (only then does timm list the tag as
            pretrained and ``pretrained=True`` download it).
        license: licence of the weights.
        input_size: ``(channels, height, width)`` the weights were trained at.
        num_classes: classifier outputs.
        mean: normalisation mean (None: the architecture's default).
        std: normalisation std (None: the architecture's default).
        interpolation: resize interpolation.
        crop_pct: evaluation centre-crop fraction.
        label_names: class names in label order (None: unnamed).
        base: the timm checkpoint the weights were fine-tuned from (``''``: trained from scratch).
        model_args: default model kwargs of the tag: for a pooled architecture its band mode
            (``pool_mode``) and the placement of the pooling (``pool_position``, ``'before'``: the
            paper's), so ``timm.create_model('<architecture>.<tag>')`` rebuilds what was trained.
    """

    architecture: str
    tag: str
    published: bool
    license: str
    input_size: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = 'bilinear'
    crop_pct: float = 0.875
    label_names: tuple[str, ...] | None = None
    base: str = ''
    model_args: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``<architecture>.<tag>``."""
        return f"{self.architecture}.{self.tag}"

    @property
    def hf_hub_id(self) -> str:
        """The Hub repository of the weights: ``timm-asap/<architecture>.<tag>``."""
        return f"{HUB_ORG}/{self.name}"

    @property
    def recipe(self) -> str:
        """File name of the training recipe in ``hub_configs/``."""
        return f"{self.name}.yaml"


def _pooled_args(pool_position: str = 'before') -> dict:
    return dict(pool_mode='centered', pool_position=pool_position)


def _imagenet(architecture: str, base: str, license: str) -> WeightTag:
    return WeightTag(architecture, 'ft_in1k', published=False, license=license, input_size=(3, 224, 224),
                     num_classes=1000, base=base, model_args=_pooled_args())


def _fmnist(architecture: str, pooled: bool = True) -> WeightTag:
    return WeightTag(architecture, 'fmnist', published=False, license='apache-2.0', input_size=(1, 32, 32),
                     num_classes=10, mean=(0.2860,), std=(0.3530,), crop_pct=1.0, label_names=FASHION_MNIST_LABELS,
                     model_args=_pooled_args() if pooled else {})


# Order per architecture: the first published tag becomes the architecture's default tag.
WEIGHT_TAGS: tuple[WeightTag, ...] = (
    _imagenet('resnet18_asap', 'resnet18.tv_in1k', 'bsd-3-clause'),
    _imagenet('resnet50_asap', 'resnet50.tv_in1k', 'bsd-3-clause'),
    _imagenet('resnet50_flc', 'resnet50.tv_in1k', 'bsd-3-clause'),
    _fmnist('resnet18_cifar', pooled=False),
    _fmnist('resnet18_cifar_asap'),
    _fmnist('resnet18_cifar_flc'),
    _fmnist('preactresnet18_asap'),
)


def weight_tag(name: str) -> WeightTag | None:
    """The table entry of ``<architecture>.<tag>``, or None (base checkpoints and untagged names)."""
    return next((t for t in WEIGHT_TAGS if t.name == name), None)
