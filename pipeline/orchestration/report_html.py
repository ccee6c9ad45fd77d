"""The run report a person opens in a browser: one self-contained HTML file per pipeline run.

    PIPELINE_ROOT/reports/<run id>.html    and    PIPELINE_ROOT/reports/latest.html

Everything in it is read back from ML Metadata and the artifacts the run recorded, not from the
run's memory, so `fatp-report` writes it as well for a past run or a cached one. It shows the
components (state, executed or cached, time), the data (rows, examples per split, and per source
when the job read train_noisy.csv too, dead letters by reason with their first rows, clips per label (the job's manifest), clip durations from StatisticsGen, ExampleValidator's
anomalies), training (loss and lwlrap per epoch, best epoch, time), the decision (candidate lwlrap
with its interval against the bar and the baseline, BLESSED or NOT BLESSED and why, per-class
lwlrap of both, worst first), the push, the lineage back to the data folder, and the lwlrap of
the last HISTORY_SHOWN models this pipeline evaluated (the number of older ones below them).

Self-contained: charts are matplotlib SVG written inline (text kept as text), styles inline, no
script, and a Content-Security-Policy that lets the page fetch nothing.

    fatp-report --pipeline_root out/pipeline [--run RUN_ID] [--metadata ...]
"""
from __future__ import annotations

import argparse
import html
import io
import json
import logging
import os
import re
import sys

from apache_beam.io.filesystems import FileSystems

from pipeline import fileio
from pipeline.data import job_output as output
from pipeline.orchestration import run_report
from pipeline.orchestration.run_report import prop

log = logging.getLogger("fatp.report")
REPORTS = "reports"
LATEST = "latest.html"
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
HISTORY_SHOWN = 30         # evaluations in the History section (chart and table), the newest


# ------------------------------------------------------------------------------------------ facts

def _duration_s(execution) -> float:
    return max(execution.last_update_time_since_epoch - execution.create_time_since_epoch, 0) / 1000.0


def _read_json(path: str):
    try:
        return json.loads(fileio.read_text(path))
    except (FileNotFoundError, ValueError):
        return None


def _dead_letters(examples_uri: str, limit: int = 8) -> list[dict]:
    try:
        lines = fileio.read_text(fileio.join(examples_uri, "dead_letters.jsonl")).splitlines()
    except FileNotFoundError:
        return []
    shown, per_source = [], {}       # the first `limit` of each source (the file lists curated ones first)
    for line in lines:
        if line.strip():
            letter = json.loads(line)
            n = per_source[letter.get("source")] = per_source.get(letter.get("source"), 0) + 1
            if n <= limit:
                shown.append(letter)
    return shown


