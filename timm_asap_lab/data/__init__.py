"""Data for fine-tuning and evaluation: built-in Fashion-MNIST and timm.data datasets, transforms, loaders."""
from timm_asap_lab.data.classes import check_classes, check_label_names, check_labels
from timm_asap_lab.data.dataset import (SampleDataset, create_split_dataset, dataset_classes, is_folder_dataset,
                                        subset_indices)
from timm_asap_lab.data.errors import DataError
from timm_asap_lab.data.fashion_mnist import (DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_NAMES, FashionMNIST,
                                              fashion_mnist_split, find_fashion_mnist, is_fashion_mnist)
from timm_asap_lab.data.idx import IdxError, read_idx, write_idx
from timm_asap_lab.data.loader import (LoaderBatches, ResumableSampler, ShardSampler, create_eval_loader,
                                       create_train_loader)
from timm_asap_lab.data.memory import MemoryAugment, MemoryEvalBatches, MemoryTrainBatches, augment_batch, sample_order
from timm_asap_lab.data.pipeline import RunData, choose_loader, create_run_data, create_val_dataset
from timm_asap_lab.data.transforms import create_transforms, run_data_config

__all__ = [
    'DataError', 'IdxError', 'read_idx', 'write_idx', 'check_classes', 'check_labels', 'check_label_names',
    'FashionMNIST', 'FASHION_MNIST_NAMES', 'DEFAULT_FASHION_MNIST_DIR', 'find_fashion_mnist', 'fashion_mnist_split',
    'SampleDataset', 'create_split_dataset', 'dataset_classes', 'is_folder_dataset', 'subset_indices',
    'ResumableSampler', 'ShardSampler', 'LoaderBatches', 'create_train_loader', 'create_eval_loader',
    'MemoryAugment', 'MemoryTrainBatches', 'MemoryEvalBatches', 'augment_batch', 'sample_order',
    'RunData', 'create_run_data', 'create_val_dataset', 'choose_loader',
    'run_data_config', 'create_transforms', 'is_fashion_mnist',
]

