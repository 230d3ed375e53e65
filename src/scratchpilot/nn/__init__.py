"""scratchpilot.nn — the engine: a neural network from scratch, NumPy only.

Layers: dense (``Dense``, ``Dropout``, ``Flatten``, ``Reshape``), convolutional on NHWC images
(``Conv2D``, ``DepthwiseConv2D``, ``MaxPool2D``, ``AvgPool2D``, ``GlobalAvgPool2D``), ``BatchNorm``,
``Residual`` (a skip connection) and the activations (``Sigmoid``, ``Tanh``, ``ReLU``, ``ReLU6``,
``LeakyReLU``). Losses (``Quadratic``, ``SoftmaxCrossEntropy``, ``SigmoidCrossEntropy``), optimisers
(``SGD``, ``Adam``) with schedules,
``Sequential`` to train them, the tutorial's ``Network``, ``save``/``load`` and a gradient check.
The speed machinery (BLAS threads, warm-up, one parameter buffer) lives in :mod:`scratchpilot.nn.fast`.
This package imports nothing but NumPy (and threadpoolctl, lazily, for BLAS thread control).
"""

from .activations import LeakyReLU, ReLU, ReLU6, Sigmoid, Tanh, sigmoid
from .conv import Conv2D, DepthwiseConv2D
from .ensemble import Ensemble
from .fast import blas_threads, set_blas_threads
from .gradcheck import gradient_check, numerical_gradient, relative_error
from .init import INITIALISERS
from .io import ModelFileError, load, read_config, save
from .layers import Dense, Dropout, Flatten, Layer, Reshape
from .losses import Loss, Quadratic, SigmoidCrossEntropy, SoftmaxCrossEntropy
from .model import EarlyStopping, History, Sequential, as_rng
from .network import Network
from .norm import BatchNorm
from .optim import SGD, Adam, CosineDecay, Optimizer, Schedule, StepDecay
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .residual import Residual

__all__ = [
    "Adam", "AvgPool2D", "BatchNorm", "Conv2D", "CosineDecay", "Dense", "DepthwiseConv2D", "Dropout", "Ensemble",
    "EarlyStopping", "Flatten", "GlobalAvgPool2D", "History", "INITIALISERS", "Layer", "LeakyReLU", "Loss",
    "MaxPool2D", "ModelFileError", "Network", "Optimizer", "Quadratic", "ReLU", "ReLU6", "Reshape", "Residual", "SGD",
    "Schedule", "Sequential", "Sigmoid", "SigmoidCrossEntropy", "SoftmaxCrossEntropy", "StepDecay", "Tanh",
    "as_rng", "blas_threads", "gradient_check", "load", "numerical_gradient", "read_config", "relative_error",
    "save", "set_blas_threads", "sigmoid",
]