def _durations(statistics_uri: str) -> dict | None:
    """source_seconds from StatisticsGen: {split: (min, median, max, histogram buckets)}."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    from pipeline.data import example_schema

    out = {}
    for split in sorted(os.listdir(statistics_uri)) if os.path.isdir(statistics_uri) else []:
        path = os.path.join(statistics_uri, split, "FeatureStats.pb")
        if not os.path.exists(path):
            continue
        stats = statistics_pb2.DatasetFeatureStatisticsList()
        with open(path, "rb") as f:
            stats.ParseFromString(f.read())
        for dataset in stats.datasets:
            for feature in dataset.features:
                if feature.path.step and feature.path.step[-1] == example_schema.SOURCE_SECONDS:
                    n = feature.num_stats
                    standard = [h for h in n.histograms if h.type == h.STANDARD]
                    buckets = [(b.low_value, b.high_value, b.sample_count) for b in (standard[0].buckets if standard else [])]
                    out[split.replace("Split-", "")] = (n.min, n.median, n.max, buckets)
    return out or None


def _history(model_run_uri: str) -> dict[str, list[float]]:
    """Every epoch's figures (history.csv spans restarts; results.json holds the last attempt's); an
    ensemble's, its first member's."""
    from pipeline.training.train import full_history, member_dir

    results = _read_json(fileio.join(model_run_uri, "results.json")) or {}
    folder = member_dir(model_run_uri, 0) if results.get("members") else model_run_uri
    return full_history(folder, results.get("history", {}))


def _evaluations(store, pipeline_name: str) -> dict:
    """lwlrap of the last HISTORY_SHOWN models this pipeline evaluated, one entry per evaluation (a
    cached Evaluator's is its first run's), oldest first: {"shown": [...], "older": how many before}.
    Read from the Evaluator's executions, so a store with many runs costs four ML Metadata queries
    per Evaluator run and TFMA reads of the shown evaluations only."""
    from pipeline.metrics import lwlrap_tfma

    first = {}                      # evaluation artifact id -> the Evaluator run that made it first
    for ex in run_report.executions_of(store, pipeline_name, "Evaluator"):
        run = run_report.component_run(store, "Evaluator", ex)
        evaluation = run.outputs.get("evaluation", [None])[0]
        if evaluation is not None:
            first.setdefault(evaluation.id, (run, evaluation))
    made = list(first.values())
    out = []
    for run, evaluation in made[-HISTORY_SHOWN:]:
        try:
            lwlrap = lwlrap_tfma.evaluation_metrics(evaluation.uri)["candidate"]
        except Exception:  # noqa: BLE001 -- an unreadable old evaluation is one missing point
            lwlrap = None
        model = run.artifact("model")
        out.append({"run": run_report.run_of(store, run.execution), "lwlrap": lwlrap,
                    "blessed": prop(run.artifact("blessing"), "blessed") == 1,
                    "model_id": model.id if model is not None else None})
    return {"shown": out, "older": len(made) - len(out)}


def collect(store, pipeline_name: str, run_id: str) -> dict:
    """What the report shows, read from MLMD and the artifacts."""
    from components.evaluator import executor as evaluator
    from pipeline import config as config_lib
    from pipeline.metrics import lwlrap_tfma

    runs = {r.component: r for r in run_report.component_runs(store, pipeline_name, run_id)}
    facts = {"pipeline": pipeline_name, "run": run_id, "components": [], "problems": []}
    for r in runs.values():
        facts["components"].append({"name": r.component, "state": r.state, "seconds": _duration_s(r.execution),
                                    "line": run_report.describe(r)})

    def attempt(what, fn):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 -- one unreadable part must not cost the whole report
            facts["problems"].append(f"{what}: {type(e).__name__}: {e}")
            return None

    gen = runs.get("AudioExampleGen")
    examples = gen.artifact("examples") if gen else None
    if examples is not None:
        manifest = output.read_manifest(examples.uri) or {}
        facts["data"] = {"uri": examples.uri, "data_dir": prop(gen.execution, "data_dir"),
                         "fingerprint": prop(examples, "input_fingerprint"), "counts": manifest.get("counts", {}),
                         "dead_letters": _dead_letters(examples.uri), "split_by": prop(examples, "split_by"),
                         "groups_spanning": max((s.get("shared_groups", 0)
                                                 for s in (manifest.get("splits") or {}).values()), default=0)}
        facts["data"]["labels"] = manifest.get("counts", {}).get("per_label")   # None: a job before it counted
    if "StatisticsGen" in runs and runs["StatisticsGen"].artifact("statistics") is not None:
        facts["durations"] = attempt("clip durations", lambda: _durations(runs["StatisticsGen"].artifact("statistics").uri))
    if "ExampleValidator" in runs and runs["ExampleValidator"].artifact("anomalies") is not None:
        facts["anomalies"] = attempt("anomalies", lambda: run_report.anomalies(runs["ExampleValidator"].artifact("anomalies").uri))
    trainer = runs.get("Trainer")
    if trainer is not None and trainer.artifact("model_run") is not None:
        uri = trainer.artifact("model_run").uri
        facts["training"] = {"history": attempt("training history", lambda: _history(uri)) or {},
                             "results": _read_json(fileio.join(uri, "results.json")) or {}}
    ev = runs.get("Evaluator")
    if ev is not None and ev.artifact("evaluation") is not None and ev.artifact("blessing") is not None:
        blessing = ev.artifact("blessing")
        cfg = config_lib.from_text(prop(ev.execution, evaluator.BLESSING_CONFIG) or "", config_lib.BlessingConfig)
        labels = None
        model = ev.artifact("model")
        if model is not None:
            labels = attempt("labels", lambda: fileio.read_text(
                fileio.join(model.uri, "Format-Serving", "assets", "labels.txt")).split())
        facts["decision"] = {
            "metrics": attempt("evaluation", lambda: lwlrap_tfma.evaluation_metrics(ev.artifact("evaluation").uri)) or {},
            "per_class": attempt("per-class lwlrap",
                                 lambda: lwlrap_tfma.per_class_metrics(ev.artifact("evaluation").uri)) or {},
            "labels": labels, "blessed": prop(blessing, "blessed") == 1,
            "reason": prop(blessing, evaluator.REASON), "baseline_note": prop(blessing, evaluator.BASELINE_NOTE),
            "min_lwlrap": cfg.min_lwlrap, "tolerance": cfg.baseline_tolerance, "confidence": cfg.confidence,
            "gate": config_lib.BlessingConfig.Gate.Name(cfg.gate)}
    pusher = runs.get("Pusher")
    if pusher is not None and pusher.artifact("pushed_model") is not None:
        pm = pusher.artifact("pushed_model")
        facts["push"] = {"pushed": prop(pm, "pushed") == 1, "reused": prop(pm, "reused_version") == 1,
                         "destination": prop(pm, "pushed_destination"), "version": prop(pm, "pushed_version"),
                         "reason": prop(pm, "reason")}
        start = pm.id if prop(pm, "pushed") == 1 else (trainer.artifact("model").id if trainer else None)
        if start is not None:
            facts["lineage"] = attempt("lineage", lambda: _lineage(store, start))
    facts["history"] = attempt("evaluation history", lambda: _evaluations(store, pipeline_name)) or {}
    return facts


def _lineage(store, artifact_id: int) -> list[str]:
    """Readable steps from an artifact back to the data folder."""
    steps = []
    for execution, inputs in run_report.lineage(store, artifact_id):
        kind = store.get_execution_types_by_id([execution.type_id])[0].name.rsplit(".", 1)[-1]
        ins = ", ".join(f"{key} {a.id}" for key, arts in sorted(inputs.items()) for a in arts)
        line = f"{kind} (execution {execution.id})" + (f" <- {ins}" if ins else "")
        if prop(execution, "data_dir"):
            line += f" <- data folder {prop(execution, 'data_dir')}, fingerprint {prop(execution, 'input_fingerprint')}"
        steps.append(line)
    return steps


# ------------------------------------------------------------------------------------------ charts

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"      # text stays text: searchable, selectable
    import matplotlib.pyplot as plt

    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight",      # no creator URL or date in the page
                metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    _plt().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def training_chart(history: dict) -> str | None:
    if not history.get("loss"):
        return None
    fig, (a, b) = _plt().subplots(1, 2, figsize=(9, 3))
    epochs = range(1, len(history["loss"]) + 1)
    for ax, key, title in ((a, "loss", "loss"), (b, "lwlrap", "lwlrap")):
        for name, style in ((key, "-"), (f"val_{key}", "--")):
            if history.get(name):
                ax.plot(list(epochs)[:len(history[name])], history[name], style, label="train" if name == key else "eval")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    return _svg(fig)


def decision_chart(d: dict) -> str | None:
    m = d.get("metrics") or {}
    if m.get("candidate") is None:
        return None
    fig, ax = _plt().subplots(figsize=(7, 1.9))
    rows = [("candidate", m["candidate"], m.get("candidate_ci"), "#1f77b4")]
    if m.get("baseline") is not None:
        rows.append(("baseline", m["baseline"], m.get("baseline_ci"), "#7f7f7f"))
    for y, (name, value, ci, color) in enumerate(rows):
        err = [[value - ci[0]], [ci[1] - value]] if ci else None
        ax.errorbar([value], [y], xerr=err, fmt="o", color=color, capsize=4)
        ax.annotate(f"{value:.4f}", (value, y), textcoords="offset points", xytext=(0, 7), ha="center")
    ax.axvline(d["min_lwlrap"], color="#d62728", linestyle=":", label=f"min_lwlrap {d['min_lwlrap']:g}")
    if m.get("baseline") is not None:
        ax.axvline(m["baseline"] - d["tolerance"], color="#ff7f0e", linestyle="--",
                   label=f"baseline - tolerance {d['tolerance']:g}")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlim(0, max(1.0, d["min_lwlrap"] + 0.05))      # a bar out of reach (> 1) still shows
    ax.set_xlabel("lwlrap on the eval split" + (f" ({d['confidence']:.0%} interval)" if m.get("candidate_ci") else ""))
    ax.legend(loc="lower right", fontsize="small")
    return _svg(fig)


def history_chart(history: list[dict]) -> str | None:
    points = [h for h in history if h["lwlrap"] is not None]
    if not points:
        return None
    fig, ax = _plt().subplots(figsize=(7, 2.4))
    xs = range(1, len(points) + 1)
    ax.plot(xs, [p["lwlrap"] for p in points], "-", color="#bbbbbb")
    for x, p in zip(xs, points):
        ax.plot([x], [p["lwlrap"]], "o", color="#2ca02c" if p["blessed"] else "#d62728")
    ax.set_xticks(list(xs), [p["run"][:16] for p in points], rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("lwlrap")
    ax.set_title("this pipeline's evaluations, newest last (green: blessed, red: not)", fontsize="medium")
    ax.grid(alpha=0.3)
    return _svg(fig)


def durations_chart(durations: dict) -> str | None:
    """Each split's clip durations (StatisticsGen's standard histogram) as a share of that split's
    clips per second: splits of very different sizes (eval ~2% of train at FAT2019's size, where
    counts drew eval as a flat line at zero) compare on one axis; the counts are in the text."""
    if not any(buckets for *_, buckets in durations.values()):
        return None
    fig, ax = _plt().subplots(figsize=(7, 2.2))
    for name, (*_, b) in sorted(durations.items()):
        total = sum(c for _, _, c in b)
        if b and total:
            ax.stairs([c / total / max(high - low, 1e-9) for low, high, c in b], [b[0][0]] + [high for _, high, _ in b],
                      label=f"{name} ({total:.0f} clips)")
    ax.set_xlabel("clip duration (s, before the window)")
    ax.set_ylabel("share of clips per s")
    ax.legend()
    return _svg(fig)


# ------------------------------------------------------------------------------------------ page

def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(x, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _bar(value, color: str) -> str:
    width = 0 if value is None else max(0.0, min(1.0, value)) * 100
    return (f'<span class="bar"><span style="width:{width:.1f}%;background:{color}"></span></span> '
            f'{_fmt(value, 3)}')


def _per_class_rows(d: dict, limit: int = 40) -> list[list]:
    per = d.get("per_class") or {}
    cand, base = per.get("candidate", {}), per.get("baseline", {})
    labels = d.get("labels") or []
    order = sorted(cand, key=lambda k: (cand[k], k))
    rows = []
    for k in order[:limit]:
        name = labels[k] if k < len(labels) else f"class {k}"
        diff = cand[k] - base[k] if k in base else None
        rows.append([_e(name), _bar(cand[k], "#1f77b4"), _bar(base.get(k), "#999") if base else "–",
                     "–" if diff is None else f"{diff:+.3f}"])
    return rows


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#666} table{border-collapse:collapse;margin:8px 0} td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
.warn{color:#a33;font-weight:bold}
th{background:#f6f6f6} .verdict{display:inline-block;padding:6px 14px;border-radius:6px;font-weight:700;font-size:18px}
.blessed{background:#e3f6e3;color:#176217} .refused{background:#fde7e7;color:#9b1c1c}
.state-COMPLETE{color:#176217} .state-CACHED{color:#1f5fa8} .state-FAILED,.state-RUNNING{color:#9b1c1c;font-weight:700}
.bar{display:inline-block;width:120px;height:9px;background:#f0f0f0;vertical-align:middle}.bar span{display:block;height:9px}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px} svg{max-width:100%;height:auto}
"""


