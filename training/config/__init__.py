"""Every training parameter in one place: ``TrainConfig`` composed of small parts (data,
model, loss, optim, execution, tracking), each with its own checks, and the flat parameter
names the command line, ``MLproject`` and MLflow share (``training.config.params``)."""
from training.config.params import (Param, build, check_choices, internal, option, params_of,
                                    part, parse_params)
from training.config.parts import (INTERPOLATIONS, LR_SCALING, DataConfig, LossConfig,
                                   ModelConfig, OptimConfig, ExecutionConfig, TrackingConfig,
                                   channel_values, comma_list)
from training.config.train import (SPLIT_FIELDS, FlatParams, TrainConfig,
                                   one_process_per_run)

__all__ = ["Param", "build", "check_choices", "internal", "option", "params_of", "part",
           "parse_params",
           "INTERPOLATIONS", "LR_SCALING", "DataConfig", "LossConfig", "ModelConfig",
           "OptimConfig", "ExecutionConfig", "TrackingConfig", "channel_values", "comma_list",
           "SPLIT_FIELDS", "FlatParams", "TrainConfig", "one_process_per_run"]
