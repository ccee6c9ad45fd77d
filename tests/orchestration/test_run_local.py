"""fatp-pipeline's flags for the ExampleGen's noisy source (issue 22 §2)."""
from pipeline import config
from pipeline.orchestration import run_local


def test_the_noisy_flags_set_the_example_gen_config():
    ap = run_local.arg_parser()
    cfg = lambda *flags: run_local._example_gen_config(ap.parse_args(["--data_dir", "d", *flags]))  # noqa: E731
    assert cfg().noisy == config.AudioExampleGenConfig.AUTO
    assert cfg("--noisy").noisy == config.AudioExampleGenConfig.ON
    assert cfg("--no_noisy").noisy == config.AudioExampleGenConfig.OFF


def test_the_group_flags_set_the_example_gen_config(tmp_path):
    """--group_regex/--group_column/--group_csv reach the ExampleGen's config; unset, a config
    file's value stays."""
    ap = run_local.arg_parser()
    cfg = lambda *flags: run_local._example_gen_config(ap.parse_args(["--data_dir", "d", *flags]))  # noqa: E731
    plain = cfg()
    assert (plain.group_regex, plain.group_column, plain.group_csv) == ("", "", "")
    grouped = cfg("--group_csv", "groups.csv", "--group_column", "recording")
    assert (grouped.group_csv, grouped.group_column) == ("groups.csv", "recording")
    assert cfg("--group_regex", "^(a)").group_regex == "^(a)"
    saved = tmp_path / "eg.pbtxt"
    saved.write_text('group_column: "group"\n')
    assert cfg("--example_gen_config", str(saved)).group_column == "group"
    assert cfg("--example_gen_config", str(saved), "--group_column", "take").group_column == "take"


def test_the_test_example_gen_never_groups(tmp_path):
    """The training ExampleGen gets the group flags; the TestExampleGen (one split) none of them."""
    from pipeline.orchestration import tfx_pipeline

    (tmp_path / "test").mkdir()
    (tmp_path / "sample_submission.csv").write_text("fname,Bark\n")
    cfg = run_local._example_gen_config(run_local.arg_parser().parse_args(
        ["--data_dir", str(tmp_path), "--group_csv", "groups.csv", "--group_column", "recording"]))
    p = tfx_pipeline.create_pipeline(pipeline_name="p", pipeline_root=str(tmp_path / "root"), data_dir=str(tmp_path),
                                     serving_root=str(tmp_path / "serving"), example_gen_config=cfg)
    configs = {c.id: config.example_gen_config(c.exec_properties["config"]) for c in p.components
               if c.id in ("AudioExampleGen", "TestExampleGen")}
    assert (configs["AudioExampleGen"].group_csv, configs["AudioExampleGen"].group_column) == ("groups.csv", "recording")
    test = configs["TestExampleGen"]
    assert (test.group_csv, test.group_column, test.group_regex) == ("", "", "")
