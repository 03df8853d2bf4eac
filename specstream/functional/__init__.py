"""Stateless kernels (pure torch, CPU or CUDA): the math the augmentation ops and the
featurizer are built from, testable on their own.

- :mod:`.frames`: lengths masks, padding, per-sample interpolation and gathers along time,
  moving frame targets, per-sample reversal.
- :mod:`.mel`: Hz <-> mel, (VTLP-warped) mel filterbanks, mel-scale noise colours.
- :mod:`.dsp`: power, SNR mixing, FFT convolution, biquads and zero-phase filtering,
  coloured noise.
- :mod:`.timescale`: band-limited resampling, the phase vocoder, overlap-add.
- :mod:`.random`: the keyed counter-based generator (seed, epoch, key, op) -> uniforms.
- :mod:`.cpu_kernels`: fused CPU kernels (numba) behind interpolation, IIR filters, the
  keyed hashes, masks, per-sample filterbanks and the log-mel's mel sums, each checked
  against the torch path it replaces on the CPU; :mod:`.cpu_mixing`: the same for mixing
  rows at an SNR, rescaling to a power, the log-mel's centre padding and resampling.
"""
