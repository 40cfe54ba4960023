"""Fine-tuning: base timm checkpoint -> ASAP/FLC model, single process or torchrun DDP."""
from timm_asap_lab.config_model import check_pooling, create_model_from_config
from timm_asap_lab.train.checkpoint import load_run_checkpoint, save_checkpoint, save_weights
from timm_asap_lab.train.distributed import DistEnv, init_distributed
from timm_asap_lab.train.errors import (CheckpointError, NonFiniteLossError, RunExistsError, TrainingError,
                                        TrainingInterrupted)
from timm_asap_lab.train.evaluate import validate
from timm_asap_lab.train.model import (BaseSource, check_conversion, convert_from_base, create_teacher, load_base_model,
                                       resolve_base, resolve_run_config_base)
from timm_asap_lab.train.trainer import (TrainState, check_reusable, config_differences, ensure_finetuned, finetune,
                                         load_results)

__all__ = [
    'finetune', 'ensure_finetuned', 'check_reusable', 'load_results', 'TrainState', 'config_differences',
    'TrainingError', 'TrainingInterrupted', 'NonFiniteLossError', 'CheckpointError', 'RunExistsError',
    'create_model_from_config', 'load_base_model', 'convert_from_base', 'create_teacher', 'check_pooling',
    'BaseSource', 'resolve_base', 'resolve_run_config_base', 'check_conversion',
    'validate', 'DistEnv', 'init_distributed', 'load_run_checkpoint', 'save_checkpoint', 'save_weights',
]

