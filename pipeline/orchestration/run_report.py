"""What a pipeline run did, read back from ML Metadata: each component's outcome and the figures a
user looks for (dead letters, anomalies, lwlrap against the baseline, blessing, the pushed path),
and the lineage of an artifact back to the data folder.

MLMD, not the runner's return value, is the source: it is what TFX records for every execution
(COMPLETE, CACHED, FAILED, or RUNNING for one that was killed), so the same report works after a
failure, for a run started elsewhere, or long after the run.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipeline.orchestration import metadata_connection

State = metadata_store_pb2.Execution.State
OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
INPUT_EVENTS = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)


def open_store(store) -> metadata_store.MetadataStore:
    """The store a run used: a metadata_connection.Store (SQLite or MySQL), or a SQLite file's path.
    SQLite opens read-only; metadata_connection.MetadataError when it cannot be opened."""
    if isinstance(store, (str, os.PathLike)):
        store = metadata_connection.sqlite(os.fspath(store))
    return metadata_connection.open_store(store, readonly=True)


def prop(entity, name: str, default=None):
    """A (custom) property of an MLMD artifact or execution as a Python value."""
    for props in (entity.custom_properties, entity.properties):
        if name in props:
            value = props[name]
            kind = value.WhichOneof("value")
            return getattr(value, kind) if kind else default
    return default


@dataclass
class ComponentRun:
    component: str
    state: str
    execution: metadata_store_pb2.Execution
    outputs: dict = field(default_factory=dict)   # key -> [Artifact]
    inputs: dict = field(default_factory=dict)

    def artifact(self, key: str):
        """The first artifact under `key`, output or input (None when there is none)."""
        return (self.outputs.get(key) or self.inputs.get(key) or [None])[0]


def _artifacts_by_key(store, execution_id: int, kinds) -> dict:
    events = [e for e in store.get_events_by_execution_ids([execution_id]) if e.type in kinds]
    arts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])} if events else {}
    out: dict = {}
    for e in events:
        # one event per artifact; its path names every key it was passed under (the same model can
        # be an Evaluator's `model` and its `baseline_model`)
        for key in [s.key for s in e.path.steps if s.HasField("key")] or [""]:
            out.setdefault(key, []).append(arts[e.artifact_id])
    return out


def runs_newest_first(store) -> list:
    """The store's pipeline_run contexts, newest first (MLMD's creation order, ties by id)."""
    return sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: (c.create_time_since_epoch, c.id),
                  reverse=True)


def latest_run_id(store, pipeline_name: str) -> str | None:
    """The newest pipeline_run context that holds executions of `pipeline_name`'s nodes."""
    for run in runs_newest_first(store):
        for ex in store.get_executions_by_context(run.id):
            nodes = [c.name for c in store.get_contexts_by_execution(ex.id) if c.type == "node"]
            if any(n.startswith(pipeline_name + ".") for n in nodes):
                return run.name
    return None


def _in_order(executions) -> list:
    return sorted(executions, key=lambda e: (e.create_time_since_epoch, e.id))


def component_run(store, component: str, ex) -> ComponentRun:
    """One execution of `component` with its input and output artifacts by key."""
    return ComponentRun(component=component, state=State.Name(ex.last_known_state), execution=ex,
                        outputs=_artifacts_by_key(store, ex.id, OUTPUT_EVENTS),
                        inputs=_artifacts_by_key(store, ex.id, INPUT_EVENTS))


def component_runs(store, pipeline_name: str, run_id: str) -> list[ComponentRun]:
    """The executions of one run, in the order they started."""
    run = store.get_context_by_type_and_name("pipeline_run", run_id)
    if run is None:
        raise ValueError(f"no run {run_id!r} in ML Metadata")
    out = []
    for ex in _in_order(store.get_executions_by_context(run.id)):
        nodes = [c.name for c in store.get_contexts_by_execution(ex.id) if c.type == "node"]
        name = next((n[len(pipeline_name) + 1:] for n in nodes if n.startswith(pipeline_name + ".")), None)
        if name is not None:
            out.append(component_run(store, name, ex))
    return out


