"""The Kaggle FAT2019 layout: label vocabulary, CSV rows, and what makes a row a dead letter."""
import csv
import io

import pytest

from pipeline.data import kaggle_layout as kl
from pipeline.data.kaggle_layout import BadRow, Row

VOCAB = ["Bark", "Slam", "Zipper_(clothing)"]


def write(path, text, bom=False):
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return str(path)


# ---------------------------------------------------------------------------------------------
# vocabulary


def test_vocabulary_from_sample_submission_header(tmp_path):
    path = write(tmp_path / "sample_submission.csv", "fname,Bark,Slam,Zipper_(clothing)\nt1.wav,0,0,0\n")
    assert kl.load_vocabulary(path) == VOCAB


def test_vocabulary_from_sample_submission_with_bom(tmp_path):
    path = write(tmp_path / "sample_submission.csv", "fname,Bark,Slam\n", bom=True)
    assert kl.load_vocabulary(path) == ["Bark", "Slam"]


def test_vocabulary_from_labels_txt(tmp_path):
    """One label per line; blank lines and surrounding spaces are ignored; the order is kept."""
    path = write(tmp_path / "labels.txt", "Zipper_(clothing)\n  Bark \n\nSlam\n")
    assert kl.load_vocabulary(path) == ["Zipper_(clothing)", "Bark", "Slam"]


@pytest.mark.parametrize("name,text,message", [
    ("sample_submission.csv", "name,Bark,Slam\n", "expected a header 'fname,<label>"),
    ("sample_submission.csv", "fname\n", "expected a header 'fname,<label>"),
    ("sample_submission.csv", "", "expected a header 'fname,<label>"),
    ("sample_submission.csv", "fname,Bark,Slam,Bark\n", "duplicate labels ['Bark']"),
    ("labels.txt", "Bark\nSlam\nBark\nSlam\n", "duplicate labels ['Bark', 'Slam']"),
    ("labels.txt", "\n \n", "no labels found"),
])
def test_bad_vocabulary(tmp_path, name, text, message):
    path = write(tmp_path / name, text)
    with pytest.raises(ValueError) as e:
        kl.load_vocabulary(path)
    assert message in str(e.value) and path in str(e.value)


def test_missing_vocabulary_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot read"):
        kl.load_vocabulary(str(tmp_path / "nope.csv"))


# ---------------------------------------------------------------------------------------------
# rows


def csv_text(rows, header=("fname", "labels")):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    return buf.getvalue()


def test_multi_label_rows_become_sorted_indices():
    """'Slam,Bark' (quoted in the CSV) -> (0, 1); repeats collapse; spaces around names are dropped."""
    text = csv_text([("a.wav", "Bark"), ("b.wav", "Slam,Bark"), ("c.wav", "Zipper_(clothing), Bark ,Bark")])
    assert '"Slam,Bark"' in text
    good, bad = kl.parse_rows(text, VOCAB)
    assert bad == []
    assert good == [Row("a.wav", 2, (0,)), Row("b.wav", 3, (0, 1)), Row("c.wav", 4, (0, 2))]


def test_test_mode_reads_fnames_from_sample_submission():
    text = csv_text([("t1.wav", 0, 0, 0), ("t2.wav", 0, 0, 0)], header=("fname", *VOCAB))
    good, bad = kl.parse_rows(text, None)
    assert bad == []
    assert good == [Row("t1.wav", 2), Row("t2.wav", 3)]
    assert all(r.labels == () for r in good)


def test_test_mode_still_rejects_unsafe_and_duplicate_fnames():
    text = csv_text([("t1.wav", 0), ("../t2.wav", 0), ("t1.wav", 0)], header=("fname", "Bark"))
    good, bad = kl.parse_rows(text, None)
    assert [r.fname for r in good] == ["t1.wav"]
    assert [(b.fname, b.reason) for b in bad] == [("../t2.wav", "unsafe_path"), ("t1.wav", "duplicate_fname")]


