"""components/serving_pusher: the executor's Do on real TFX artifacts (a Model holding a real, tiny
SavedModel, a ModelBlessing, a PushedModel) pushing into a local serving folder: a half-copied
newest version is never reused, versions never collide and always move forward, and another
push's or export's temporary folder is left alone."""
import os
import time

import pytest
import tensorflow as tf
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components.serving_pusher import executor as pusher
from pipeline import saved_model_layout as layout

NOW = 1_800_000_000.25          # the clock the tests set: pushes within one second of each other


def _tree(path):
    """{relative path: bytes} of every file under `path`."""
    out = {}
    for folder, _, files in os.walk(path):
        for name in files:
            full = os.path.join(folder, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


def _saved_model(uri, value: float):
    """A Model artifact over a real SavedModel (one variable, one signature) in uri/Format-Serving,
    where TFX's Trainer writes it; models of other values have other fingerprints."""
    module = tf.Module()
    module.v = tf.Variable(value)
    module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, os.path.join(uri, "Format-Serving"), signatures=module.f)
    model = standard_artifacts.Model()
    model.uri = str(uri)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    a, b = _saved_model(root / "a", 1.0), _saved_model(root / "b", 2.0)
    serving = lambda m: os.path.join(m.uri, "Format-Serving")     # noqa: E731
    assert os.path.exists(os.path.join(serving(a), pusher.FINGERPRINT))
    assert _tree(serving(a))[pusher.FINGERPRINT] != _tree(serving(b))[pusher.FINGERPRINT]
    return a, b


def _serving(model):
    return os.path.join(model.uri, "Format-Serving")


@pytest.fixture
def clock(monkeypatch):
    """The wall clock the Pusher reads, set by the test."""
    monkeypatch.setattr(time, "time", lambda: NOW)