def executions_of(store, pipeline_name: str, component: str) -> list:
    """Every execution of one component of this pipeline, in every run, in the order they started
    (its node context: one query, whatever the number of runs)."""
    node = store.get_context_by_type_and_name("node", f"{pipeline_name}.{component}")
    return _in_order(store.get_executions_by_context(node.id)) if node is not None else []


def run_of(store, execution) -> str | None:
    """The pipeline run an execution belongs to."""
    return next((c.name for c in store.get_contexts_by_execution(execution.id) if c.type == "pipeline_run"), None)


def producer(store, artifact_id: int) -> metadata_store_pb2.Execution | None:
    """The execution that output this artifact (for a cached execution: the one that made it first)."""
    events = [e for e in store.get_events_by_artifact_ids([artifact_id]) if e.type in OUTPUT_EVENTS]
    if not events:
        return None
    return store.get_executions_by_id([min(e.execution_id for e in events)])[0]


def lineage(store, artifact_id: int) -> list[tuple[metadata_store_pb2.Execution, dict]]:
    """(Kept for the lineage the pipeline test checks and the run report will show, issue 20.)
    Walk upstream from an artifact: [(producing execution, its inputs by key), ...], breadth first,
    each execution once. The last AudioExampleGen in it carries the data folder (exec property
    data_dir) and the fingerprint of what was read there."""
    seen, chain, frontier = set(), [], [artifact_id]
    while frontier:
        art = frontier.pop(0)
        ex = producer(store, art)
        if ex is None or ex.id in seen:
            continue
        seen.add(ex.id)
        ins = _artifacts_by_key(store, ex.id, INPUT_EVENTS)
        chain.append((ex, ins))
        frontier += [a.id for arts in ins.values() for a in arts]
    return chain


# ---------------------------------------------------------------------------------------------- figures

def anomalies(uri: str) -> dict:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found = {}
    for split in sorted(os.listdir(uri)) if os.path.isdir(uri) else []:
        path = os.path.join(uri, split, "SchemaDiff.pb")
        if os.path.exists(path):
            a = anomalies_pb2.Anomalies()
            with open(path, "rb") as f:
                a.ParseFromString(f.read())
            for feature, info in a.anomaly_info.items():
                found.setdefault(split.replace("Split-", ""), []).append(f"{feature}: {info.short_description}")
    return found


def _evaluator(execution, evaluation, blessing) -> str:
    """lwlrap with its interval, the baseline and the paired difference, the verdict and its reason."""
    from components.evaluator import executor as evaluator
    from pipeline import config as config_lib
    from pipeline.metrics import lwlrap_tfma

    recorded = prop(execution, evaluator.BLESSING_CONFIG)      # None: an Evaluator from before the gates
    cfg = config_lib.from_text(recorded or "", config_lib.BlessingConfig)
    m = lwlrap_tfma.evaluation_metrics(evaluation.uri)
    ci = lambda pair, sign="": f" [{pair[0]:{sign}.4f}, {pair[1]:{sign}.4f}]" if pair else ""  # noqa: E731
    value = lambda x: "?" if x is None else f"{x:.4f}"  # noqa: E731
    note = prop(blessing, evaluator.BASELINE_NOTE) or "none"
    text = f"lwlrap {value(m['candidate'])}{ci(m['candidate_ci'])} on {m['examples']} eval examples"
    if m["baseline"] is None:
        text += f", baseline {note}"
    else:
        text += (f", baseline {m['baseline']:.4f}{ci(m['baseline_ci'])} ({note}); candidate - baseline "
                 f"{m['diff']:+.4f}{ci(m['diff_ci'], '+')} on the same clips")
    if recorded is not None:
        text += (f" ({cfg.confidence:.0%} intervals; gate {config_lib.BlessingConfig.Gate.Name(cfg.gate)}, "
                 f"tolerance {cfg.baseline_tolerance:g}, min_lwlrap {cfg.min_lwlrap:g})")
    if prop(blessing, "blessed") == 1:
        return text + " -> BLESSED"
    return text + f" -> NOT BLESSED: {prop(blessing, evaluator.REASON) or 'no reason recorded'}"


