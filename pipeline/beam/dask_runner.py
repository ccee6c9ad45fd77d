"""Beam's DaskRunner, with the translation faults that break this job fixed.

Beam 2.77 ships `apache_beam.runners.dask.dask_runner.DaskRunner`, which turns each leaf
PTransform into a `dask.bag` operation and runs the graph on a `distributed` cluster. On this job it
fails (a dead-letter dict reaches `_DecodeAudio.process`), and probing it with small pipelines on a
LocalCluster of two worker processes shows why (reproduction in BUILD_NOTES.md, "Running the Beam
job on other runners"):

1. a multi-output ParDo puts its main and tagged outputs in one bag, and every consumer of any of
   its outputs reads all of it (the tags are dropped);
2. what `finish_bundle` emits is lost (the outputs are collected before it runs), so the last
   partial batch of `BatchElements` and a writer's file reports vanish;
3. only the bag of the last transform visited is computed: a branch that does not feed it never runs;
4. a side input is computed inside each task that reads it (`list(bag)`), re-running its whole
   upstream once per side input;
5. `Reshuffle` is a no-op, so a pipeline that fans out from one element (this job's CSV path)
   runs in a single task on a single worker;
6. every partition runs the DoFn's `setup` and `teardown` again (TensorFlow tracing, here);
7. Beam's `Read` (every standard source: `ReadFromTFRecord`, `ReadFromText`, tfx-bsl's TFXIO, so
   TFX's BulkInferrer and Evaluator) is replaced by a transform nothing translates: the pipeline
   fails in the driver (`'PBegin' object has no attribute 'windowing'`).

None of these can be avoided from inside the job without giving up tagged dead letters, bundle
files and side inputs, so this module keeps Beam's DaskRunner (its options, its overrides of
Create/GroupByKey/Flatten/Reshuffle) and replaces its translation:

- a ParDo's bag holds (tag, value) pairs; each output PCollection selects its own tag;
- each partition is one bundle: start_bundle, process, finish_bundle, and finish_bundle's outputs
  are kept. DoFn instances are set up once per worker process and reused bundle after bundle,
  one bundle at a time (as Beam's SDK harness does), and torn down when the run ends;
- a side input is a dependency of the tasks that read it: computed once, shipped whole;
- every PCollection that nothing consumes is computed (all sinks run), in one graph, so shared
  upstream work runs once;
- `Reshuffle` materializes its input on the cluster, counts it, and splits it into partitions of
  `--dask_partition_size` elements (default: up to 64, at least 4 partitions per worker thread),
  or into `--dask_npartitions` partitions;
- `Read` of a bounded source is split in the driver (`source.split`, into bundles of about
  size / (4 x worker threads), at least 1 MiB; a compressed file is one bundle) and each bundle is
  read on a worker, one bundle per partition, as Beam's own runners read it (its range tracker);
  `Impulse` is one partition holding one empty bytes element.

Limits, as Beam's: bounded pipelines in the global window only (anything else, an unbounded source
among them, is refused, not run wrongly); a bundle of a source is read whole into its partition
(a dask partition is a list), so one unsplittable file must fit in a worker's memory; Beam metrics are not collected (`result.metrics()` raises). A run starts its own
`distributed.LocalCluster` with `--dask_local_workers N` (N processes, one thread each), or when
neither `--dask_client_address` nor `--dask_scheduler_file` is given (one worker per usable core).
"""
from __future__ import annotations

import logging
import math
import threading
import uuid
from dataclasses import dataclass

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.internal import pickler
from apache_beam.io.iobase import BoundedSource
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor, PTransformOverride
from apache_beam.runners.common import DoFnRunner, Receiver
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask import overrides as beam_overrides
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.transforms import window
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.utils.windowed_value import WindowedValue

log = logging.getLogger(__name__)

RUNNER_PATH = f"{__name__}.DaskRunner"
MAX_RESHUFFLE_PARTITION = 64      # elements per partition after a Reshuffle, unless told otherwise
PARTITIONS_PER_THREAD = 4         # ... but at least this many partitions per worker thread


class DaskClusterOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--dask_local_workers", type=int, default=None,
            help="Start a distributed.LocalCluster of this many worker processes (one thread each) for "
                 "the run, unless --dask_client_address or --dask_scheduler_file names a cluster.")


# --------------------------------------------------------------------------------------------
# on the workers


def _global(value) -> WindowedValue:
    return WindowedValue(value, window.MIN_TIMESTAMP, (window.GlobalWindow(),))


class _Collect(Receiver):
    """Receives one output tag's WindowedValues into the bundle's list as (tag, value)."""

    def __init__(self, tag, sink: list):
        self.tag, self.sink = tag, sink

    def receive(self, windowed_value):
        self.sink.append((self.tag, windowed_value.value))


class _Receivers(dict):
    def __init__(self, sink: list):
        super().__init__()
        self.sink = sink

    def __missing__(self, tag):
        receiver = self[tag] = _Collect(tag, self.sink)
        return receiver


class _Instance:
    """One set-up DoFn of one transform in one worker process, and the list its outputs go to."""

    def __init__(self, spec: "_ParDoSpec", side_values: tuple):
        fn, args, kwargs, windowing = pickler.loads(spec.payload)
        self.out: list = []
        sides = [SideInputMap(view_class, view_options, [_global(v) for v in values])
                 for (view_class, view_options), values in zip(pickler.loads(spec.side_views), side_values)]
        self.runner = DoFnRunner(fn, args, kwargs, sides, windowing, tagged_receivers=_Receivers(self.out),
                                 step_name=spec.label)
        self.runner.setup()


# (run id, transform label) -> idle instances; a bundle takes one (or makes one) and gives it back
_POOL: dict[tuple[str, str], list[_Instance]] = {}
_POOL_LOCK = threading.Lock()


def _run_bundle(partition, spec: "_ParDoSpec", *side_values) -> list:
    """One partition as one bundle through a reused DoFn instance: [(tag, value), ...]."""
    key = (spec.run_id, spec.label)
    with _POOL_LOCK:
        idle = _POOL.setdefault(key, [])
        instance = idle.pop() if idle else None
    if instance is None:
        instance = _Instance(spec, side_values)
    try:
        instance.runner.start()
        for element in partition:
            instance.runner.process(_global(element))
        instance.runner.finish()
        outputs = list(instance.out)
        instance.out.clear()
    except BaseException:
        try:            # a failed bundle's instance is not reused: its state is unknown
            instance.runner.teardown()
        except Exception:  # noqa: BLE001 -- the bundle's own error is the one to report
            pass
        raise
    with _POOL_LOCK:
        _POOL.setdefault(key, []).append(instance)
    return outputs


def _teardown_run(run_id: str) -> int:
    """Tear down this worker's DoFn instances of one run (called on every worker at the end)."""
    with _POOL_LOCK:
        keys = [k for k in _POOL if k[0] == run_id]
        instances = [i for k in keys for i in _POOL.pop(k)]
    for instance in instances:
        try:
            instance.runner.teardown()
        except Exception:  # noqa: BLE001 -- teardown is best effort, as in Beam
            log.warning("teardown of %s failed", instance.runner.step_name, exc_info=True)
    return len(instances)


def _select(partition, tag) -> list:
    return [v for t, v in partition if t == tag]


def _as_list(partition) -> list:
    return list(partition)


def _concat(lists) -> list:
    return [x for part in lists for x in part]


def _group_values(key_and_items):
    key, items = key_and_items      # items: (key, WindowedValue) pairs from ReifyWindows
    return key, [wv.value for _, wv in items]


def _first(item):
    return item[0]


