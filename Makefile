# xencluster — see README.md. Everything runs as root on Debian 12.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LAB := $(PY) -m lab
NODES ?= 2
PYTEST := $(PY) -m pytest

.PHONY: help host-deps venv test test-fast test-unit test-integration test-lab test-lab-lanes test-lab-provision \
        lab-build lab-up lab-master lab-status lab-down demo benchmark-lab-boot \
        benchmark-report-scaling benchmark-highstate-commands benchmark-migration clean

help:
	@echo "make demo       set up everything, boot the lab cluster, converge it with a highstate, show it"
	@echo "make test       every test tier: unit, integration, lab (boots the QEMU cluster)"
	@echo "make test-fast  unit and integration only"
	@echo "make lab-build | lab-up [NODES=3] | lab-master | lab-status | lab-down"

# Install only what is missing, so a warm machine does no apt work.
host-deps:
	@missing=$$(grep -v '^#' lab/host-packages.txt | xargs dpkg-query -W -f='$${db:Status-Abbrev} $${Package}\n' 2>/dev/null \
	   | awk '$$1=="ii"{print $$2}' | sort | comm -13 - <(grep -v '^#' lab/host-packages.txt | sort)); \
	if [ -n "$$missing" ]; then \
	  echo "host-deps: installing $$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	else echo "host-deps: all present"; fi

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,lio]'
	touch $@

venv: $(VENV)/.installed

test: test-unit test-integration test-lab

test-fast: test-unit test-integration

test-unit: venv
	$(PYTEST) tests/unit -q

test-integration: venv
	$(PYTEST) tests/integration -q

# Without the provisioning steps (lab_provision): they do not fit CI's 60 minutes yet.
test-lab: host-deps venv
	$(PYTEST) tests/lab_cluster -q -m "lab and not lab_provision" --durations=0 --durations-min=30

# The highstate module with its provisioning steps (issue 6) and restore on svc1 (issue 5): a fresh lab, ~80 min.
test-lab-provision: host-deps venv
	$(PYTEST) tests/lab_cluster/test_cluster_highstate.py -q -m lab --durations=0 --durations-min=30

# The lab tier as two lanes on two labs at once: for machines with 4 or more cores.
# On 2 cores the lab is CPU-bound and two lanes were slower than one (README).
test-lab-lanes: host-deps venv
	$(PY) tests/lab_cluster/lanes.py -q --durations=0 --durations-min=30

lab-build: host-deps venv
	$(LAB) build

lab-up: lab-build
	$(LAB) up $(NODES)

lab-master: lab-up
	$(LAB) master

lab-status: venv
	$(LAB) status

lab-down: venv
	$(LAB) down

demo: host-deps venv lab-master
	$(PY) -m lab.demo

benchmark-lab-boot: host-deps venv
	$(PY) benchmarks/lab_boot.py

# Needs the lab running (make lab-up); never starts or stops it.
benchmark-report-scaling: venv
	$(PY) benchmarks/report_scaling.py

# Needs the lab running on FRESH dom0s (python -m lab down --wipe; python -m lab up) and
# changes it for good (VG, bonds, 20 guests); restarts the master on its own pillar and back.
benchmark-highstate-commands: venv
	$(PY) benchmarks/highstate_commands.py

# Needs the lab running in the state tests/lab_cluster/test_guest_pairs.py needs (each node's first
# data disk free: fresh dom0s); builds two disk pairs and the guest minion mdg, removes them after.
.PHONY: benchmark-backup-resync
benchmark-backup-resync: venv
	$(PY) benchmarks/backup_resync.py

# Needs the lab converged by the cluster highstate, the master up and web1 at home on node1;
# 16 live migrations of web1 (4 methods x 2 round trips) and 2 socat copies; web1 ends at home.
benchmark-migration: venv
	$(PY) benchmarks/migration.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
