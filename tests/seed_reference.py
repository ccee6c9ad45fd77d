"""The seed kernel's feature code (read_audio after loading, audio_to_melspectrogram, normalize),
parameterised by a FeatureConfig and written against librosa 0.11's keyword API. It is the
reference the TF feature function is tested against; it is not used by the pipeline."""
import librosa
import numpy as np

from pipeline import config as config_lib


def trim(y, cfg):
    if len(y) == 0:  # the seed's workaround: 0 length causes an error
        return y, (0, 0)
    t = cfg.trim
    yt, idx = librosa.effects.trim(y, top_db=t.top_db, frame_length=t.frame_length, hop_length=t.hop_length)
    return yt, (int(idx[0]), int(idx[1]))


def read_audio(y, cfg):
    samples = config_lib.clip_samples(cfg)
    if cfg.trim.enabled:
        y, _ = trim(y, cfg)
    if len(y) > samples:
        y = y[0:samples]
    else:
        padding = samples - len(y)
        offset = padding // 2
        y = np.pad(y, (offset, samples - len(y) - offset), "constant")
    return y


def audio_to_melspectrogram(audio, cfg):
    spectrogram = librosa.feature.melspectrogram(
        y=audio, sr=cfg.sample_rate, n_mels=cfg.n_mels, hop_length=cfg.hop_length, n_fft=cfg.n_fft,
        fmin=cfg.fmin, fmax=config_lib.fmax(cfg))
    return librosa.power_to_db(spectrogram, ref=1.0, amin=cfg.amin, top_db=cfg.top_db).astype(np.float32)


def normalize(img, eps=0.001):
    if np.std(img) != 0:
        return (img - np.mean(img)) / np.std(img)
    return (img - np.mean(img)) / eps


def seed_features(y, cfg):
    """[frames, mels] as the seed's X after normalize_dataset."""
    return normalize(audio_to_melspectrogram(read_audio(y, cfg), cfg).T, cfg.normalization_eps)
