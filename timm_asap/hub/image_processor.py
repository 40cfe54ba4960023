"""The grey-aware image processor of one-channel models, registered with transformers on request.

transformers' image-classification pipeline hands every image to the processor as RGB. Our
one-channel models name :data:`IMAGE_PROCESSOR_NAME` in their config.json (``image_processor_type``):
TimmWrapper's image processor, which converts the images back to grey first (PIL's luma transform
gives a grey image's original values), so the model sees what timm's own transform would give it.
Configs that do not name it (every other timm model) keep transformers' own processor.

:func:`register_image_processor` registers it with ``AutoImageProcessor.register`` (transformers'
extension point for image processors). Nothing happens at ``import timm_asap``: our loaders
(:func:`timm_asap.hub.load_transformers_model`, :func:`timm_asap.hub.transformers_pipeline`) call it;
a program that calls transformers' ``pipeline`` itself on a one-channel model calls it once first.

Example:
    >>> import timm_asap.hub
    >>> timm_asap.hub.register_image_processor()   # imports transformers
    >>> from transformers import pipeline
    >>> classify = pipeline('image-classification', model='timm-asap/resnet18_cifar_asap.fmnist')
"""
from __future__ import annotations

import functools

__all__ = ['IMAGE_PROCESSOR_NAME', 'image_processor_class', 'register_image_processor']

IMAGE_PROCESSOR_NAME = 'TimmAsapImageProcessor'


@functools.lru_cache(maxsize=1)
def image_processor_class():
    """The grey-aware TimmWrapper image processor class (built on first use; imports transformers)."""
    import torch
    from transformers.image_transforms import to_pil_image
    from transformers.image_utils import make_flat_list_of_images
    from transformers.models.timm_wrapper.image_processing_timm_wrapper import TimmWrapperImageProcessor

    class TimmAsapImageProcessor(TimmWrapperImageProcessor):
        """TimmWrapper's image processor for one-channel timm models: images are converted to grey ('L') first.

        transformers' image-classification pipeline converts every input image to RGB; a grey image
        converted back with PIL's luma transform gives its original values, so the model sees exactly
        what timm's own transform would give it. Models with more channels are processed unchanged.
        """

        def preprocess(self, images, return_tensors='pt'):
            if self.data_config['input_size'][0] == 1 and not isinstance(images, torch.Tensor):
                images = [to_pil_image(image).convert('L') for image in make_flat_list_of_images(images)]
            return super().preprocess(images, return_tensors=return_tensors)

    TimmAsapImageProcessor.__module__ = __name__
    TimmAsapImageProcessor.__qualname__ = IMAGE_PROCESSOR_NAME
    return TimmAsapImageProcessor


@functools.lru_cache(maxsize=1)
def register_image_processor() -> type:
    """Register :data:`IMAGE_PROCESSOR_NAME` with ``AutoImageProcessor`` (idempotent; imports transformers).

    Returns:
        The processor class.
    """
    from transformers import AutoImageProcessor
    from transformers.models.timm_wrapper.configuration_timm_wrapper import TimmWrapperConfig
    cls = image_processor_class()

    class TimmAsapWrapperConfig(TimmWrapperConfig):
        """Registration key of :data:`IMAGE_PROCESSOR_NAME` (configs name the processor by class name)."""

    AutoImageProcessor.register(TimmAsapWrapperConfig, image_processor_classes={'pil': cls}, exist_ok=True)
    return cls
