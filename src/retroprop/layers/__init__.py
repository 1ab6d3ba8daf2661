"""Layers: one file per family. ``deserialize`` rebuilds a layer from its config."""
from .base import Layer, registered_layers
from .dense import Dense
from .activation import Activation
from .flatten import Flatten

__all__ = ["Layer", "Dense", "Activation", "Flatten", "get", "deserialize"]

# Convolution and pooling (channels-last).
from .conv import Conv1D, Conv2D  # noqa: E402
from .pool import (AvgPool1D, AvgPool2D, GlobalAvgPool2D, MaxPool1D,  # noqa: E402
                   MaxPool2D)

__all__ += ["Conv1D", "Conv2D", "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D",
            "GlobalAvgPool2D"]


def deserialize(config):
    """Rebuild a layer from ``{"class_name": ..., "config": {...}}`` (see Layer.serialize)."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"layer config must be a dict with a 'class_name', got {config!r}")
    classes = registered_layers()
    class_name = config["class_name"]
    if class_name not in classes:
        raise ValueError(f"unknown layer class {class_name!r}; known: {', '.join(sorted(classes))}")
    layer = classes[class_name].from_config(dict(config.get("config", {})))
    trainable = config.get("trainable", True)
    if not isinstance(trainable, bool):
        raise ValueError(f"layer config 'trainable' must be true or false, got {trainable!r}")
    layer.trainable = trainable
    return layer


def get(config):
    """A Layer instance unchanged, or one rebuilt from its serialized config."""
    if isinstance(config, Layer):
        return config
    return deserialize(config)


# Activation layers with parameters or randomness (LeakyReLU, ELU, PReLU, RReLU).
from .advanced_activations import ELU, LeakyReLU, PReLU, RReLU  # noqa: E402

__all__ += ["LeakyReLU", "ELU", "PReLU", "RReLU"]

# Regularisation layers.
from .dropout import Dropout  # noqa: E402

__all__ += ["Dropout"]

# Image augmentation (active only in training).
from .augmentation import (RandomBrightness, RandomContrast, RandomCrop,  # noqa: E402
                           RandomFlip, RandomRotation, RandomTranslation)

__all__ += ["RandomFlip", "RandomTranslation", "RandomCrop", "RandomRotation",
            "RandomContrast", "RandomBrightness"]

# Normalisation and residual blocks.
from .norm import BatchNormalization  # noqa: E402
from .residual import Residual  # noqa: E402

__all__ += ["BatchNormalization", "Residual"]

# Preprocessing, upsampling, transposed convolution and recurrence (the course's tools).
from .normalization import Normalization  # noqa: E402
from .upsampling import UpSampling2D  # noqa: E402
from .conv_transpose import Conv2DTranspose  # noqa: E402
from .rnn import SimpleRNN  # noqa: E402
from .lstm import LSTM  # noqa: E402

__all__ += ["Normalization", "UpSampling2D", "Conv2DTranspose", "SimpleRNN", "LSTM"]

# Graph models: merging several tensors, reshaping.
from .merge import Add, Concatenate, Maximum, Multiply, Subtract  # noqa: E402
from .reshape import Reshape  # noqa: E402

__all__ += ["Add", "Subtract", "Multiply", "Maximum", "Concatenate", "Reshape"]