def _per_source(examples) -> str:
    """"; curated 30 (27 train, 3 eval, 9 dead), noisy 20 (20 train, 3 dead)" for an Examples artifact
    of more than one source; "" for one source (the line stays what it was before sources existed)."""
    sources = json.loads(prop(examples, "per_source", "{}") or "{}")
    if len(sources) < 2:
        return ""
    parts = []
    for name, c in sources.items():
        splits = ", ".join(f"{v} {k}" for k, v in sorted(c["per_split"].items(), key=lambda kv: kv[0] != "train"))
        parts.append(f"{name} {c['written']} ({splits}{', ' if splits else ''}{c['failed']} dead)")
    return "; " + ", ".join(parts)


def describe(run: ComponentRun) -> str:
    """One line of figures for a component run (empty when there is nothing to say)."""
    first = run.artifact
    try:
        if run.component in ("AudioExampleGen", "TestExampleGen") and first("examples") is not None:
            ex = first("examples")
            reasons = json.loads(prop(ex, "failed_by_reason", "{}") or "{}")
            detail = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"
            grouped = prop(ex, "split_by") or ""
            split = f"; split {grouped}" if grouped.startswith("by group") else ""   # by file name: as before
            return (f"{prop(ex, 'input_rows')} rows -> {prop(ex, 'written')} examples, "
                    f"{prop(ex, 'dead_letters')} dead letters ({detail}){_per_source(ex)}{split}; {ex.uri}")
        if run.component == "ExampleValidator" and first("anomalies") is not None:
            found = anomalies(first("anomalies").uri)
            return "anomalies: " + ("; ".join(f"{s}: {', '.join(v)}" for s, v in found.items()) or "none")
        if run.component == "Trainer" and first("model_run") is not None:
            path = os.path.join(first("model_run").uri, "results.json")
            if os.path.exists(path):
                with open(path) as f:
                    r = json.load(f)
                from pipeline.training.train import summary_line
                return summary_line(r)
        if run.component == "Evaluator" and first("blessing") is not None:
            return _evaluator(run.execution, first("evaluation"), first("blessing"))
        if run.component == "Pusher" and first("pushed_model") is not None:
            pm = first("pushed_model")
            if prop(pm, "pushed") == 1 and prop(pm, "reused_version") == 1:
                return f"already serving {prop(pm, 'pushed_destination')} (the same model; nothing copied)"
            if prop(pm, "pushed") == 1:
                return f"pushed {prop(pm, 'pushed_destination')}"
            return prop(pm, "reason") or "not pushed (model not blessed)"     # or "blessed, not pushed: ..."
        if run.component == "SubmissionWriter" and first("submission") is not None:
            sub = first("submission")
            if prop(sub, "written") == 1:
                missing = prop(sub, "missing", 0)
                return (f"submission {prop(sub, 'path')} ({prop(sub, 'rows')} rows, {prop(sub, 'scored')} scored"
                        f"{f', {missing} missing (zeros)' if missing else ''})")
            return f"no submission ({prop(sub, 'reason', 'not written')})"
    except (OSError, ValueError, KeyError) as e:   # a report must not hide the run's outcome
        return f"(figures unavailable: {e})"
    return ""


def summary(store, pipeline_name: str, run_id: str, order: tuple[str, ...] = ()) -> list[str]:
    """One line per component run, in `order` (component ids) where given, else as they started."""
    rank = {c: i for i, c in enumerate(order)}
    lines = []
    for run in sorted(component_runs(store, pipeline_name, run_id), key=lambda r: rank.get(r.component, len(rank))):
        lines.append(f"  {run.component:<31} {run.state:<9} {describe(run)}".rstrip())
    return lines
