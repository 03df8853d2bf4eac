"""Compatibility: the keyed counter-based generator lives in :mod:`specstream.functional.random`."""
from ..functional.random import (hash32, key_id, key_ids, keyed_words, per_sample, stream_field,  # noqa: F401
                                 stream_uniform, uniform, unit_float)
