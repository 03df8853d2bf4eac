"""Compatibility: the spectrogram ops live in :mod:`specstream.augment.spec`, one family per file."""
from .core import REGISTRY
from .spec import *  # noqa: F401,F403
from .spec import __all__  # noqa: F401
from .spec.mixing import _gamma  # noqa: F401

OPS = {name: cls for name, cls in REGISTRY.items() if cls.domain != "wave"}


def op_names():
    return sorted(OPS)
