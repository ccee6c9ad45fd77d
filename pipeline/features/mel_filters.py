"""The mel filterbank, in numpy: librosa.filters.mel's weights, bit for bit (tests/features/test_mel_filters.py).

librosa is the reference, but importing it for this one matrix pulls in scipy.signal and numba:
~0.8 s of every feature worker's start (bench/README.md, issue 9). The operations and their order
follow librosa 0.11 (filters.mel, convert.mel_frequencies, hz_to_mel, mel_to_hz), so the float32
weights are the same numbers, not merely close.
"""
from __future__ import annotations

import warnings

import numpy as np

_F_SP = 200.0 / 3                    # Slaney: Hz per mel below 1 kHz
_MIN_LOG_HZ = 1000.0                 # Slaney: where the log region starts
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(hz, htk: bool = False) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    linear = hz / _F_SP
    with np.errstate(divide="ignore"):
        log = _MIN_LOG_MEL + np.log(hz / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log, linear)


def mel_to_hz(mels, htk: bool = False) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    linear = _F_SP * mels
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels - _MIN_LOG_MEL))
    return np.where(mels >= _MIN_LOG_MEL, log, linear)


def mel_frequencies(n: int, fmin: float, fmax: float, htk: bool = False) -> np.ndarray:
    """n frequencies (Hz) evenly spaced in mels from fmin to fmax, both included."""
    return mel_to_hz(np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n), htk)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                   htk: bool = False, dtype=np.float32) -> np.ndarray:
    """Triangular mel filters with Slaney's area normalization, [n_mels, 1 + n_fft // 2]."""
    fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_hz = mel_frequencies(n_mels + 2, fmin, fmax, htk)
    width = np.diff(mel_hz)
    ramps = np.subtract.outer(mel_hz, fft_hz)
    weights = np.zeros((n_mels, len(fft_hz)), dtype=dtype)
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / width[i], ramps[i + 2] / width[i + 1]))
    weights *= (2.0 / (mel_hz[2:n_mels + 2] - mel_hz[:n_mels]))[:, np.newaxis]
    if not np.all((mel_hz[:-2] == 0) | (weights.max(axis=1) > 0)):
        warnings.warn(f"{n_mels} mels over {len(fft_hz)} FFT bins leave some mel filters without any bin "
                      "(their features are always the floor): use fewer mels or a larger n_fft", stacklevel=2)
    return weights