def render(f: dict) -> str:
    parts = [f"<h1>Pipeline {_e(f['pipeline'])}: run {_e(f['run'])}</h1>"]
    d = f.get("decision")
    if d is not None:
        verdict = "BLESSED" if d["blessed"] else "NOT BLESSED"
        m = d.get("metrics") or {}
        parts.append(f'<p><span id="verdict" class="verdict {"blessed" if d["blessed"] else "refused"}">{verdict}</span> '
                     f'&nbsp;candidate lwlrap <b id="lwlrap">{_fmt(m.get("candidate"))}</b>'
                     + (f' (baseline {_fmt(m.get("baseline"))})' if m.get("baseline") is not None else "")
                     + "</p>")
    parts.append("<h2>Components</h2>" + _table(
        ["component", "state", "time", "outcome"],
        [[_e(c["name"]), f'<span class="state-{_e(c["state"])}">{_e(c["state"].lower())}</span>',
          f"{c['seconds']:.1f} s", _e(c["line"])] for c in f["components"]]))
    data = f.get("data")
    if data is not None:
        counts = data["counts"]
        parts.append("<h2>Data</h2>")
        csvs = "CSVs" if len(counts.get("per_source") or {}) > 1 else "CSV"
        parts.append(f'<p><span id="rows">{_e(counts.get("input_rows"))}</span> rows in the {csvs} → '
                     f'<span id="written">{_e(counts.get("written"))}</span> examples '
                     f'({", ".join(f"{_e(k)} {_e(v)}" for k, v in sorted((counts.get("per_split") or {}).items()))}), '
                     f'<span id="dead">{_e(counts.get("failed"))}</span> dead letters.</p>')
        if data.get("split_by"):
            parts.append(f'<p id="split">Split {_e(data["split_by"])}.</p>')
            if data.get("groups_spanning"):
                parts.append("<p class='warn'>Warning: groups have clips in more than one split; the eval "
                             "split then measures memory of those groups, not generalisation.</p>")
        sources = counts.get("per_source") or {}
        if len(sources) > 1:    # one source: the counts above are its own
            parts.append(_table(["source", "rows", "examples", "train", "eval", "dead letters"],
                                [[_e(k), _e(v["input_rows"]), _e(v["written"]), _e(v["per_split"].get("train", 0)),
                                  _e(v["per_split"].get("eval", 0)), _e(v["failed"])] for k, v in sources.items()],
                                "per-source"))
        reasons = counts.get("failed_by_reason") or {}
        if reasons:
            parts.append(_table(["dead-letter reason", "rows"], [[_e(k), _e(v)] for k, v in sorted(reasons.items())]))
            source = [("source", lambda x: x.get("source"))] if len(sources) > 1 else []
            columns = [("line", lambda x: x.get("line")), *source, ("fname", lambda x: x.get("fname")),
                       ("stage", lambda x: x.get("stage")), ("reason", lambda x: x.get("reason")),
                       ("detail", lambda x: x.get("detail"))]
            parts.append("<p class='muted'>first rows of dead_letters.jsonl:</p>" + _table(
                [c for c, _ in columns], [[_e(get(x)) for _, get in columns] for x in data["dead_letters"]]))
        labels = data.get("labels")
        if labels:
            ranked = sorted(labels.items(), key=lambda kv: (kv[1], kv[0]))
            used = [kv for kv in ranked if kv[1]]
            parts.append(f"<p>{len(used)} of {len(labels)} labels occur; clips per label: fewest "
                         f"{', '.join(f'{_e(k)} {v}' for k, v in ranked[:3])}; most "
                         f"{', '.join(f'{_e(k)} {v}' for k, v in ranked[::-1][:3])}.</p>")
    if f.get("durations"):
        lines = [f"{_e(s)}: min {lo:.2f} s, median {med:.2f} s, max {hi:.2f} s" for s, (lo, med, hi, _) in
                 sorted(f["durations"].items())]
        parts.append("<p>Clip durations (StatisticsGen, source_seconds): " + "; ".join(lines) + "</p>")
        parts.append(durations_chart(f["durations"]) or "")
    if f.get("anomalies") is not None:
        found = f["anomalies"]
        parts.append("<p>ExampleValidator: " + (_e("; ".join(f"{s}: {', '.join(v)}" for s, v in found.items()))
                                               if found else "no anomalies") + "</p>")
    t = f.get("training")
    if t is not None:
        r = t["results"]
        parts.append("<h2>Training</h2>")
        val = t["history"].get("val_lwlrap") or []
        best = (max(range(len(val)), key=val.__getitem__) + 1) if val else None
        members = r.get("members") or []
        ensemble = (f"An ensemble of {len(members)} models (seeds {', '.join(_e(m.get('seed')) for m in members)}; "
                    f"the chart and the best epoch are the first one's): " if members else "")
        epochs = " + ".join(_e(m.get("epochs_run")) for m in members) or _e(r.get("epochs_run"))
        parts.append(f"<p>{ensemble}{epochs} epochs in {_fmt(r.get('train_seconds'), 0)} s"
                     + (f"; best eval lwlrap {max(val):.4f} at epoch {best}" if val else "")
                     + (f"; eval lwlrap of the kept model {_fmt(r.get('eval_lwlrap'))}" if r.get("eval_lwlrap") is not None else "")
                     + "</p>")
        parts.append(training_chart(t["history"]) or "<p class='muted'>no per-epoch history recorded</p>")
    if d is not None:
        m = d.get("metrics") or {}
        parts.append("<h2>Decision</h2>")
        ci = lambda p: f" [{p[0]:.4f}, {p[1]:.4f}]" if p else ""  # noqa: E731
        text = f"candidate lwlrap {_fmt(m.get('candidate'))}{ci(m.get('candidate_ci'))} on {_e(m.get('examples'))} eval clips"
        text += (f"; baseline {_fmt(m.get('baseline'))}{ci(m.get('baseline_ci'))}, difference {m['diff']:+.4f}"
                 f"{ci(m.get('diff_ci'))} on the same clips" if m.get("baseline") is not None and m.get("diff") is not None
                 else f"; baseline: {_e(d.get('baseline_note') or 'none')}")
        parts.append(f"<p>{text}. Gate {_e(d['gate'])}, min_lwlrap {d['min_lwlrap']:g}, tolerance {d['tolerance']:g}.</p>")
        parts.append(f'<p><b>{"BLESSED" if d["blessed"] else "NOT BLESSED"}</b>'
                     + (f": {_e(d['reason'])}" if d.get("reason") else "") + "</p>")
        parts.append(decision_chart(d) or "")
        rows = _per_class_rows(d)
        if rows:
            parts.append("<p>Per-class lwlrap, worst first:</p>"
                         + _table(["label", "candidate", "baseline", "difference"], rows, "perclass"))
    p = f.get("push")
    if p is not None:
        parts.append("<h2>Push</h2>")
        if p["pushed"]:
            what = "already served (same model, nothing copied)" if p["reused"] else "pushed"
            parts.append(f"<p id='push'>{what}: version <b>{_e(p['version'])}</b> at <code>{_e(p['destination'])}</code></p>")
        else:
            parts.append(f"<p id='push'>{_e(p.get('reason') or 'not pushed: the model was not blessed')}</p>")
    if f.get("lineage"):
        parts.append("<h2>Lineage</h2><ol>" + "".join(f"<li>{_e(s)}</li>" for s in f["lineage"]) + "</ol>")
    history = f.get("history") or {}
    if history.get("shown"):
        older = (f"<p class='muted' id='history-older'>{history['older']} earlier evaluation(s) not shown</p>"
                 if history.get("older") else "")
        parts.append("<h2>History</h2>" + (history_chart(history["shown"]) or "") + _table(
            ["run", "model", "lwlrap", "blessed"],
            [[_e(h["run"]), _e(h["model_id"]), _fmt(h["lwlrap"]), "yes" if h["blessed"] else "no"]
             for h in history["shown"]]) + older)
    if f["problems"]:
        parts.append("<h2>Not shown</h2><ul>" + "".join(f"<li>{_e(x)}</li>" for x in f["problems"]) + "</ul>")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{_e(f['pipeline'])} run {_e(f['run'])}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>")


