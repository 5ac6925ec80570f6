# `make run` and `make test` set up a fresh Debian 12 machine (as root) and are
# idempotent: a second run only checks that everything is in place.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
APT    := fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev attr
MNT    ?= /mnt/zsfs

.PHONY: setup run test bench-alloc clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@missing=$$(for p in $(APT); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: setup
	mkdir -p $(MNT)
	$(VENV)/bin/zsfs $(MNT) -f

test: setup
	$(PY) -m pytest -q

bench-alloc: setup
	$(PY) tools/bench_alloc.py

clean:
	rm -rf $(VENV) build *.egg-info

# `make bench`: zsfs, tmpfs and ext4 on zram side by side (tools/bench, issue 5). Builds the
# deterministic corpus once; pass more options with BENCH_ARGS="--repeat 1 --only zsfs,zram".
CORPUS     ?= /tmp/zsfs-corpus
BENCH_ARGS ?=
.PHONY: bench
bench: setup
	@for t in fio mkfs.ext4; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio e2fsprogs; \
	fi
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q -e '.[bench]' || \
		echo "matplotlib unavailable: tools/bench will skip the plot"
	test -d $(CORPUS)/corpus || ../shared/bench/make_corpus.sh $(CORPUS)
	$(PY) tools/bench $(CORPUS)/corpus --out bench-results $(BENCH_ARGS)
