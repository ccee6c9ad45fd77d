"""pipeline/features/mel_filters.py against librosa, the reference it replaces at run time: the same float32
weights bit for bit, and the same centre frequencies."""
import warnings

import librosa
import numpy as np
import pytest

from pipeline.features import mel_filters

CASES = {  # sample_rate, n_fft, n_mels, fmin, fmax, htk
    "seed": (44100, 2560, 128, 20.0, 22050.0, False),
    "small": (16000, 512, 40, 20.0, 8000.0, False),
    "fmax-below-nyquist": (22050, 2048, 64, 0.0, 8000.0, False),
    "low-fmin-under-1khz-only": (8000, 256, 20, 50.0, 900.0, False),
    "htk": (44100, 2560, 128, 20.0, 22050.0, True),
    "empty-filters": (44100, 1024, 256, 20.0, 22050.0, False),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_filterbank_equals_librosa_bit_for_bit(case, dtype):
    sr, n_fft, n_mels, fmin, fmax, htk = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # librosa's empty-filter warning; ours is checked below
        expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk,
                                       norm="slaney", dtype=dtype)
        got = mel_filters.mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk=htk, dtype=dtype)
    assert got.dtype == dtype and got.shape == (n_mels, 1 + n_fft // 2)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_mel_frequencies_equal_librosa(case):
    _, _, n_mels, fmin, fmax, htk = case
    np.testing.assert_array_equal(mel_filters.mel_frequencies(n_mels + 2, fmin, fmax, htk),
                                  librosa.mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax, htk=htk))


def test_empty_filters_are_reported():
    with pytest.warns(UserWarning, match="without any bin"):
        mel_filters.mel_filterbank(*CASES["empty-filters"][:5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mel_filters.mel_filterbank(*CASES["seed"][:5])
