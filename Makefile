# `make run` and `make test` set up a fresh Debian 12 machine (as root) and are
# idempotent: a second run only checks that everything is in place.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# acl (getfacl/setfacl), man-db and groff-base (man --warnings) and systemd
# (systemd-analyze verify) are for the tests of ACLs, man pages and units.
APT    := fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev attr acl man-db \
          groff-base systemd
MNT    ?= /mnt/zsfs

.PHONY: setup run test bench-alloc clean install uninstall

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

# `make install` (as root): zsfs and zsfsctl in $(PREFIX)/bin, where mount(8),
# mount.fuse3, fstab and systemd find them, their libraries in $(PREFIX)/lib/zsfs,
# the man pages, and zsfs@.service in $(PREFIX)/lib/systemd/system (ExecStart
# naming the installed zsfs). DESTDIR stages it all elsewhere, as packagers do.
# The commands run on the system's python3 with nothing but $(PREFIX)/lib/zsfs on
# their path (python -I), so they work for every user and outlive this checkout.
PREFIX         ?= /usr/local
DESTDIR        ?=
INSTALL_PYTHON ?= /usr/bin/python3
BINDIR   := $(PREFIX)/bin
LIBDIR   := $(PREFIX)/lib/zsfs
MANDIR   := $(PREFIX)/share/man/man8
UNITDIR  := $(PREFIX)/lib/systemd/system
SHAREDIR := $(PREFIX)/share/zsfs
STAGE    := build/install-lib

$(STAGE)/.stamp: $(STAMP) pyproject.toml $(wildcard zsfs/*.py)
	rm -rf $(STAGE)
	$(PY) -m pip install -q --no-compile --target $(STAGE) .
	$(INSTALL_PYTHON) -I -c 'import sys; sys.path.insert(0, "$(STAGE)"); import pyfuse3, trio, zstandard, zsfs.cli' \
		|| { echo "make install: $(INSTALL_PYTHON) cannot run what $(PY) built; set INSTALL_PYTHON" >&2; exit 1; }
	touch $@

install: $(STAGE)/.stamp
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SHAREDIR)
	rm -rf $(DESTDIR)$(LIBDIR)
	install -d $(DESTDIR)$(LIBDIR)
	cp -R $(STAGE)/. $(DESTDIR)$(LIBDIR)/
	rm -f $(DESTDIR)$(LIBDIR)/.stamp
	rm -rf $(DESTDIR)$(LIBDIR)/bin
	printf '#!%s -I\nimport sys\nsys.path.insert(0, "%s")\nfrom zsfs.%s import %s\nsys.exit(%s())\n' \
		$(INSTALL_PYTHON) $(LIBDIR) cli main main > $(DESTDIR)$(BINDIR)/zsfs
	printf '#!%s -I\nimport sys\nsys.path.insert(0, "%s")\nfrom zsfs.%s import %s\nsys.exit(%s())\n' \
		$(INSTALL_PYTHON) $(LIBDIR) ctl run run > $(DESTDIR)$(BINDIR)/zsfsctl
	chmod 755 $(DESTDIR)$(BINDIR)/zsfs $(DESTDIR)$(BINDIR)/zsfsctl
	install -m 644 man/zsfs.8 man/zsfsctl.8 $(DESTDIR)$(MANDIR)/
	sed 's|^ExecStart=zsfs |ExecStart=$(BINDIR)/zsfs |' systemd/zsfs@.service \
		> $(DESTDIR)$(UNITDIR)/zsfs@.service
	chmod 644 $(DESTDIR)$(UNITDIR)/zsfs@.service
	install -m 644 systemd/zsfs-prometheus.service systemd/zsfs-prometheus.timer $(DESTDIR)$(UNITDIR)/
	install -m 644 systemd/zsfs-tmp.mount $(DESTDIR)$(SHAREDIR)/zsfs-tmp.mount
	@echo "installed zsfs and zsfsctl in $(DESTDIR)$(BINDIR)"

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/zsfs $(DESTDIR)$(BINDIR)/zsfsctl
	rm -f $(DESTDIR)$(MANDIR)/zsfs.8 $(DESTDIR)$(MANDIR)/zsfsctl.8
	rm -f $(DESTDIR)$(UNITDIR)/zsfs@.service $(DESTDIR)$(UNITDIR)/zsfs-prometheus.service \
		$(DESTDIR)$(UNITDIR)/zsfs-prometheus.timer
	rm -rf $(DESTDIR)$(LIBDIR) $(DESTDIR)$(SHAREDIR)

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
