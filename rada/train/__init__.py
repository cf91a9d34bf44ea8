"""Barely-supervised tri-view co-training: losses, schedules, sampling, trainer, checkpoints."""

from rada.checkpoint import load_checkpoint, save_checkpoint
from rada.train.data import TrainingData, LabeledCase, load_training_data, sample_batch
from rada.train.schedules import ScheduleConfig
from rada.train.trainer import Guidance, TrainConfig, Trainer, TrainResult, train
from rada.train.from_dataset import train_dataset

__all__ = ["TrainConfig", "ScheduleConfig", "Trainer", "TrainResult", "Guidance", "train", "train_dataset", "TrainingData",
           "LabeledCase", "load_training_data", "sample_batch", "save_checkpoint", "load_checkpoint"]
