"""Neural nets: classifiers / discriminators, generators, special layers and weight EMA."""

from gendisc.nets.classifiers import (
    ConvNet,
    MLPClassifier,
    ResNet,
    SalimansConvDiscriminator,
    SalimansMLPDiscriminator,
)
from gendisc.nets.ema import ExponentialMovingAverage
from gendisc.nets.generators import DCGANGenerator, MLPGenerator, SalimansMLPGenerator
from gendisc.nets.layers import (
    GaussianNoise,
    MinibatchDiscrimination,
    VirtualBatchNorm,
    WeightNormConv2d,
    WeightNormConvTranspose2d,
    WeightNormLinear,
    activation_layer,
    as_shape,
    data_dependent_init,
    mark_initialized,
)

__all__ = [
    "ConvNet",
    "DCGANGenerator",
    "ExponentialMovingAverage",
    "GaussianNoise",
    "MLPClassifier",
    "MLPGenerator",
    "MinibatchDiscrimination",
    "ResNet",
    "SalimansConvDiscriminator",
    "SalimansMLPDiscriminator",
    "SalimansMLPGenerator",
    "VirtualBatchNorm",
    "WeightNormConv2d",
    "WeightNormConvTranspose2d",
    "WeightNormLinear",
    "activation_layer",
    "as_shape",
    "data_dependent_init",
    "mark_initialized",
]
