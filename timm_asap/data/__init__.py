"""Data for fine-tuning and evaluation: built-in Fashion-MNIST and timm.data datasets, transforms, loaders."""
from .dataset import SampleDataset, create_split_dataset, dataset_classes, is_folder_dataset, subset_indices
from .errors import DataError
from .fashion_mnist import (
    DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, FASHION_MNIST_NAMES, FashionMNIST, fashion_mnist_split,
    find_fashion_mnist, is_fashion_mnist)
from .idx import IdxError, read_idx, write_idx
from .loader import LoaderBatches, ResumableSampler, ShardSampler, create_eval_loader, create_train_loader
from .memory import MemoryAugment, MemoryEvalBatches, MemoryTrainBatches, augment_batch, sample_order
from .pipeline import RunData, choose_loader, create_run_data, create_val_dataset
from .transforms import create_transforms, resolve_data_config

__all__ = [
    'DataError', 'IdxError', 'read_idx', 'write_idx',
    'FashionMNIST', 'FASHION_MNIST_CLASSES', 'FASHION_MNIST_NAMES', 'DEFAULT_FASHION_MNIST_DIR', 'find_fashion_mnist', 'fashion_mnist_split',
    'SampleDataset', 'create_split_dataset', 'dataset_classes', 'is_folder_dataset', 'subset_indices',
    'ResumableSampler', 'ShardSampler', 'LoaderBatches', 'create_train_loader', 'create_eval_loader',
    'MemoryAugment', 'MemoryTrainBatches', 'MemoryEvalBatches', 'augment_batch', 'sample_order',
    'RunData', 'create_run_data', 'create_val_dataset', 'choose_loader',
    'resolve_data_config', 'create_transforms', 'is_fashion_mnist',
]


def __getattr__(name: str):
    if name == 'create_eval_dataset':  # renamed: timm_asap.evaluation.create_eval_dataset is the evaluation one
        import warnings
        warnings.warn("timm_asap.data.create_eval_dataset is renamed create_val_dataset (a run's validation split); "
                      "for evaluation data use timm_asap.evaluation.create_eval_dataset", DeprecationWarning,
                      stacklevel=2)
        return create_val_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
