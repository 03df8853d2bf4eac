"""Constants the numba kernels and their Python callers share (no numba import here: the
callers lay out tables the kernels read without bounds checks, so both take one value)."""

PHASE_LANES = 16  # resample_group_rows: rate pairs with up to this many output phases take the lane path
