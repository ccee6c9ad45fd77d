"""Guarding the job's output directory: refuse to mix runs, overwrite safely, trust only manifests."""

import shutil

import pytest

from pipeline import fileio
from pipeline.data import job_output as output


def make_run(directory, status=None):
    """A fake output dir: shards, labels, dead letters, and a manifest unless status is None."""
    (directory / "train").mkdir(parents=True)
    (directory / "train" / "data-00000-of-00001.tfrecord.gz").write_bytes(b"x")
    (directory / "labels.txt").write_text("Bark\n")
    (directory / "dead_letters.jsonl").write_text("")
    if status is not None:
        manifest = {"status": status, "created": "2026-01-01T00:00:00+00:00"}
        if status != output.STATUS_COMPLETE:
            manifest["status_reason"] = "9 of 49 rows failed (error ratio 0.184 > --max_error_ratio 0.05)"
        fileio.write_json(str(directory / output.MANIFEST), manifest)
    return directory


def test_prepare_nonexistent_dir(tmp_path):
    output.prepare(str(tmp_path / "does" / "not" / "exist"), overwrite=False)


def test_prepare_empty_dir(tmp_path):
    output.prepare(str(tmp_path), overwrite=False)
    assert list(tmp_path.iterdir()) == []


def test_prepare_refuses_a_finished_run(tmp_path):
    make_run(tmp_path, output.STATUS_COMPLETE)
    with pytest.raises(output.OutputError, match="already holds a finished run.*--overwrite") as e:
        output.prepare(str(tmp_path), overwrite=False)
    assert "'complete'" in str(e.value)
    assert (tmp_path / output.MANIFEST).exists()  # nothing deleted


def test_prepare_refuses_files_without_manifest(tmp_path):
    make_run(tmp_path)
    with pytest.raises(output.OutputError, match=r"holds 3 files but no manifest.json: an interrupted") as e:
        output.prepare(str(tmp_path), overwrite=False)
    assert "--overwrite" in str(e.value)
    assert (tmp_path / "labels.txt").exists()


def test_prepare_overwrite_deletes_everything_manifest_first(tmp_path, monkeypatch):
    """With overwrite the completion mark goes first, so a crash mid-delete never leaves a
    'complete' manifest next to half the shards."""
    make_run(tmp_path, output.STATUS_COMPLETE)
    deleted = []
    real_delete = output.FileSystems.delete
    monkeypatch.setattr(output.FileSystems, "delete", lambda paths: (deleted.append(list(paths)), real_delete(paths)))
    output.prepare(str(tmp_path), overwrite=True)
    assert deleted[0] == [fileio.join(str(tmp_path), output.MANIFEST)]
    assert sorted(p for batch in deleted[1:] for p in batch) == sorted(
        str(tmp_path / p) for p in ("train/data-00000-of-00001.tfrecord.gz", "labels.txt", "dead_letters.jsonl"))
    assert output.list_files(str(tmp_path)) == []
    output.prepare(str(tmp_path), overwrite=False)  # now usable without --overwrite


def test_prepare_overwrite_without_manifest(tmp_path):
    make_run(tmp_path)
    output.prepare(str(tmp_path), overwrite=True)
    assert output.list_files(str(tmp_path)) == []


def test_list_files_is_recursive_and_sorted(tmp_path):
    make_run(tmp_path, output.STATUS_COMPLETE)
    assert output.list_files(str(tmp_path)) == sorted(
        str(tmp_path / p) for p in ("train/data-00000-of-00001.tfrecord.gz", "labels.txt", "dead_letters.jsonl",
                                    output.MANIFEST))


def test_require_complete_without_manifest(tmp_path):
    make_run(tmp_path)
    with pytest.raises(output.OutputError, match="no manifest.json"):
        output.require_complete(str(tmp_path))


def test_require_complete_on_failed_run(tmp_path):
    make_run(tmp_path, "failed")
    with pytest.raises(output.OutputError, match=r"status 'failed': 9 of 49 rows failed \(error ratio"):
        output.require_complete(str(tmp_path))


def test_require_complete_returns_the_manifest(tmp_path):
    make_run(tmp_path, output.STATUS_COMPLETE)
    manifest = output.require_complete(str(tmp_path))
    assert manifest == {"status": "complete", "created": "2026-01-01T00:00:00+00:00"}


def test_overwrite_refuses_files_the_job_did_not_write_and_deletes_nothing(tmp_path):
    """Reproduces the data loss: --overwrite used to delete a whole folder, .git included."""
    make_run(tmp_path, output.STATUS_COMPLETE)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "thesis.tex").write_text("chapter 1")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main")
    before = output.list_files(str(tmp_path))
    with pytest.raises(output.OutputError, match=r"holds 2 files this job did not write \(\.git/HEAD, src/thesis\.tex\)"
                                                 r".*even with --overwrite"):
        output.prepare(str(tmp_path), overwrite=True)
    assert output.list_files(str(tmp_path)) == before


