"""The run report's data figures per source (issue 22 §2): the text summary's ExampleGen line and the
HTML page's Data section, from an Examples artifact and a manifest as the feature job writes them;
a run of the curated source alone reads exactly as before."""
import json

from ml_metadata.proto import metadata_store_pb2

from pipeline.orchestration import report_html, run_report

PER_SOURCE = {"curated": {"input_rows": 39, "written": 30, "failed": 9, "per_split": {"eval": 3, "train": 27}},
              "noisy": {"input_rows": 23, "written": 20, "failed": 3, "per_split": {"train": 20}}}


def _examples(per_source):
    a = metadata_store_pb2.Artifact(uri="/p/AudioExampleGen/examples/1")
    for key, value in (("input_rows", sum(v["input_rows"] for v in per_source.values())),
                       ("written", sum(v["written"] for v in per_source.values())),
                       ("dead_letters", sum(v["failed"] for v in per_source.values()))):
        a.custom_properties[key].int_value = value
    a.custom_properties["failed_by_reason"].string_value = json.dumps({"missing_file": 12})
    a.custom_properties["per_source"].string_value = json.dumps(per_source)
    return a


def _line(per_source):
    run = run_report.ComponentRun(component="AudioExampleGen", state="COMPLETE",
                                  execution=metadata_store_pb2.Execution(), outputs={"examples": [_examples(per_source)]})
    return run_report.describe(run)


def test_the_summary_line_counts_each_source_and_stays_as_it_was_for_one():
    assert _line(PER_SOURCE) == ("62 rows -> 50 examples, 12 dead letters (missing_file 12); curated 30 (27 train, "
                                 "3 eval, 9 dead), noisy 20 (20 train, 3 dead); /p/AudioExampleGen/examples/1")
    assert _line({"curated": PER_SOURCE["curated"]}) == (
        "39 rows -> 30 examples, 9 dead letters (missing_file 12); /p/AudioExampleGen/examples/1")


def _page(per_source, letters):
    counts = {"input_rows": 62, "written": 50, "failed": 12, "per_split": {"train": 47, "eval": 3},
              "failed_by_reason": {"missing_file": 12}, "per_source": per_source}
    facts = {"pipeline": "p", "run": "r", "components": [], "problems": [],
             "data": {"counts": counts, "dead_letters": letters}}
    return report_html.render(facts)


def test_the_html_data_section_has_a_row_per_source_and_the_dead_letters_say_theirs():
    letters = [{"line": 5, "fname": "a.wav", "stage": "read", "reason": "missing_file", "detail": "gone",
                "source": "noisy"}]
    page = _page(PER_SOURCE, letters)
    assert ('<table class="per-source"><thead><tr><th>source</th><th>rows</th><th>examples</th><th>train</th>'
            '<th>eval</th><th>dead letters</th></tr></thead><tbody><tr><td>curated</td><td>39</td><td>30</td>'
            '<td>27</td><td>3</td><td>9</td></tr><tr><td>noisy</td><td>23</td><td>20</td><td>20</td><td>0</td>'
            '<td>3</td></tr></tbody></table>') in page
    assert "<th>line</th><th>source</th><th>fname</th>" in page and "<td>5</td><td>noisy</td><td>a.wav</td>" in page
    one = _page({"curated": PER_SOURCE["curated"]}, [dict(letters[0], source="curated")])
    assert "per-source" not in one and "<th>source</th>" not in one
    assert "<th>line</th><th>fname</th><th>stage</th>" in one
    assert "rows in the CSVs" in page and "rows in the CSV " in one


def test_the_page_shows_the_first_dead_letters_of_each_source(tmp_path):
    letters = [{"line": i, "fname": f"c{i}.wav", "stage": "csv", "reason": "r", "detail": "", "source": "curated"}
               for i in range(20)] + [{"line": 2, "fname": "n.wav", "stage": "csv", "reason": "r", "detail": "",
                                       "source": "noisy"}]
    (tmp_path / "dead_letters.jsonl").write_text("".join(json.dumps(x) + "\n" for x in letters))
    shown = report_html._dead_letters(str(tmp_path), limit=8)
    assert [x["fname"] for x in shown] == [f"c{i}.wav" for i in range(8)] + ["n.wav"]



def test_markup_in_file_names_labels_details_and_paths_is_shown_as_text_never_run():
    """Every value the page shows comes from files and ML Metadata a user does not control: a clip
    named like markup, a label, a dead letter's detail, a path, a push reason are escaped."""
    evil = '<img src=x onerror="alert(1)">'
    letters = [{"line": 3, "fname": f"{evil}.wav", "stage": "decode", "reason": "bad_audio",
                "detail": "</td><script>alert(2)</script>", "source": "curated"}]
    counts = {"input_rows": 1, "written": 0, "failed": 1, "per_split": {}, "failed_by_reason": {"bad_audio": 1},
              "per_label": {f"Dog{evil}": 4}}
    facts = {"pipeline": f"p{evil}", "run": f"r{evil}", "components": [], "problems": [f"problem {evil}"],
             "data": {"uri": f"/data/{evil}", "data_dir": f"/in/{evil}", "counts": counts, "dead_letters": letters,
                      "labels": {f"Dog{evil}": 4}},
             "push": {"pushed": False, "reused": False, "destination": f"/s/{evil}", "version": None,
                      "reason": f"blessed, not pushed: {evil}"},
             "lineage": [f"step {evil}"]}
    page = report_html.render(facts)
    assert "<script>" not in page and "<img" not in page and "onerror=\"" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.wav" in page
    assert "&lt;/td&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert "blessed, not pushed: &lt;img" in page and "step &lt;img" in page and "problem &lt;img" in page


def test_the_data_section_says_how_clips_were_split_and_warns_when_a_group_spans_splits():
    counts = {"input_rows": 9, "written": 9, "failed": 0, "per_split": {"train": 6, "eval": 3}}
    facts = {"pipeline": "p", "run": "r", "components": [], "problems": [],
             "data": {"counts": counts, "dead_letters": [], "split_by": "by group (regex ^(a)): groups 2 in eval, "
                      "4 in train; 0 in more than one split", "groups_spanning": 0}}
    page = report_html.render(facts)
    assert '<p id="split">Split by group (regex ^(a)): groups 2 in eval, 4 in train; 0 in more than one split.</p>' in page
    assert "Warning" not in page
    facts["data"]["groups_spanning"] = 1
    assert "Warning: groups have clips in more than one split" in report_html.render(facts)


def test_the_training_section_says_when_the_model_is_an_ensemble_and_whose_curves_it_shows():
    history = {"loss": [0.7, 0.5], "val_lwlrap": [0.5, 0.6]}
    one = {"epochs_run": 2, "train_seconds": 10.0, "eval_lwlrap": 0.6}
    three = dict(one, epochs_run=6, train_seconds=30.0, eval_lwlrap=0.65,
                 members=[{"seed": s, "epochs_run": 2} for s in (5, 6, 7)])
    page = lambda r: report_html.render({"pipeline": "p", "run": "r", "components": [], "problems": [],  # noqa: E731
                                         "training": {"history": history, "results": r}})
    assert ("<p>An ensemble of 3 models (seeds 5, 6, 7; the chart and the best epoch are the first one's): 2 + 2 + 2 epochs "
            "in 30 s; best eval lwlrap 0.6000 at epoch 2; eval lwlrap of the kept model 0.6500</p>") in page(three)
    assert "<p>2 epochs in 10 s; best eval lwlrap 0.6000 at epoch 2" in page(one) and "ensemble" not in page(one)
