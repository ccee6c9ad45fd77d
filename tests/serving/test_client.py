"""fatp-predict's server mode and pipeline/serving/client.py against a TEST DOUBLE of TensorFlow
Serving (tests/serving_double.py: TF Serving's gRPC and REST APIs over the SavedModel loaded the
way TF Serving loads it), since no TF Serving binary can be installed here. The submission it
writes from raw wav files must match local mode's, which scores the Beam job's examples."""
import csv
import json
import os
import re
import shutil

import numpy as np
import pytest

from pipeline import config
from pipeline.beam import cli
from pipeline.serving import predict
from pipeline.serving.client import GrpcClient, RestClient, ServingError, connect
from tests.serving_double import ServingDouble

pytestmark = pytest.mark.slow
FEATURES = config.feature_config("small")


@pytest.fixture(scope="module")
def double(trained):
    d = ServingDouble(trained[2]["export_path"], "fat_tagger", int(os.path.basename(trained[2]["export_path"])))
    grpc_address, rest_url = d.start()
    yield d, grpc_address, rest_url
    d.stop()


@pytest.fixture(autouse=True)
def healthy(double):
    double[0].fail_first, double[0].delay_s, double[0].calls = 0, 0.0, 0


@pytest.fixture(scope="module")
def local_submission(trained, train_examples, tmp_path_factory):
    """Local mode on the test clips' examples: the reference."""
    root = tmp_path_factory.mktemp("local")
    assert cli.run(["--mode", "test", "--data_dir", str(train_examples.data), "--output_dir", str(root / "ex"),
                    "--preset", "small", "--log_level", "WARNING"]) == 0
    predict.predict(trained[2]["export_path"], str(root / "ex"), str(train_examples.data / "sample_submission.csv"),
                    str(root / "submission.csv"), allow_missing=False)
    return read(root / "submission.csv")


def read(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [r[0] for r in rows[1:]], np.array([[float(x) for x in r[1:]] for r in rows[1:]])


@pytest.mark.parametrize("scheme", ["grpc", "rest"])
def test_server_mode_writes_the_submission_local_mode_writes(double, train_examples, local_submission, tmp_path,
                                                             scheme):
    server = double[1] if scheme == "grpc" else double[2]
    out = tmp_path / "submission.csv"
    predict.main(["--server", server, "--model_name", "fat_tagger", "--audio", str(train_examples.data / "test"),
                  "--sample_submission", str(train_examples.data / "sample_submission.csv"),
                  "--feature_preset", "small", "--batch_size", "3", "--output", str(out)])
    header, fnames, scores = read(out)
    want_header, want_fnames, want = local_submission
    assert header == want_header and fnames == want_fnames and len(fnames) == 8
    np.testing.assert_allclose(scores, want, rtol=0, atol=1e-4)      # waveform vs example path, as in test_train
    assert (tmp_path / "submission.csv.errors.jsonl").read_text() == ""


def test_server_mode_resamples_to_the_rate_the_model_states_and_refuses_flags_that_disagree(
        double, train_examples, local_submission, tmp_path):
    """Issue 19 §7: the rate came from --feature_preset (seed, 44.1 kHz, by default), so against
    this 16 kHz model the files were resampled wrongly and scored with no error. The model now
    states its rate (serving_waveform's sample_rate output); no flag is needed, and a flag naming
    another rate is refused before any file is sent."""
    out = tmp_path / "submission.csv"
    args = ["--server", double[1], "--model_name", "fat_tagger", "--audio", str(train_examples.data / "test"),
            "--sample_submission", str(train_examples.data / "sample_submission.csv"), "--output", str(out)]
    predict.main(args)
    _, fnames, scores = read(out)
    np.testing.assert_allclose(scores, local_submission[2], rtol=0, atol=1e-4)
    out.unlink()
    with pytest.raises(SystemExit, match="takes audio at 16000 Hz, but the feature config given says 44100 Hz"):
        predict.main(args + ["--feature_preset", "seed"])
    assert not out.exists()


def test_unreadable_files_are_reported_and_fail_unless_allowed(double, train_examples, tmp_path):
    audio = tmp_path / "test"
    shutil.copytree(train_examples.data / "test", audio)
    names = sorted(os.listdir(audio))
    (audio / names[2]).write_bytes(b"<html>not audio</html>" * 10)
    sample = train_examples.data / "sample_submission.csv"
    out = tmp_path / "s.csv"
    args = ["--server", double[1], "--audio", str(audio), "--sample_submission", str(sample),
            "--feature_preset", "small", "--output", str(out)]
    with pytest.raises(SystemExit, match=f"1 clips have no scores .*{names[2]}"):
        predict.main(args)
    errors = [json.loads(x) for x in (tmp_path / "s.csv.errors.jsonl").read_text().splitlines()]
    assert [(e["fname"], e["reason"]) for e in errors] == [(names[2], "not_audio")]
    assert not out.exists()
    predict.main(args + ["--allow_missing"])
    _, fnames, scores = read(out)
    assert len(fnames) == 8 and not scores[fnames.index(names[2])].any()


@pytest.mark.parametrize("make", [lambda d: GrpcClient(d[1][len("grpc://"):], "fat_tagger", backoff_s=0.01),
                                  lambda d: RestClient(d[2], "fat_tagger", backoff_s=0.01)], ids=["grpc", "rest"])
def test_unavailable_is_retried_with_back_off(double, make):
    double[0].fail_first = 2
    client = make(double)
    assert "serving_waveform" in client.signatures()
    assert double[0].calls == 3
    double[0].fail_first, double[0].calls = 10, 0
    with pytest.raises(ServingError, match="unavailable after 5 attempts"):
        client.signatures()


@pytest.mark.parametrize("scheme", [1, 2], ids=["grpc", "rest"])
def test_clear_errors_for_unknown_model_version_signature_and_timeouts(double, scheme):
    server = double[scheme]
    with pytest.raises(ServingError, match="does not serve other_model"):
        connect(server, "other_model").signatures()
    with pytest.raises(ServingError, match="does not serve fat_tagger version 999"):
        connect(server, "fat_tagger", 999).signatures()
    with pytest.raises(ServingError,
                       match=r"has no signature 'serving_spectrogram'; it has \['serving_audio', 'serving_default', "):
        connect(server, "fat_tagger").check_signature("serving_spectrogram", ["mel"])
    double[0].delay_s = 1.5
    with pytest.raises(ServingError, match="no answer from .* within 0.3 s"):
        connect(server, "fat_tagger", timeout_s=0.3).signatures()


@pytest.mark.parametrize("scheme", [1, 2], ids=["grpc", "rest"])
def test_a_refused_request_carries_the_models_reason(double, scheme):
    client = connect(double[scheme], "fat_tagger")
    with pytest.raises(ServingError, match="length exceeds the time axis of waveform") as e:
        client.predict("serving_waveform", {"waveform": np.zeros((1, 100), np.float32),
                                            "length": np.array([101], np.int32)})
    assert e.value.refused


def test_unreachable_server(tmp_path):
    import socket

    with socket.socket() as s:           # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for server in (f"grpc://127.0.0.1:{port}", f"http://127.0.0.1:{port}"):
        with pytest.raises(ServingError, match=f"127.0.0.1:{port} is unavailable after 2 attempts"):
            connect(server, "fat_tagger", retries=1, backoff_s=0.01, timeout_s=2).signatures()
    with pytest.raises(ServingError, match="expected grpc://HOST:PORT or http://HOST:PORT"):
        connect("localhost:8500", "fat_tagger")


def _requests(train_examples):
    """One small batch per signature: eval examples, their clips' waveforms, the clips' WAV files."""
    import io

    import soundfile as sf

    from pipeline.features import audio
    from pipeline.features import feature_fn as features

    test_dir = train_examples.data / "test"
    wavs = []
    for name in sorted(os.listdir(test_dir)):
        data = (test_dir / name).read_bytes()
        if sf.info(io.BytesIO(data)).subtype == "PCM_16":
            wavs.append(data)
    assert len(wavs) >= 2
    clips = [audio.decode(w, FEATURES.sample_rate)[0] for w in wavs[:2]]
    waveform, length = features.pad_batch(clips)
    examples = np.array([r.serialized for r in train_examples.records["eval"][:3]], dtype=object)
    return {"serving_default": {"examples": examples},
            "serving_waveform": {"waveform": waveform, "length": length},
            "serving_audio": {"audio": np.array(wavs[:2], dtype=object)}}


@pytest.mark.parametrize("scheme", [1, 2], ids=["grpc", "rest"])
def test_every_signature_answers_through_the_client_as_the_loaded_model(double, train_examples, scheme):
    """Binary inputs (tf.Examples, WAV files) travel as DT_STRING tensors over gRPC and as
    {"b64": ...} over REST; the answers are the Session-loaded model's own."""
    client = connect(double[scheme], "fat_tagger")
    for signature, inputs in _requests(train_examples).items():
        got = client.predict(signature, inputs)
        want = double[0].model.run(signature, **inputs)
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=0, atol=1e-7, err_msg=signature)
        assert [x.decode() if isinstance(x, bytes) else x for x in got["labels"][0]] == \
            [x.decode() for x in want["labels"][0]]


