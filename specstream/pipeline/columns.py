"""The columns each stage hands the next, named once.

    read (datasource) -> decode (DecodeStage) -> featurize (FeaturizeStage) -> deliver (collate)

Every stage reads and writes batches as dicts of numpy columns (Arrow tables out of the
reader). The names below are the contract between them: a stage refers to a column by its
constant, and what a stage emits is listed here (``READ``, ``DECODED``, ``FEATURIZED``,
``DELIVERED``), so a rename or a new column is one edit here and a test
(``tests/test_stages.py``) checks each stage's output against its list.

How the audio and features are laid out (one fixed shape, or one array per row) is
:class:`specstream.pipeline.layout.Layout`'s business, not the columns'.
"""
from __future__ import annotations

from ..io.samples import SCHEMA

# --- read: one row per sample from the tar reader (io.samples.SCHEMA), tagged per read
KEY = "key"  # the sample's key in its shard (str)
SHARD = "shard"  # the shard's url (str)
INDEX = "index"  # the sample's ordinal in its shard, counted on the tar headers (int64; stream states)
AUDIO = "audio"  # read: the audio member's bytes; decoded: the waveform
AUDIO_FORMAT = "audio_format"
CLS, TXT, JSON = "cls", "txt", "json"  # the label members, as text
EPOCH = "epoch"  # the epoch the row belongs to: its augmentation draws depend on it (int64)
READ_ID = "read"  # which read of which shard the row came from (quarantine entries count once per read)

READ = tuple(SCHEMA.names) + (EPOCH, READ_ID)
assert set(SCHEMA.names) == {KEY, SHARD, AUDIO, AUDIO_FORMAT, CLS, TXT, JSON, INDEX}

# --- decoded: waveforms at the pipeline's rate, labels encoded
KEY_ID = "key_id"  # the key's 63-bit hash: every random draw of the sample is keyed by it (int64)
NUM_SAMPLES = "num_samples"  # samples of signal before padding (int64)
TARGET = "target"  # class index (int64; -1 without a label) or [C] multi-hot (float32; a row of -1 without one)
TOKENS = "tokens"  # with labels.tokenizer: one int64 array per row, instead of TARGET
SEGMENTS = "segments"  # with labels.frame_field: JSON [[start_s, end_s, class], ...] per row

DECODED = (KEY, SHARD, KEY_ID, EPOCH, NUM_SAMPLES, INDEX, AUDIO)  # + TARGET or TOKENS, + SEGMENTS

# --- featurized: what travels to the trainers
FEATURES = "features"  # log-mel [n_mels, T] per row
LENGTH = "length"  # valid frames (int64)
FRAME_TARGET = "frame_target"  # with labels.frame_field: [T, C] multi-hot, moved by the time ops
MIX_LAMBDA = "mix_lambda"  # with tokens and mixup: the row's own weight (1: not mixed)
MIX_TOKENS = "mix_tokens"  # ... and the partner's transcript
AUG_PARAMS = "aug_params"  # with log_params: the row's augmentation parameters (JSON)

FEATURIZED = (KEY, SHARD, INDEX, EPOCH, LENGTH, FEATURES)  # + TARGET or TOKENS (+ MIX_*), FRAME_TARGET, AUG_PARAMS

# --- delivered (collate): torch tensors, padded per batch
TOKEN_LENGTH = "token_length"
MIX_TOKEN_LENGTH = "mix_token_length"
DELIVERED = (KEY, SHARD, INDEX, EPOCH, LENGTH, FEATURES)

# one Python object per row through re-batching (strings, JSON)
OBJECT = (KEY, SHARD, AUG_PARAMS)
# moved to the trainer's device (keys, shards and logged params stay on the host)
DEVICE = (FEATURES, LENGTH, TARGET, FRAME_TARGET, TOKENS, TOKEN_LENGTH, MIX_LAMBDA, MIX_TOKENS, MIX_TOKEN_LENGTH)