def _piece(partition, index: int, pieces: int) -> list:
    """The index-th of `pieces` near-equal slices of a partition."""
    seq = list(partition)
    return seq[len(seq) * index // pieces: len(seq) * (index + 1) // pieces]


def _length(partition) -> list:
    return [len(list(partition))]


def _read_bundles(bundles) -> list:
    """The elements of a partition of source bundles, each read over its own range."""
    out = []
    for b in bundles:
        out.extend(b.source.read(b.source.get_range_tracker(b.start_position, b.stop_position)))
    return out


# --------------------------------------------------------------------------------------------
# in the driver


class _ReadBounded(beam.PTransform):
    """What `beam.io.Read` of a bounded source becomes here: a primitive the translator splits and reads."""

    def __init__(self, source):
        super().__init__()
        self.source = source

    def expand(self, pbegin):
        return pvalue.PCollection(pbegin.pipeline, is_bounded=True)

    def get_windowing(self, inputs):
        return beam.Windowing(window.GlobalWindows())


BEAM_READ_OVERRIDE = "ReadOverride"      # the class name of Beam's override that _ReadOverride replaces


class _ReadOverride(PTransformOverride):
    def matches(self, applied_ptransform) -> bool:
        t = applied_ptransform.transform
        return type(t) is beam.io.Read and isinstance(t.source, BoundedSource)

    def get_replacement_transform_for_applied_ptransform(self, applied_ptransform):
        return _ReadBounded(applied_ptransform.transform.source)


def overrides() -> list:
    """Beam's DaskRunner overrides (Create, Reshuffle, GroupByKey, Flatten), with `Read` of a bounded
    source replaced by _ReadBounded (Beam's replacement has no translation and no windowing); a
    Read of anything else expands as in Beam (a PTransform source is applied; an unbounded one is refused)."""
    found = beam_overrides.dask_overrides()
    names = [type(o).__name__ for o in found]
    if names.count(BEAM_READ_OVERRIDE) != 1:
        # replaced by class name; silently keeping Beam's would bring back the fault _ReadOverride fixes
        raise RuntimeError(f"Beam's DaskRunner overrides are {names}, not one {BEAM_READ_OVERRIDE!r} to replace with "
                           "pipeline.beam.dask_runner._ReadOverride: this Beam release changed them; "
                           "pipeline/beam/dask_runner.py must follow")
    return [_ReadOverride() if type(o).__name__ == BEAM_READ_OVERRIDE else o for o in found]


MIN_BUNDLE_BYTES = 1 << 20


@dataclass(frozen=True)
class _ParDoSpec:
    run_id: str
    label: str
    payload: bytes       # pickled (DoFn, args with side-input placeholders, kwargs, input windowing)
    side_views: bytes    # pickled [(AsSideInput class, its view options)], in the order of the side inputs


class _Translator(PipelineVisitor):
    """Builds one dask.bag per PCollection, leaf transform by leaf transform (topological order)."""

    def __init__(self, client, run_id: str, npartitions: int | None, partition_size: int | None):
        self.client, self.run_id = client, run_id
        self.npartitions, self.partition_size = npartitions, partition_size
        self.bags: dict = {}          # PCollection -> Bag
        self.tagged: dict = {}        # PCollection -> (Bag of (tag, value) of its ParDo, tag)
        self.consumed: set = set()
        self.order: list = []         # PCollections in creation order
        self.persisted: list = []     # collections held on the cluster until the run ends

    def _threads(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def visit_transform(self, node) -> None:
        import dask.bag as db

        t = node.transform
        inputs = [p for p in node.inputs if isinstance(p, pvalue.PCollection)]
        self.consumed.update(inputs)
        self.consumed.update(si.pvalue for si in node.side_inputs)
        outputs = {tag: pc for tag, pc in node.outputs.items() if isinstance(pc, pvalue.PCollection)}
        for pc in outputs.values():
            if not pc.is_bounded:
                raise NotImplementedError(f"DaskRunner: {node.full_label} is unbounded; only bounded (batch) "
                                          "pipelines are supported")
            if not isinstance(pc.windowing.windowfn, window.GlobalWindows):
                raise NotImplementedError(f"DaskRunner: {node.full_label} is not in the global window; "
                                          "only globally windowed batch pipelines are supported")
        if isinstance(t, beam_overrides._Create):
            values = list(t.values)
            n = max(1, len(values))
            parts = self.npartitions or math.ceil(n / (self.partition_size or MAX_RESHUFFLE_PARTITION))
            bag = db.from_sequence(values, npartitions=max(1, min(n, parts)))
        elif isinstance(t, _ReadBounded):
            bag = self._read(t.source, node.full_label)
        elif isinstance(t, beam.Impulse):
            bag = db.from_sequence([b""], npartitions=1)
        elif isinstance(t, beam_overrides._Reshuffle):
            bag = self._reshuffle(inputs[0])
        elif isinstance(t, beam_overrides._GroupByKeyOnly):
            bag = self.bags[inputs[0]].groupby(_first, shuffle="tasks").map(_group_values)
        elif isinstance(t, beam_overrides._GroupAlsoByWindow):
            bag = self.bags[inputs[0]]       # global window: the grouped values are final
        elif isinstance(t, beam_overrides._Flatten):
            bags = [self.bags[p] for p in inputs]
            bag = db.concat(bags) if bags else db.from_sequence([], npartitions=1)
        elif isinstance(t, beam.ParDo):
            self._pardo(node, t, inputs[0], outputs)
            return
        else:
            raise NotImplementedError(f"DaskRunner cannot run {type(t).__name__} ({node.full_label})")
        for pc in outputs.values():
            self._add(pc, bag)

    def _add(self, pc, bag, tagged=None) -> None:
        self.bags[pc] = bag
        if tagged is not None:
            self.tagged[pc] = tagged
        self.order.append(pc)

    def _pardo(self, node, t, main_input, outputs) -> None:
        spec = _ParDoSpec(
            run_id=self.run_id, label=node.full_label,
            payload=pickler.dumps((t.fn, t.args, t.kwargs, main_input.windowing)),
            side_views=pickler.dumps([(type(si), si._view_options()) for si in node.side_inputs]))
        # a side input is computed once, as a whole list, and passed to every task that reads it
        sides = [self.bags[si.pvalue].reduction(_as_list, _concat).to_delayed(optimize_graph=False)
                 for si in node.side_inputs]
        tagged = self.bags[main_input].map_partitions(_run_bundle, spec, *sides)
        for tag, pc in outputs.items():
            self._add(pc, tagged.map_partitions(_select, tag), tagged=(tagged, tag))

    def _read(self, source, label: str):
        """A bounded source split into bundles in the driver, one partition per bundle, read on the workers."""
        import dask.bag as db

        size = source.estimate_size() or 0
        desired = max(MIN_BUNDLE_BYTES, size // (PARTITIONS_PER_THREAD * self._threads()))
        bundles = list(source.split(desired))
        log.info("%s: %d bytes in %d bundles", label, size, len(bundles))
        if not bundles:
            return db.from_sequence([], npartitions=1)
        return db.from_sequence(bundles, npartitions=len(bundles)).map_partitions(_read_bundles)

    def _reshuffle(self, pc):
        """Materialize `pc` (its whole ParDo, so its sibling outputs are not recomputed), count it and
        split it into balanced partitions: Beam's Reshuffle is a checkpoint, and on dask a
        partition is the unit of parallelism."""
        import dask
        import dask.bag as db

        if pc in self.tagged:
            original = self.tagged[pc][0]
            source = self.client.persist(original)
            self.persisted.append(source)
            for sibling, (bag, tag) in list(self.tagged.items()):
                if bag is original:
                    self.bags[sibling] = source.map_partitions(_select, tag)
                    self.tagged[sibling] = (source, tag)
            bag = self.bags[pc]
        else:
            bag = self.client.persist(self.bags[pc])
            self.persisted.append(bag)
        lengths = self.client.compute(bag.map_partitions(_length)).result()
        total = sum(lengths)
        if self.npartitions:
            size = max(1, math.ceil(total / self.npartitions))
        else:
            size = self.partition_size or max(1, min(MAX_RESHUFFLE_PARTITION,
                                                     math.ceil(total / (PARTITIONS_PER_THREAD * self._threads()))))
        pieces = []
        for part, n in zip(bag.to_delayed(optimize_graph=False), lengths):
            k = math.ceil(n / size)
            pieces.extend(dask.delayed(_piece)(part, j, k) for j in range(k))
        log.info("Reshuffle: %d elements into %d partitions", total, max(1, len(pieces)))
        return db.from_delayed(pieces) if pieces else db.from_sequence([], npartitions=1)

    def sinks(self) -> list:
        """The bags of PCollections nothing reads: computing them runs every transform."""
        return [self.bags[pc] for pc in self.order if pc not in self.consumed]


class DaskRunnerResult(PipelineResult):
    def __init__(self, client, futures, cluster, run_id: str, persisted: list):
        super().__init__(PipelineState.RUNNING)
        self._client, self._futures, self._cluster = client, futures, cluster
        self._run_id, self._persisted = run_id, persisted

    def wait_until_finish(self, duration=None):
        import time

        if self._state != PipelineState.RUNNING:
            return self._state
        deadline = None if duration is None else time.monotonic() + duration / 1000
        try:
            for future in self._futures:     # raises the first failed task's error here, in the driver
                future.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if not all(f.done() for f in self._futures):
                return self._state
        except BaseException:
            self._state = PipelineState.FAILED
            self._close()
            raise
        self._state = PipelineState.DONE
        self._close()
        return self._state

    def cancel(self):
        self._state = PipelineState.CANCELLING
        self._client.cancel(self._futures)
        self._close()
        self._state = PipelineState.CANCELLED
        return self._state

    def _close(self) -> None:
        try:
            self._client.run(_teardown_run, self._run_id)
        except Exception:  # noqa: BLE001 -- best effort, as teardown is in Beam
            log.warning("DoFn teardown on the workers failed", exc_info=True)
        self._persisted.clear()
        self._futures = []
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def metrics(self):
        raise NotImplementedError("the DaskRunner does not collect Beam metrics")


def start_local_cluster(workers: int):
    """A LocalCluster of `workers` processes, one thread each, without dask's MALLOC_TRIM_THRESHOLD_.

    dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand freed memory back to the
    OS sooner); setting it turns off glibc's dynamic mmap threshold, so every array over 128 KiB
    (a decoded clip, a mel) is a fresh mmap and page faults. Measured on this job (600 seed-preset
    clips, 1 worker, whole command): 12.7-13.2 s without it, 14.9-16.4 s with it."""
    import dask
    import distributed

    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), "MALLOC_TRIM_THRESHOLD_": None}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=":0")   # any free port, never a clash


