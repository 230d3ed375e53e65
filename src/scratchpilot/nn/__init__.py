"""scratchpilot.nn — the engine: a neural network from scratch, NumPy only.

Layers (``Dense``, ``Sigmoid``, ``Tanh``, ``ReLU``, ``LeakyReLU``, ``Dropout``, ``Flatten``), losses
(``Quadratic``, ``SoftmaxCrossEntropy``, ``SigmoidCrossEntropy``), optimisers (``SGD``, ``Adam``) with
schedules, ``Sequential`` to train them, the tutorial's ``Network``, ``save``/``load`` and a gradient check.
This package imports nothing but NumPy (and threadpoolctl, lazily, for BLAS thread control).
"""

from .activations import LeakyReLU, ReLU, Sigmoid, Tanh, sigmoid
from .gradcheck import gradient_check, numerical_gradient, relative_error
from .init import INITIALISERS
from .io import ModelFileError, load, read_config, save
from .layers import Dense, Dropout, Flatten, Layer
from .losses import Loss, Quadratic, SigmoidCrossEntropy, SoftmaxCrossEntropy
from .model import EarlyStopping, History, Sequential, as_rng
from .network import Network
from .optim import SGD, Adam, CosineDecay, Optimizer, Schedule, StepDecay
from .threads import blas_threads, set_blas_threads

__all__ = [
    "Adam", "CosineDecay", "Dense", "Dropout", "EarlyStopping", "Flatten", "History", "INITIALISERS", "Layer",
    "LeakyReLU", "Loss", "ModelFileError", "Network", "Optimizer", "Quadratic", "ReLU", "SGD", "Schedule",
    "Sequential", "Sigmoid", "SigmoidCrossEntropy", "SoftmaxCrossEntropy", "StepDecay", "Tanh", "as_rng",
    "blas_threads", "gradient_check", "load", "numerical_gradient", "read_config", "relative_error", "save",
    "set_blas_threads", "sigmoid",
]
