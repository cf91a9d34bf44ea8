"""Networks: UA-MT V-Net backbone, RADA guidance head, tri-view model."""

from rada.nets.head import Adapter, GuidanceHead, HeadConfig
from rada.nets.triview import ModelConfig, TriViewModel, ViewNet
from rada.nets.vnet import VNet, VNetConfig, count_parameters

__all__ = ["VNet", "VNetConfig", "GuidanceHead", "HeadConfig", "Adapter",
           "ModelConfig", "ViewNet", "TriViewModel", "count_parameters"]