MIXED = """fname,labels
ok1.wav,Bark
too,many,columns
lonely.wav

sub/ok2.wav,"Slam,Bark"
../x.wav,Bark
/etc/passwd,Bark
a/../../x.wav,Bark
gs://b/x.wav,Bark
C:\\x.wav,Bark
ok1.wav,Slam
nolabel.wav,
spaces.wav," , "
unknown.wav,"Bark,Meow"
,Bark
./ok3.wav,Zipper_(clothing)
"""


def test_every_data_line_is_one_row_or_one_bad_row():
    good, bad = kl.parse_rows(MIXED, VOCAB)
    data_lines = [line for line in MIXED.splitlines()[1:] if line.strip()]
    assert len(good) + len(bad) == len(data_lines) == 15
    lines = sorted([r.line for r in good] + [b.line for b in bad])
    assert lines == [n for n in range(2, 18) if n != 5]  # line 5 is blank: not a row
    assert [(r.fname, r.line, r.labels) for r in good] == [
        ("ok1.wav", 2, (0,)), ("sub/ok2.wav", 6, (0, 1)), ("ok3.wav", 17, (2,))]  # "./ok3.wav" normalized


def test_bad_row_reasons():
    _, bad = kl.parse_rows(MIXED, VOCAB)
    assert [(b.fname, b.line, b.reason) for b in bad] == [
        ("too", 3, "malformed_row"),
        ("lonely.wav", 4, "malformed_row"),
        ("../x.wav", 7, "unsafe_path"),
        ("/etc/passwd", 8, "unsafe_path"),
        ("a/../../x.wav", 9, "unsafe_path"),
        ("gs://b/x.wav", 10, "unsafe_path"),
        ("C:\\x.wav", 11, "unsafe_path"),
        ("ok1.wav", 12, "duplicate_fname"),
        ("nolabel.wav", 13, "no_labels"),
        ("spaces.wav", 14, "no_labels"),
        ("unknown.wav", 15, "unknown_label"),
        ("", 16, "unsafe_path"),
    ]
    by_fname = {b.fname: b for b in bad}
    assert "got 3" in by_fname["too"].detail and "got 1" in by_fname["lonely.wav"].detail
    assert by_fname["ok1.wav"].detail == "already listed on line 2"
    assert "Meow" in by_fname["unknown.wav"].detail and "Bark" not in by_fname["unknown.wav"].detail
    assert "'..'" in by_fname["../x.wav"].detail
    assert "absolute" in by_fname["/etc/passwd"].detail and "URL" in by_fname["gs://b/x.wav"].detail
    assert "backslash" in by_fname["C:\\x.wav"].detail


@pytest.mark.parametrize("fname", ["../x.wav", "..", "/etc/passwd", "a/../../x.wav", "a/..", "gs://b/x.wav",
                                   "s3://b/x.wav", "C:\\x.wav", "C:/x.wav", "sub\\x.wav", "x\x00.wav", ""])
def test_unsafe_paths(fname):
    assert kl.unsafe_path_reason(fname) is not None


@pytest.mark.parametrize("fname", ["x.wav", "sub/x.wav", "a/b/c.flac", "./x.wav", "..x.wav", "x..wav",
                                   "0006ae4e.wav"])
def test_harmless_paths(fname):
    assert kl.unsafe_path_reason(fname) is None


def test_first_occurrence_of_a_duplicate_wins():
    text = csv_text([("a.wav", "Bark"), ("b.wav", "Slam"), ("a.wav", "Slam")])
    good, bad = kl.parse_rows(text, VOCAB)
    assert good == [Row("a.wav", 2, (0,)), Row("b.wav", 3, (1,))]
    assert bad == [BadRow("a.wav", 4, "duplicate_fname", "already listed on line 2")]


@pytest.mark.parametrize("header", ["name,labels", "fname,label", "fname", ""])
def test_bad_train_header(header):
    with pytest.raises(ValueError, match="header"):
        kl.parse_rows(header + "\na.wav,Bark\n", VOCAB)


