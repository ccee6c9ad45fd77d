# Every target runs inside the project environment; .ci/inenv creates it when missing
# (a venv where glibc >= 2.39, else a Debian 13 root; FATP_FORCE_ROOT=1 forces the root).
INENV     := .ci/inenv
DEMO_DATA ?= demo_data
DEMO_OUT  ?= out/demo
DEMO_PIPELINE ?= out/pipeline
DEMO_SERVING  ?= out/serving
PYTEST_ARGS ?=

.PHONY: env demo demo-job demo-tag test test-fast smoke-root bench shell protos clean

env:            ## create or update the environment
	$(INENV) python -c "import tensorflow, tfx, apache_beam; print('environment ready:', '$$($(INENV) --which)')"

$(DEMO_DATA)/train_curated.csv:
	$(INENV) python -m pipeline.data.demo_data --out $(DEMO_DATA)

demo: $(DEMO_DATA)/train_curated.csv   ## generate the synthetic FAT2019-layout data and run the TFX pipeline on it
	# the demo data holds 9 deliberately bad rows/clips (3.6%), counted in the report and the Examples' dead_letters.jsonl;
	# a second `make demo` is served from the cache (MLMD in $(DEMO_PIPELINE)/metadata.sqlite);
	# it ends with the blessed model's submission for the demo's test clips (the report's SubmissionWriter line)
	$(INENV) fatp-pipeline --data_dir $(DEMO_DATA) --pipeline_root $(DEMO_PIPELINE) --serving_root $(DEMO_SERVING) \
	    --feature_preset small --epochs 30

demo-job: $(DEMO_DATA)/train_curated.csv   ## the Beam feature job alone on the demo data
	$(INENV) python beam_runner.py --runner=DirectRunner --data_dir $(DEMO_DATA) --output_dir $(DEMO_OUT) \
	    --preset small --overwrite

demo-tag:       ## batch prediction on Beam: the demo's test clips tagged by the newest pushed model (after `make demo`)
	$(INENV) python -m pipeline.serving.batch_predict --model $(DEMO_SERVING)/fat_tagger --data_dir $(DEMO_DATA) \
	    --output_dir out/tagged --overwrite --runner=DirectRunner

test:           ## the whole test suite (installs MariaDB and Chromium for their tests where it can: .ci/test-programs)
	.ci/test-programs
	$(INENV) pytest -q -rs $(PYTEST_ARGS)

test-fast:      ## unit tests only
	$(INENV) pytest -q -rs -m "not slow" $(PYTEST_ARGS)

smoke-root:     ## the Debian 13 root path, forced, on any host: build it and run a short job
	rm -rf /tmp/fatp-smoke && FATP_FORCE_ROOT=1 $(INENV) python -m pipeline.data.demo_data --out /tmp/fatp-smoke/data --train 12 --test 2
	FATP_FORCE_ROOT=1 $(INENV) python beam_runner.py --data_dir /tmp/fatp-smoke/data --output_dir /tmp/fatp-smoke/out \
	    --preset small --max_error_ratio 1
	FATP_FORCE_ROOT=1 $(INENV) python -c "import tfx, ml_metadata; print('tfx', tfx.__version__, 'in the Debian 13 root')"

bench:          ## feature-job benchmark on FSDD-FAT clips (needs ../shared)
	$(INENV) python bench/bench_features.py

shell:          ## an interactive shell in the environment
	$(INENV) bash

protos:         ## recompile proto/*.proto into pipeline/protos
	$(INENV) python setup.py -q build_protos

clean:
	rm -rf $(DEMO_DATA) out build *.egg-info