def _page_name(run_id: str) -> str:
    return re.sub(r"[^\w.-]", "-", run_id) + ".html"


def _newest_with_page(store, reports: str, run_id: str) -> str:
    """Of the runs in the store with a page in this `reports` folder (and `run_id` itself), the
    newest by MLMD's creation order. Per folder, not per store: users who share one store but
    each have their own pipeline root each keep their own newest run in latest.html."""
    for run in run_report.runs_newest_first(store):
        if run.name == run_id or FileSystems.exists(fileio.join(reports, _page_name(run.name))):
            return run.name
    return run_id


def write(store, pipeline_root: str, pipeline_name: str, run_id: str) -> str:
    """Write PIPELINE_ROOT/reports/<run>.html, and latest.html (atomically) unless a newer run of
    this pipeline root already has its page there; returns the run's path. An older run's page
    (fatp-report --run OLD, or a run that ends after a later run on the same root) leaves
    latest.html as it is; another user's run on the same store but another root does not count."""
    page = render(collect(store, pipeline_name, run_id))
    reports = fileio.join(pipeline_root, REPORTS)
    path = fileio.join(reports, _page_name(run_id))
    fileio.write_text(path, page)
    if _newest_with_page(store, reports, run_id) == run_id:
        fileio.write_text(fileio.join(reports, LATEST), page)
    return path


def main(argv: list[str] | None = None) -> int:
    from pipeline import logs
    from pipeline.orchestration import metadata_connection, tfx_pipeline

    ap = argparse.ArgumentParser(prog="fatp-report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline_root", required=True)
    ap.add_argument("--pipeline_name", default=tfx_pipeline.PIPELINE_NAME)
    ap.add_argument("--run", help="a run id (default: the latest run of the pipeline)")
    metadata_connection.add_flags(ap)
    args = ap.parse_args(argv)
    logs.setup("WARNING")
    try:
        store = run_report.open_store(metadata_connection.from_args(
            args, os.path.join(args.pipeline_root, "metadata.sqlite")))
        run_id = args.run or run_report.latest_run_id(store, args.pipeline_name)
        if run_id is None:
            raise ValueError(f"no run of pipeline {args.pipeline_name!r} in that ML Metadata store")
        print(write(store, args.pipeline_root, args.pipeline_name, run_id))
    except (ValueError, FileNotFoundError, metadata_connection.MetadataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
