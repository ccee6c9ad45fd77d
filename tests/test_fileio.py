"""pipeline/fileio.py: atomic writes, folder publishing and path containment, on a real disk."""
import json
import os

import pytest

from pipeline import fileio


def test_write_json_leaves_no_temporary_file_and_replaces(tmp_path):
    path = tmp_path / "m.json"
    fileio.write_json(str(path), {"b": 1, "a": [1, 2]})
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    fileio.write_json(str(path), {"c": 3})  # replaces an existing file
    assert json.loads(path.read_text()) == {"c": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_write_creates_missing_folders_and_reads_back(tmp_path):
    """As Beam's FileSystems.create does, which the job's outputs relied on."""
    path = tmp_path / "a" / "b" / "labels.txt"
    fileio.write_text(str(path), "x\ny\n")
    assert fileio.read_text(str(path)) == "x\ny\n"
    fileio.write_bytes(str(path), "\ufeffz".encode("utf-8"))
    assert fileio.read_text(str(path)) == "z"          # a BOM is dropped
    with pytest.raises(FileNotFoundError, match="cannot read"):
        fileio.read_text(str(tmp_path / "missing.txt"))


def test_publish_dir_renames_a_finished_folder_and_never_replaces(tmp_path):
    tmp, final = tmp_path / ".tmp-1", tmp_path / "1"
    (tmp / "variables").mkdir(parents=True)
    (tmp / "saved_model.pb").write_bytes(b"graph")
    (tmp / "variables" / "v").write_bytes(b"weights")
    fileio.publish_dir(str(tmp), str(final))
    assert not tmp.exists() and (final / "variables" / "v").read_bytes() == b"weights"
    other = tmp_path / ".tmp-2"
    other.mkdir()
    with pytest.raises(FileExistsError):
        fileio.publish_dir(str(other), str(final))
    assert (final / "saved_model.pb").read_bytes() == b"graph"


def test_is_within_resolves_links_and_never_mixes_urls_and_local_paths(tmp_path):
    (tmp_path / "data" / "clips").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "data" / "link")
    assert fileio.is_within(str(tmp_path / "data" / "clips"), str(tmp_path / "data"))
    assert fileio.is_within(str(tmp_path / "data"), str(tmp_path / "data/"))
    assert not fileio.is_within(str(tmp_path / "data" / "link"), str(tmp_path / "data"))   # the link leaves it
    assert not fileio.is_within(str(tmp_path / "database"), str(tmp_path / "data"))          # not a prefix match
    assert fileio.is_within("gs://b/data/x", "gs://b/data") and not fileio.is_within("gs://b/database", "gs://b/data")
    assert not fileio.is_within("gs://b/data", str(tmp_path)) and not fileio.is_within(str(tmp_path), "gs://b")
