"""pipeline/features/audio_graph.py, the in-graph resampler of serving_audio, against the Beam job's
(pipeline.features.audio.resample: soxr HQ). End to end through the exported SavedModel: tests/training/test_export.py."""
import io

import numpy as np
import pytest
import soundfile as sf
import soxr
import tensorflow as tf

from pipeline.features import audio
from pipeline.features import audio_graph

PAIRS = [(8000, 16000), (22050, 16000), (44100, 16000), (48000, 16000), (8000, 44100), (48000, 44100),
         (11025, 16000)]


def _graph(x, src, dst):
    return audio_graph.resample(tf.constant(x, tf.float32), tf.constant(src, tf.int64), dst).numpy()


def _gain(src, dst, frac):
    """soxr HQ's gain for a tone at `frac` of the lower Nyquist (projection on the middle half)."""
    f, t = frac * min(src, dst) / 2, np.arange(src) / src
    y = soxr.resample(np.cos(2 * np.pi * f * t), src, dst, quality="HQ") \
        - 1j * soxr.resample(np.sin(2 * np.pi * f * t), src, dst, quality="HQ")
    a, b = len(y) // 4, 3 * len(y) // 4
    return abs(np.vdot(np.exp(-2j * np.pi * f * np.arange(a, b) / dst), y[a:b])) / (b - a)


@pytest.mark.parametrize("src,dst", [(8000, 16000), (44100, 16000), (16000, 44100)])
def test_the_response_is_soxr_hqs(src, dst):
    fracs = np.array([0.5, 0.9, 0.93, 0.94, 0.95, 0.955, 0.96, 0.97, 0.98, 0.99, 1.0])
    measured = np.array([_gain(src, dst, f) for f in fracs])
    modelled = audio_graph.soxr_hq_response(tf.constant(fracs, tf.float64)).numpy()
    np.testing.assert_allclose(modelled, measured, rtol=0, atol=0.01)
    assert measured[4] > 0.5 > measured[6]        # soxr's half-gain point lies between 0.95 and 0.96, as modelled


