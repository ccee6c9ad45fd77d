"""pipeline/saved_model_layout.py: which folders are versions, the way TF Serving reads them."""
from pipeline import saved_model_layout as layout


def test_newest_version_takes_ascii_digit_folders_only():
    # "²" and "١٢" pass str.isdigit() but int() of the first fails and TF Serving ignores both
    names = ["1795966311", "99/", "²", "١٢", ".tmp-1795966999", "1795966312.partial", "latest", "0012"]
    assert layout.newest_version(names) == "1795966311"
    assert layout.newest_version(["²", ".tmp-5"]) is None and layout.newest_version([]) is None
    assert layout.is_version("7/") and not layout.is_version("²") and not layout.is_version("-1")


def test_the_pusher_finds_the_newest_version_beside_stray_folders(tmp_path):
    """components/serving_pusher reads the serving folder through TFX's fileio: a stray folder named
    "²" crashed it (int("²") raises) before the versions were matched by ^[0-9]+$."""
    from components.serving_pusher.executor import newest_version

    for name in ("17", "9", "²", ".tmp-18"):
        (tmp_path / name).mkdir()
    assert newest_version(str(tmp_path)) == str(tmp_path / "17")
    assert newest_version(str(tmp_path / "missing")) is None


def test_next_version_is_the_clock_or_one_above_the_newest():
    assert layout.next_version([], 1800000000.9) == 1800000000
    assert layout.next_version(["1700000000", ".tmp-export-1900000000-1-ab"], 1800000000.9) == 1800000000
    assert layout.next_version(["1800000000"], 1800000000.9) == 1800000001        # the same second
    assert layout.next_version(["1900000000", "²"], 1800000000.0) == 1900000001   # a clock behind


def test_temporary_names_are_never_versions_and_never_repeat():
    names = {layout.temp_name(1800000000, "push") for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith(".tmp-push-1800000000-") and not layout.is_version(n) for n in names)
    assert layout.newest_version(names) is None