class DaskRunner(beam_dask.DaskRunner):
    """Runs a bounded, globally windowed pipeline on a dask.distributed cluster (see the module doc)."""

    def run_pipeline(self, pipeline, options):
        import distributed

        dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)
        local_workers = options.view_as(DaskClusterOptions).dask_local_workers
        cluster = None
        if not (dask_options.get("address") or dask_options.get("scheduler_file")):
            import dask.system

            workers = local_workers or dask.system.CPU_COUNT    # dask's count: affinity and cgroup quotas
            cluster = start_local_cluster(workers)
            dask_options["address"] = cluster
            log.info("started a dask LocalCluster of %d worker processes", workers)
        elif local_workers:
            log.warning("--dask_local_workers is ignored: the run goes to the cluster named by the options")
        client = distributed.Client(**dask_options, set_as_default=False)
        run_id = uuid.uuid4().hex
        try:
            pipeline.replace_all(overrides())
            translator = _Translator(client, run_id, bag_kwargs.get("npartitions"), bag_kwargs.get("partition_size"))
            pipeline.visit(translator)
            futures = client.compute([bag.count() for bag in translator.sinks()])
        except BaseException:
            client.close()
            if cluster is not None:
                cluster.close()
            raise
        return DaskRunnerResult(client, futures, cluster, run_id, translator.persisted)
