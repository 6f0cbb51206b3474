# Voxa developer commands. `make demo` and `make test` each set up a fresh machine by themselves.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PKGS := -p voxa.common -p voxa.signaling -p voxa.sfu -p voxa.operator -p voxa.client

.PHONY: setup setup-test demo test test-quick lint typecheck rust rust-quick fuzz pyfuzz pytest bench clean crds

# What `make demo` needs (the venv and the runtime dependencies); setup-test adds the rest.
setup:
	@bash .ci/setup.sh

setup-test:
	@bash .ci/setup-test.sh

demo: setup
	$(VENV)/bin/voxa demo $(ARGS)

lint: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup-test
	$(VENV)/bin/mypy $(PKGS)
	$(VENV)/bin/mypy conftest.py tests e2e bench --exclude '^bench/e2e\.py$$'
	# bench/e2e.py alone: as a script its module name, e2e, would clash with the e2e/ package.
	$(VENV)/bin/mypy bench/e2e.py

# The native data plane (sfu/dataplane/): rustfmt, clippy -D warnings, cargo test --release (.ci/rust.sh);
# cargo's output is cached in ~/.cache/voxa/cargo/dataplane.
rust: setup-test
	@bash .ci/rust.sh

rust-quick: setup-test
	@bash .ci/rust.sh --quick

# A bounded fuzz run of every cargo-fuzz target in sfu/dataplane/fuzz/ (FUZZ_SECONDS each, default 20).
fuzz: setup-test
	@bash .ci/fuzz.sh

# A bounded coverage-guided run (atheris) of every Python parser that reads network input (SDP and
# negotiation, the Phoenix codec, RTP, RTCP: tests/fuzz/targets.py), PYFUZZ_SECONDS each (default 15);
# the long run is PYFUZZ_RUNS=10000000 (.ci/pyfuzz.sh).
pyfuzz: setup-test
	@bash .ci/pyfuzz.sh

pytest: setup-test
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

# Everything CI runs.
test: lint typecheck rust fuzz pyfuzz pytest

# The fast subset for the edit-run loop: skips suites marked slow, clippy and fuzzing.
test-quick: rust-quick
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup-test
	$(PY) bench/signaling.py --json

# crds/*.yaml and charts/voxa-operator/operator.yaml from the pydantic models (CI fails on drift:
# tests/unit/operator/test_crds.py).
crds: setup-test
	$(VENV)/bin/voxa crds

clean:
	rm -rf build .mypy_cache .pytest_cache .ruff_cache

# A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
# kwok with fake nodes; e2e/cluster/) with the CRDs and the operator: `make cluster` prints the
# `export KUBECONFIG=...` line to use it. The first build compiles Kubernetes, then it is cached.
.PHONY: cluster-tools cluster cluster-down

cluster-tools:
	@bash e2e/cluster/build.sh

cluster: setup-test
	$(PY) -m e2e.cluster up

cluster-down:
	$(PY) -m e2e.cluster down

# Voxa with real pods on a local kind cluster (e2e/kind/): `make images [REGISTRY=r.example/voxa]`
# builds the voxa, stunnerd and redis images; `make kind` also builds the node image (once), creates the cluster `voxa`, loads the
# images and installs charts/voxa, and prints the `export KUBECONFIG=...` line last; `make kind-demo`
# applies a StunnerGateway and a VoiceServer and prints invite links; `make kind-down` removes it all.
.PHONY: images kind kind-demo kind-down

images: setup-test
	$(PY) -m e2e.kind images $(if $(REGISTRY),--registry $(REGISTRY))

kind: setup-test
	$(PY) -m e2e.kind up

kind-demo: kind
	$(PY) -m e2e.kind demo

kind-down: setup-test
	$(PY) -m e2e.kind down