def test_overwrite_removes_every_kind_of_file_a_run_writes(tmp_path):
    make_run(tmp_path, output.STATUS_COMPLETE)
    for rel in ("eval/data-00003-of-00004.tfrecord.gz", "Split-train/data-00000-of-00001.tfrecord.gz",
                "test/data-00000-of-00002.tfrecord.gz", "_tmp/train-0123abcd.tfrecord.gz", "labels.txt.tmp",
                "manifest.json.tmp"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    output.prepare(str(tmp_path), overwrite=True)
    assert output.list_files(str(tmp_path)) == []


@pytest.mark.parametrize("name", ["train/notes.txt", "train/data-0-of-1.tfrecord.gz", "labels.txt.bak",
                                  "other/data-00000-of-00001.tfrecord.gz", "manifest.json/x"])
def test_files_that_only_look_like_the_jobs_are_foreign(tmp_path, name):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text("mine")
    with pytest.raises(output.OutputError, match="did not write"):
        output.prepare(str(tmp_path), overwrite=True)
    assert (tmp_path / name).exists()


@pytest.mark.parametrize("link", ["_tmp", "train", "Split-eval", "train/data-00001-of-00002.tfrecord.gz"])
def test_a_symlink_inside_the_output_is_refused_and_nothing_outside_is_touched(tmp_path, link):
    """Reproduces the data loss of issue 19: a `_tmp` linked to a scratch disk lost the disk's
    files under --overwrite (Beam's listing does not descend into a linked folder, so the link
    passed the "only our files" check). Any link inside the tree is refused; the target is kept."""
    out = make_run(tmp_path / "out", output.STATUS_COMPLETE)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "train-0123abcd.tfrecord.gz").write_bytes(b"someone else's")
    (scratch / "data-00000-of-00001.tfrecord.gz").write_bytes(b"another's shard")
    target = scratch / "data-00000-of-00001.tfrecord.gz" if link.endswith(".gz") else scratch
    shutil.rmtree(out / "train") if link == "train" else (out / link).parent.mkdir(parents=True, exist_ok=True)
    (out / link).symlink_to(target)
    for overwrite in (False, True):
        with pytest.raises(output.OutputError, match=rf"{link} is a symbolic link \(to {scratch}.*remove the link"):
            output.prepare(str(out), overwrite=overwrite)
    assert sorted(p.name for p in scratch.iterdir()) == ["data-00000-of-00001.tfrecord.gz", "train-0123abcd.tfrecord.gz"]
    assert (out / output.MANIFEST).exists()


def test_an_output_folder_that_is_itself_a_link_is_used(tmp_path):
    """The folder the user names may be a link (an output on another disk); its tree may not."""
    real = make_run(tmp_path / "real", output.STATUS_COMPLETE)
    (tmp_path / "out").symlink_to(real)
    output.prepare(str(tmp_path / "out"), overwrite=True)
    assert real.is_dir() and output.list_files(str(real)) == []


def test_output_and_input_folders_must_not_contain_each_other(tmp_path):
    data = tmp_path / "data"
    (data / "train_curated").mkdir(parents=True)
    with pytest.raises(output.OutputError, match="contains the input"):
        output.prepare(str(tmp_path), overwrite=True, inputs=[str(data / "train_curated")])
    with pytest.raises(output.OutputError, match="lies inside the input"):
        output.prepare(str(data / "out"), overwrite=True, inputs=[str(data)])
    with pytest.raises(output.OutputError, match="contains the input"):   # the same folder, written differently
        output.prepare(str(data) + "/./", overwrite=False, inputs=[str(data)])
    output.prepare(str(tmp_path / "out"), overwrite=False, inputs=[str(data), str(data / "train_curated")])
    with pytest.raises(output.OutputError, match="lies inside"):
        output.prepare("gs://b/data/out", overwrite=False, inputs=["gs://b/data"])


def test_a_folder_that_cannot_be_listed_is_refused_not_taken_as_empty(tmp_path, monkeypatch):
    # a stand-in for a listing failure (permissions, a flaky object store): as root on a local
    # disk no folder is unreadable, so FileSystems.match is made to fail the way Beam reports it
    from apache_beam.io.filesystem import BeamIOError

    def fail(patterns):
        raise BeamIOError("List operation failed", {patterns[0]: PermissionError("denied")})

    monkeypatch.setattr(output.FileSystems, "match", fail)
    with pytest.raises(output.OutputError, match="cannot list .*denied"):
        output.prepare(str(tmp_path), overwrite=True)