def push(model, base, out, blessed=True, best_model_id=None, not_best=None):
    """The executor's Do as TFX's launcher calls it; returns the PushedModel artifact. best_model_id,
    not_best: what the Evaluator records when blessing (the best model on the same clips, and why
    when that is the baseline)."""
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(out / "blessing")
    blessing.set_int_custom_property("blessed", int(blessed))
    if best_model_id is not None:
        blessing.set_int_custom_property("best_model_id", best_model_id)
    if not_best is not None:
        blessing.set_string_custom_property("not_best", not_best)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(out / f"pushed-{len(os.listdir(out)) if out.exists() else 0}")
    destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(base)))
    pusher.Executor().Do({"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
                         {"push_destination": proto_utils.proto_to_json(destination)})
    return pushed


def versions(base):
    return sorted((n for n in os.listdir(base) if layout.is_version(n)), key=int)


def test_a_push_writes_a_complete_version_and_a_second_push_of_the_same_model_reuses_it(models, tmp_path, clock):
    a, _ = models
    base = tmp_path / "serving"
    first = push(a, base, tmp_path / "out")
    assert first.get_int_custom_property("pushed") == 1
    assert first.get_string_custom_property("pushed_version") == str(int(NOW))
    assert first.get_string_custom_property("pushed_destination") == str(base / str(int(NOW)))
    assert os.listdir(base) == [str(int(NOW))]              # no temporary folder left
    assert _tree(base / str(int(NOW))) == _tree(_serving(a))
    assert _tree(first.uri) == _tree(_serving(a))           # archived in the PushedModel, as TFX does
    again = push(a, base, tmp_path / "out")
    assert again.get_int_custom_property(pusher.REUSED) == 1
    assert again.get_string_custom_property("pushed_destination") == str(base / str(int(NOW)))
    assert os.listdir(base) == [str(int(NOW))]


def test_a_model_not_blessed_is_not_pushed(models, tmp_path, clock):
    a, _ = models
    pushed = push(a, tmp_path / "serving", tmp_path / "out", blessed=False)
    assert pushed.get_int_custom_property("pushed") == 0
    assert not (tmp_path / "serving").exists()


def _half_copied(version, model):
    """What a push killed mid-copy leaves: TFX copies every file but saved_model.pb first."""
    for rel, data in _tree(_serving(model)).items():
        if rel != "saved_model.pb":
            os.makedirs(os.path.dirname(version / rel), exist_ok=True)
            (version / rel).write_bytes(data)


def _truncated_variables(version, model):
    """Every file there, the variables' data cut short (a copy killed while writing it)."""
    for rel, data in _tree(_serving(model)).items():
        os.makedirs(os.path.dirname(version / rel), exist_ok=True)
        (version / rel).write_bytes(data[: len(data) // 2] if rel.startswith("variables/variables.data") else data)


@pytest.mark.parametrize("damage", [_half_copied, _truncated_variables])
def test_a_damaged_newest_version_with_the_same_fingerprint_is_not_reused(models, tmp_path, clock, damage):
    """Before, the same fingerprint.pb was enough: the Pusher recorded the broken version as pushed
    (reused_version 1) and never repaired it, and TF Serving failed on it."""
    a, _ = models
    base = tmp_path / "serving"
    damage(base / "1000", a)
    assert _tree(base / "1000")[pusher.FINGERPRINT] == _tree(_serving(a))[pusher.FINGERPRINT]
    pushed = push(a, base, tmp_path / "out")
    assert not pushed.get_int_custom_property(pusher.REUSED)
    version = pushed.get_string_custom_property("pushed_version")
    assert versions(base) == ["1000", version] and version == str(int(NOW))
    assert _tree(base / version) == _tree(_serving(a))


def test_two_pushes_in_the_same_second_get_two_versions(models, tmp_path, clock):
    """Before, the second push found its timestamp taken, copied nothing and recorded a push of
    model b pointing at model a's version."""
    a, b = models
    base = tmp_path / "serving"
    first, second = push(a, base, tmp_path / "out"), push(b, base, tmp_path / "out")
    va, vb = (p.get_string_custom_property("pushed_version") for p in (first, second))
    assert (int(va), int(vb)) == (int(NOW), int(NOW) + 1) and versions(base) == [va, vb]
    assert second.get_string_custom_property("pushed_destination") == str(base / vb)
    assert _tree(base / va) == _tree(_serving(a)) and _tree(base / vb) == _tree(_serving(b))


def test_a_newest_version_ahead_of_the_clock_is_followed_by_the_next_number(models, tmp_path, clock):
    """A clock behind the newest version (a host with another time, a version pushed by hand) gave
    a lower version, which TF Serving never switches to."""
    a, b = models
    base = tmp_path / "serving"
    ahead = str(int(NOW) + 3600)
    push(b, base, tmp_path / "out")
    os.rename(base / str(int(NOW)), base / ahead)
    pushed = push(a, base, tmp_path / "out")
    assert pushed.get_string_custom_property("pushed_version") == str(int(ahead) + 1)
    assert versions(base)[-1] == str(int(ahead) + 1)


def test_other_temporary_folders_beside_the_versions_are_left_alone_and_named(models, tmp_path, clock, caplog):
    """A push in progress elsewhere (or one that crashed) owns its temporary folder; TF Serving
    ignores it (not all digits) and so does this push, which names them for a person to clear."""
    a, _ = models
    base = tmp_path / "serving"
    theirs = [base / f".tmp-push-{int(NOW)}-other", base / f".tmp-{int(NOW)}"]
    for folder in theirs:
        folder.mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"someone else's")
    with caplog.at_level("WARNING", logger="components.serving_pusher.executor"):
        pushed = push(a, base, tmp_path / "out")
    assert pushed.get_string_custom_property("pushed_version") == str(int(NOW))
    warned = [r.getMessage() for r in caplog.records if "temporary folder" in r.getMessage()]
    assert len(warned) == 1 and f".tmp-{int(NOW)}, .tmp-push-{int(NOW)}-other" in warned[0], warned
    for folder in theirs:
        assert (folder / "saved_model.pb").read_bytes() == b"someone else's"
    assert sorted(os.listdir(base)) == sorted([f.name for f in theirs] + [str(int(NOW))])


def test_a_version_that_appears_during_the_copy_is_not_replaced(models, tmp_path, clock, monkeypatch):
    """Another push choosing the same version at the same time: the one that renames second fails
    with a clear error, and neither the other version nor a temporary folder is left damaged."""
    from pipeline import fileio

    a, _ = models
    base = tmp_path / "serving"
    publish = fileio.publish_dir

    def another_push_first(tmp, final):
        os.makedirs(final)
        with open(os.path.join(final, "saved_model.pb"), "wb") as f:
            f.write(b"the other push's")
        publish(tmp, final)

    monkeypatch.setattr(fileio, "publish_dir", another_push_first)
    with pytest.raises(FileExistsError, match="appeared while this push copied the model"):
        push(a, base, tmp_path / "out")
    assert os.listdir(base) == [str(int(NOW))]             # no temporary folder left
    assert _tree(base / str(int(NOW))) == {"saved_model.pb": b"the other push's"}


def test_an_object_store_gets_whole_versions_in_place_and_no_temporary_folder(models, tmp_path, clock):
    """Object stores have no rename (TensorFlow's ram:// filesystem stands in for gs://): the files
    are copied into the version itself; the completeness check still refuses a torn copy."""
    from tfx.dsl.io import fileio

    a, b = models
    base = f"ram://{tmp_path.name}/fat_tagger"

    def tree(path):
        out = {}
        for rel in pusher._files(path):
            with fileio.open(os.path.join(path, rel), "rb") as f:
                out[rel] = f.read()
        return out

    torn = tree(_serving(a))
    del torn["saved_model.pb"]
    for rel, data in torn.items():
        fileio.makedirs(os.path.dirname(f"{base}/1000/{rel}"))
        with fileio.open(f"{base}/1000/{rel}", "wb") as f:
            f.write(data)
    first = push(a, base, tmp_path / "out")
    assert not first.get_int_custom_property(pusher.REUSED)
    assert first.get_string_custom_property("pushed_destination") == f"{base}/{int(NOW)}"
    assert tree(f"{base}/{int(NOW)}") == _tree(_serving(a))
    again, other = push(a, base, tmp_path / "out"), push(b, base, tmp_path / "out")
    assert again.get_int_custom_property(pusher.REUSED) == 1
    assert other.get_string_custom_property("pushed_version") == str(int(NOW) + 1)
    assert sorted(fileio.listdir(base)) == ["1000", str(int(NOW)), str(int(NOW) + 1)]


def test_a_blessed_model_that_scored_lower_than_the_served_one_is_not_pushed(models, tmp_path, clock):
    """The INTERVAL gate blesses a candidate within tolerance of the baseline; when the baseline
    scored higher on the same clips (best_model_id is the baseline's), the served model stays."""
    a, b = models
    a.id, b.id = 7, 8
    base = tmp_path / "serving"
    first = push(a, base, tmp_path / "runs", best_model_id=7)
    assert first.get_int_custom_property("pushed") == 1
    served = _tree(base)
    why = "the served model (model 7) scored higher on the same clips: candidate - baseline -0.0120 [-0.0300, +0.0040]"
    second = push(b, base, tmp_path / "runs", best_model_id=7, not_best=why)
    assert second.get_int_custom_property("pushed") == 0
    assert second.get_string_custom_property("reason") == f"blessed, not pushed: {why}"
    assert _tree(base) == served
    third = push(b, base, tmp_path / "runs", best_model_id=8)         # the candidate is the best: pushed
    assert third.get_int_custom_property("pushed") == 1 and len(versions(base)) == 2