def test_bad_test_header():
    with pytest.raises(ValueError, match="header"):
        kl.parse_rows("file,Bark\na.wav,0\n", None)


def test_bom_is_removed_by_read_text(tmp_path):
    """A CSV saved with a UTF-8 BOM (Excel) still has the header 'fname', not '\\ufefffname'."""
    path = write(tmp_path / "train_curated.csv", csv_text([("a.wav", "Bark"), ("b.wav", "Slam")]), bom=True)
    text = kl.read_text(path)
    assert not text.startswith("\ufeff")
    good, bad = kl.parse_rows(text, VOCAB)
    assert bad == [] and [r.fname for r in good] == ["a.wav", "b.wav"]
    with pytest.raises(ValueError, match="header"):  # what parse_rows would do with the BOM kept
        kl.parse_rows("\ufeff" + text, VOCAB)


def test_crlf_line_endings():
    text = csv_text([("a.wav", "Bark"), ("b.wav", "Slam,Bark")]).replace("\n", "\r\n")
    good, bad = kl.parse_rows(text, VOCAB)
    assert bad == [] and good == [Row("a.wav", 2, (0,)), Row("b.wav", 3, (0, 1))]


# ---------------------------------------------------------------------------------------------
# sources


def test_rows_and_bad_rows_name_their_source():
    good, bad = kl.parse_rows("fname,labels\na.wav,Bark\nb.wav,Nope\n", VOCAB, kl.NOISY)
    assert good == [Row("a.wav", 2, (0,), kl.NOISY)]
    assert bad == [BadRow("b.wav", 3, "unknown_label", "not in the vocabulary: Nope", kl.NOISY)]
    assert kl.parse_rows("fname,labels\na.wav,Bark\n", VOCAB)[0][0].source == kl.CURATED


def test_a_clip_listed_by_two_sources_is_kept_in_the_first_and_reported_in_the_second():
    """One file name is one clip: the noisy listing of a curated clip is a duplicate_fname bad row
    naming where the clip is kept; each source's own checks still apply; good + bad = all rows."""
    curated = "fname,labels\na.wav,Bark\nb.wav,Slam\n"
    noisy = "fname,labels\nc.wav,Slam\n./b.wav,Bark\nc.wav,Bark\nd.wav,\n"
    good, bad = kl.parse_sources([(kl.CURATED, "train_curated.csv", curated),
                                  (kl.NOISY, "train_noisy.csv", noisy)], VOCAB)
    assert good == [Row("a.wav", 2, (0,)), Row("b.wav", 3, (1,)), Row("c.wav", 2, (1,), kl.NOISY)]
    assert sorted((b.fname, b.line, b.reason, b.source) for b in bad) == [
        ("b.wav", 3, "duplicate_fname", kl.NOISY), ("c.wav", 4, "duplicate_fname", kl.NOISY),
        ("d.wav", 5, "no_labels", kl.NOISY)]
    across = next(b for b in bad if b.fname == "b.wav")
    assert across.detail == ("also listed by the curated source (train_curated.csv line 3), which keeps it: "
                             "one file name is one clip")
    assert len(good) + len(bad) == 2 + 4


def test_named_columns_after_labels_are_allowed_and_a_row_must_fill_them():
    """A training CSV may carry more named columns (a clip's group, pipeline/data/groups.py): rows
    of the header's width parse as before; a row of another width is malformed, naming the columns."""
    text = "fname,labels,group\na.wav,Bark,r1\nb.wav,\"Bark,Slam\",\nc.wav,Bark\n"
    good, bad = kl.parse_rows(text, VOCAB)
    assert [(r.fname, r.labels) for r in good] == [("a.wav", (0,)), ("b.wav", (0, 1))]
    assert [(b.fname, b.reason, b.detail) for b in bad] == [
        ("c.wav", "malformed_row", "expected 3 columns (fname,labels,group), got 2")]
    _, bad = kl.parse_rows("fname,labels\na.wav,Bark,r1\n", VOCAB)
    assert bad[0].detail == "expected 2 columns (fname,labels), got 3"
