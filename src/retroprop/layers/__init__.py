"""Layers: one file per family. ``deserialize`` rebuilds a layer from its config."""
from .base import Layer, registered_layers
from .dense import Dense
from .activation import Activation
from .flatten import Flatten

__all__ = ["Layer", "Dense", "Activation", "Flatten", "get", "deserialize"]


def deserialize(config):
    """Rebuild a layer from ``{"class_name": ..., "config": {...}}`` (see Layer.serialize)."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"layer config must be a dict with a 'class_name', got {config!r}")
    classes = registered_layers()
    class_name = config["class_name"]
    if class_name not in classes:
        raise ValueError(f"unknown layer class {class_name!r}; known: {', '.join(sorted(classes))}")
    return classes[class_name].from_config(dict(config.get("config", {})))


def get(config):
    """A Layer instance unchanged, or one rebuilt from its serialized config."""
    if isinstance(config, Layer):
        return config
    return deserialize(config)
