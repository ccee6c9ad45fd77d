"""TrainerConfig.ensemble_size (issue 30 §3): members trained one after another on the Beam job's real
output, each exactly the model a single run with its seed trains; one export whose scores, through
the TF Serving loader, are the head applied to the mean of the members' logits; a restart trains no
finished member again."""
import csv

import numpy as np
import pytest
from pipeline import config
from pipeline.metrics.lwlrap import lwlrap
from pipeline.orchestration import report_html
from pipeline.training import model as model_lib
from pipeline.training import train
from tests.serving_loader import ServedModel

RECIPE = "epochs: 2 deterministic_input: true shuffle_buffer: 16 optimizer { learning_rate: 0.02 }"


def _served_scores(export_path, records):
    served = ServedModel(export_path)
    try:
        return served.run("serving_default", examples=np.array([r.serialized for r in records], dtype=object))["scores"]
    finally:
        served.close()


def _history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _logits(p):
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


@pytest.fixture(scope="module")
def ensemble_run(train_examples, tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TF_CONFIG", raising=False)
        cfg = config.trainer_config("small", RECIPE + " ensemble_size: 3 seed: 5")
        res = train.train(train.job_from_examples(str(train_examples.out), cfg, str(root / "work"), str(root / "export")))
    return root, res


def test_members_are_single_runs_of_their_seeds_and_the_export_serves_their_mean_logits(ensemble_run, train_examples,
                                                                                          tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    root, res = ensemble_run
    recs = train_examples.records["eval"] + train_examples.records["train"][:8]
    members = []
    for seed in (5, 6, 7):
        single = train.train(train.job_from_examples(
            str(train_examples.out), config.trainer_config("small", f"{RECIPE} seed: {seed}"),
            str(tmp_path / f"single{seed}"), str(tmp_path / f"export{seed}")))
        members.append(single)
    assert [m["seed"] for m in res["members"]] == [5, 6, 7]
    for i, (mine, single) in enumerate(zip(res["members"], members)):
        assert mine["epochs_run"] == 2 and mine["resumed"] is None
        rows = _history(root / "work" / f"member-{i}" / "history.csv")
        # the same batches, the same initial weights: member i is the single run of its seed
        np.testing.assert_allclose([float(r["loss"]) for r in rows], single["history"]["loss"], rtol=1e-6)
        assert (root / "work" / f"member-{i}" / "plots" / "training_curves.png").is_file()
    assert not (root / "work" / "backup").exists()           # every member's backup deleted after the export
    single_scores = [_served_scores(m["export_path"], recs) for m in members]
    assert min(np.abs(single_scores[0] - s).max() for s in single_scores[1:]) > 1e-3   # three different models
    expected = 1 / (1 + np.exp(-np.mean([_logits(s) for s in single_scores], axis=0)))
    got = _served_scores(res["export_path"], recs)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
    assert res["epochs_run"] == 6 and res["resumed"] is None
    assert train.summary_line(res).startswith(f"eval lwlrap {res['eval_lwlrap']:.4f} after 2 + 2 + 2 epochs (3 members, ")
    assert train.summary_line(members[0]).startswith(f"eval lwlrap {members[0]['eval_lwlrap']:.4f} after 2 epochs (")
    n_eval = len(train_examples.records["eval"])
    truth = np.zeros((n_eval, 80))
    for i, r in enumerate(train_examples.records["eval"]):
        truth[i, r.labels] = 1
    assert res["eval_lwlrap"] == pytest.approx(lwlrap(truth, got[:n_eval]), abs=1e-5)   # the ensemble was evaluated


def test_a_restart_trains_no_finished_member_again(ensemble_run, train_examples, tmp_path, monkeypatch):
    """The run dies while the second member trains (an exception standing in for a kill): the first
    member's backup stays, marked finished; the same command again restores it without training
    (0 epochs), trains the other two, and ends with the very weights of an uninterrupted run."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    fit, calls = train._fit, []

    def dies_on_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return fit(*a, **k)

    cfg = config.trainer_config("small", RECIPE + " ensemble_size: 3 seed: 5")
    job = train.job_from_examples(str(train_examples.out), cfg, str(tmp_path / "work"), str(tmp_path / "export"))
    monkeypatch.setattr(train, "_fit", dies_on_the_second)
    with pytest.raises(RuntimeError, match="killed"):
        train.train(job)
    monkeypatch.undo()
    assert (tmp_path / "work" / "backup" / "member-0" / "LATEST").is_file()
    res = train.train(job)
    assert [m["epochs_run"] for m in res["members"]] == [0, 2, 2]
    assert res["members"][0]["resumed"]["epoch"] == 2 and set(res["resumed"]) == {"member-0"}
    assert res["weights_sha256"] == ensemble_run[1]["weights_sha256"]
    # the report's training chart still has the first member's two epochs, trained before the restart
    assert len(report_html._history(str(tmp_path / "work"))["val_lwlrap"]) == 2
    assert not (tmp_path / "work" / "backup").exists()


def test_the_ensemble_keeps_every_member_on_cudnn_and_refuses_no_members():
    cfg = config.trainer_config("small")
    members = [model_lib.build_model((20, 6), 5, cfg, name=f"member_{i}") for i in range(2)]
    both = model_lib.ensemble(members, (20, 6))
    assert len(list(model_lib._lstm_layers(both))) == 4 and model_lib.cudnn_compatible(both) == []
    x = np.random.default_rng(0).normal(size=(3, 20, 6)).astype(np.float32)
    np.testing.assert_allclose(both(x).numpy(), (members[0](x).numpy() + members[1](x).numpy()) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="ensemble_size must be >= 1"):
        config.trainer_config("small", "ensemble_size: 0")