@pytest.mark.parametrize("scheme", ["grpc", "rest"])
def test_server_mode_sends_wav_files_as_they_are_to_serving_audio(double, train_examples, local_submission, tmp_path,
                                                                  scheme):
    """--signature serving_audio: no decoding on the client. 16-bit PCM WAV files score as local
    mode's examples do (within the 1e-3 of issue 7: in-graph vs soxr resampling); the others (24-bit,
    float in the demo data) are refused by the model with decode_wav's reason and reported."""
    import io

    import soundfile as sf

    server = double[1] if scheme == "grpc" else double[2]
    test_dir = train_examples.data / "test"
    pcm16 = {n for n in os.listdir(test_dir) if sf.info(io.BytesIO((test_dir / n).read_bytes())).subtype == "PCM_16"}
    out = tmp_path / "submission.csv"
    args = ["--server", server, "--signature", "serving_audio", "--audio", str(test_dir),
            "--sample_submission", str(train_examples.data / "sample_submission.csv"), "--batch_size", "3",
            "--output", str(out), "--allow_missing"]
    predict.main(args)
    header, fnames, scores = read(out)
    want_header, want_fnames, want = local_submission
    assert header == want_header and fnames == want_fnames
    errors = [json.loads(x) for x in (tmp_path / "submission.csv.errors.jsonl").read_text().splitlines()]
    refused = {e["fname"] for e in errors}
    assert pcm16 and refused and refused == set(fnames) - pcm16
    assert all(e["reason"] == "refused_by_model" and re.search(r"16-bit WAV|Expected 1 \(PCM\)", e["detail"])
               for e in errors), errors
    rows = [fnames.index(f) for f in sorted(pcm16)]
    np.testing.assert_allclose(scores[rows], want[rows], rtol=0, atol=1e-3)
    assert not scores[[fnames.index(f) for f in refused]].any()