def _burst(n, rng, content):
    """Silence, then `content` over the middle three quarters, then silence (soxr's first output
    samples are not reproduced, module docstring)."""
    x = np.zeros(n, np.float32)
    x[n // 8:n - n // 8] = content(n - 2 * (n // 8), rng)
    return x


@pytest.mark.parametrize("src,dst", PAIRS)
def test_passband_tones_resample_as_the_beam_job(src, dst):
    """Below 0.7 of the lower Nyquist soxr's gain is within 1.3e-4 of 1 for every ratio."""
    rng = np.random.default_rng(src + dst)
    lower = min(src, dst) / 2

    def tones(m, rng):
        t = np.arange(m) / src
        return sum(0.2 * np.sin(2 * np.pi * f * lower * t + rng.uniform(0, 6)) for f in (0.05, 0.4, 0.7)) * np.hanning(m)

    x = _burst(src // 2, rng, tones)
    beam, graph = audio.resample(x, src, dst), _graph(x, src, dst)
    assert graph.shape == beam.shape
    np.testing.assert_allclose(graph, beam, rtol=0, atol=5e-5)


@pytest.mark.parametrize("src,dst", PAIRS)
def test_white_noise_resamples_close_to_the_beam_job(src, dst):
    """Full-band noise puts energy in the transition band, where the response model is within
    0.01 of soxr's for every ratio: measured 0.05-0.13% of the signal's RMS."""
    rng = np.random.default_rng(src * 3 + dst)
    x = _burst(src // 2, rng, lambda m, rng: rng.normal(0, 0.1, m))
    beam, graph = audio.resample(x, src, dst), _graph(x, src, dst)
    rms = np.sqrt(np.mean(beam ** 2))
    assert np.sqrt(np.mean((graph - beam) ** 2)) < 3e-3 * rms
    assert np.abs(graph - beam).max() < 1e-3


def test_lengths_and_the_padded_last_sample_follow_the_beam_job():
    """ceil(n * ratio) samples as librosa; soxr computes round(n * ratio) and the Beam job pads
    the rest with zeros, so the graph's last sample is zero exactly there."""
    rng = np.random.default_rng(0)
    padded = 0
    for src, dst in PAIRS:
        for n in (1, 2, 3, 1001, 1003, 4999, int(rng.integers(5000, 9000))):
            x = (0.3 + 0.1 * rng.normal(size=n)).astype(np.float32)
            beam, graph = audio.resample(x, src, dst), _graph(x, src, dst)
            assert graph.shape == beam.shape, (src, dst, n)
            if beam[-1] == 0.0:
                padded += 1
                assert graph[-1] == 0.0, (src, dst, n)
            else:
                assert graph[-1] != 0.0, (src, dst, n)
    assert padded >= 5                         # the case occurs: the test is not vacuous


def test_the_models_rate_passes_through_untouched():
    x = np.random.default_rng(1).normal(0, 0.1, 1234).astype(np.float32)
    np.testing.assert_array_equal(_graph(x, 16000, 16000), x)


# ------------------------------------------------------------------------------ memory per request

def _library_ops(concrete) -> tuple[set, set]:
    """(op types of the function's own graph, op types inside the functions it calls: tf.cond's branches)."""
    graph_def = concrete.graph.as_graph_def()
    return ({n.op for n in graph_def.node},
            {n.op for f in graph_def.library.function for n in f.node_def})


def test_the_ffts_run_only_in_the_branch_that_resamples():
    """A tf.cond runs what its pred does not need unless it is built inside a branch: before, the
    float64 FFTs of 2n + 64 points ran even at the model's rate."""
    concrete = tf.function(lambda x, sr: audio_graph.resample(x, sr, 16000)).get_concrete_function(
        tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.int64))
    top, branches = _library_ops(concrete)
    assert not top & {"RFFT", "IRFFT"}
    assert {"RFFT", "IRFFT"} <= branches


def _decode(files, **limits):
    fn = tf.function(lambda w: audio_graph.decode_batch(w, 16000, 60.0, audio.DecodeLimits(**limits)))
    return fn(tf.constant(files))


def _wav(y, sr=16000):
    buf = io.BytesIO()
    sf.write(buf, y, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_files_are_decoded_a_bounded_number_at_a_time():
    """The decode loop's parallel_iterations (tf.while_loop's default: 10 files at once)."""
    concrete = tf.function(lambda w: audio_graph.decode_batch(w, 16000, 60.0)).get_concrete_function(
        tf.TensorSpec([None], tf.string))
    loops = [op for op in concrete.graph.get_operations() if op.type in ("While", "StatelessWhile")]
    assert loops and all(op.get_attr("parallel_iterations") == audio_graph.DECODE_PARALLELISM == 1 for op in loops)


def test_a_wav_over_the_sample_limit_is_refused():
    """frames x channels, as the Beam job counts them (DecodeLimits.max_source_samples)."""
    stereo = np.zeros((500, 2), np.float32)
    waveform, length = _decode([_wav(stereo)], max_source_samples=1000)             # at the limit
    assert length.numpy().tolist() == [500]
    with pytest.raises(tf.errors.InvalidArgumentError, match="holds more than 999 samples, frames times channels"):
        _decode([_wav(stereo)], max_source_samples=999)


def test_a_wav_over_the_byte_limit_is_refused_before_it_is_decoded():
    data = _wav(np.zeros(1000, np.float32))
    _decode([data], max_file_bytes=len(data))
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"larger than {len(data) - 1} bytes"):
        _decode([data], max_file_bytes=len(data) - 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than 100 bytes"):   # not decode_wav's "Header mismatch"
        _decode([b"not a wav file " * 10], max_file_bytes=100)
