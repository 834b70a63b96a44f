# One entry point for people and CI. Each target installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
BIN := $(VENV)/bin
BUILD := $(CURDIR)/.build
COLLECTIONS := $(BUILD)/collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/ironcore/image
DEMO_DIR ?= $(BUILD)/demo
# Execution environment for AWX: ansible-builder's context (make ee-context), and the image (make ee, docs/awx.md).
EE_CONTEXT ?= $(BUILD)/ee/context
EE_TAG ?= localhost/ironcore-image-ee:latest
# The image's working directory: the cached Debian base tarball, the wheelhouse, the context, containers.conf.
EE_BUILD_DIR ?= $(BUILD)/ee/image
# EE_BASE_IMAGE: a base image instead of the local Debian 12 (its package manager installs bindep.txt's packages).
EE_BASE_IMAGE ?=
# EE_CA_BUNDLE: a CA bundle (PEM) for the package manager and pip inside the build, where they reach an index.
EE_CA_BUNDLE ?=
# EE_PIP_INDEX=1: pip inside the build installs from the package index instead of the host's wheelhouse.
EE_PIP_INDEX ?=
PODMAN ?= podman
# What `make ee` needs (make test too, for tests/playbooks/test_ee.py): podman, runc for hosts with cgroup v1
# or hybrid cgroups (crun refuses them), mmdebstrap for the Debian base.
EE_APT_PACKAGES := podman runc mmdebstrap

# Debian packages the tests drive for real: registry, OCI client, emulator, sshd, ...
# (docker-registry's package also starts a registry service on :5000 where systemd runs.)
APT_PACKAGES := python3-venv docker-registry skopeo qemu-system-x86 qemu-system-arm qemu-utils openssh-server openssh-client \
	busybox-static apache2-utils e2fsprogs curl openssl cpio rsync shellcheck libvirt-clients nginx-light nodejs \
	podman runc mmdebstrap systemd-boot-efi sbsigntool ovmf qemu-efi-aarch64 ipxe
# What `make demo` needs and nothing more: no service is started, no port opened.
DEMO_APT_PACKAGES := python3-venv skopeo
# The demo's own light virtualenv: ansible-core and the modules' requirements, no test or lint tools.
DEMO_VENV ?= $(BUILD)/demo-venv
DEMO_BIN := $(DEMO_VENV)/bin
# The independent verifier of our Sigstore bundles (npm @sigstore/verify), pinned by its package-lock.json.
SIGSTORE_DIR := tests/sigstore
SIGSTORE_VERIFIER := $(SIGSTORE_DIR)/node_modules/.package-lock.json

export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH := false
export ANSIBLE_NOCOLOR := 1
# Modules run with the virtualenv that holds their Python dependencies.
export ANSIBLE_PYTHON_INTERPRETER := $(BIN)/python
export PATH := $(BIN):$(PATH)

.PHONY: help system-deps ee-deps demo-deps venv sigstore-verifier demo-venv collection demo test test-arm64-uefi pytest unit lint sanity docs-lint docs galaxy changelog clean bench bench-build bench-push bench-fetch bench-copy bench-scale bench-profile bench-fleet bench-delta bench-sparse bench-hash bench-startup ee-context ee

help:
	@echo "make demo       build a sample two-platform image into a local OCI layout and show it (light install)"
	@echo "make test       install everything and run every gate below, then every pytest test"
	@echo "make lint       import layers (tools/check_layers.py), ruff (lint, format), mypy, yamllint, ansible-lint"
	@echo "make unit       only the unit tests (tests/unit): no Debian packages, no registries"
	@echo "make docs-lint  antsibull-docs on the plugin docs, antsibull-changelog, reference up to date"
	@echo "make sanity     ansible-test sanity, every test, no ignore entries"
	@echo "make galaxy     build the tarball, galaxy-importer, install it, run the demo from it"
	@echo "make docs       regenerate docs/reference from the modules' and roles' own docs"
	@echo "make ee         build the execution environment image for AWX with podman, offline (docs/awx.md)"
	@echo "make ee-context only ansible-builder's build context of the execution environment"
	@echo "make bench      every benchmark against its peer tool and its limit, table in .build/bench/report.md (not in make test)"
	@echo "make bench-build / bench-push / bench-fetch / bench-copy / bench-scale / bench-profile   one of them (docs/performance.md)"
	@echo "make bench-fleet N nodes at once through the mirror role's site cache, the origin and a pull-through cache (docs/fleet.md)"
	@echo "make bench-delta    release B fetched onto a node holding A: bytes, time over a 100 Mbit/s link, RSS (docs/delta.md)"
	@echo "make bench-sparse   a first install with no seed: only the non-zero blocks of an ext4 image, beside a full fetch"
	@echo "make bench-hash     block index hash candidates per 4 KiB block: GiB/s on one core and two (docs/performance.md)"
	@echo "make bench-startup  each module's AnsiballZ payload and the time of a call with nothing to do, beside ping"

# $(call apt_install,PACKAGES): install those of PACKAGES that dpkg does not have.
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

system-deps:
	$(call apt_install,$(APT_PACKAGES))
	@# Debian's npm, unless the nodejs installed brings its own (NodeSource's does, and conflicts with Debian's).
	@if ! command -v npm >/dev/null; then \
		echo "installing Debian packages: npm"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; \
	fi
	@if ! ls /var/lib/apt/lists/ 2>/dev/null | grep -q '_Packages'; then \
		echo "apt has no package lists (the boot test downloads a kernel package): apt-get update"; \
		apt-get update -qq; \
	fi

demo-deps:
	$(call apt_install,$(DEMO_APT_PACKAGES))

ee-deps:
	$(call apt_install,$(EE_APT_PACKAGES))

$(BIN)/.installed: requirements.txt meta/requirements.txt requirements-dev.txt requirements-gates.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt -r requirements-gates.txt
	touch $@

venv: $(BIN)/.installed

# ansible-core at the version requirements-dev.txt asks for (one place for it, with its cryptography bound),
# and the modules' requirements.
$(DEMO_BIN)/.installed: requirements.txt meta/requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_BIN)/pip install -q --upgrade pip
	$(DEMO_BIN)/pip install -q -r requirements.txt "$$(grep -m1 '^ansible-core' requirements-dev.txt)" \
		"$$(grep -m1 '^cryptography' requirements-dev.txt)"
	touch $@

demo-venv: demo-deps $(DEMO_BIN)/.installed

# Ansible and the unit tests find the collection through this link.
collection:
	@mkdir -p $(dir $(COLLECTION_LINK))
	@ln -sfn $(CURDIR) $(COLLECTION_LINK)

# The demo runs from its own light virtualenv, whatever the full one holds.
demo: export ANSIBLE_PYTHON_INTERPRETER := $(DEMO_BIN)/python
demo: demo-deps demo-venv collection
	$(DEMO_BIN)/ansible-playbook -i localhost, -c local playbooks/demo.yml -e demo_dir=$(DEMO_DIR)
	@echo "--- skopeo inspect --raw oci:$(DEMO_DIR)/layout:demo.example.com/os/sample:1.0"
	@skopeo inspect --raw oci:$(DEMO_DIR)/layout:demo.example.com/os/sample:1.0 | $(DEMO_BIN)/python -m json.tool

# The collection as a tarball of this checkout, then ansible-builder's context (no network needed).
ee-context: venv collection
	@rm -rf $(BUILD)/ee/collection
	cp "$$(tools/build_tarball.sh $(BUILD)/ee/collection)" $(BUILD)/ee/ironcore-image.tar.gz
	$(BIN)/ansible-builder create --file meta/execution-environment.yml --context $(EE_CONTEXT) \
		--output-filename Containerfile

# The image, with podman and no network inside the build (tools/build_ee.py says how): the podman settings
# this host needs (runc, cgroupfs, ulimits) are detected and written to $(EE_BUILD_DIR)/containers.conf.
ee: ee-deps venv
	$(BIN)/python tools/build_ee.py --tag $(EE_TAG) --build-dir $(EE_BUILD_DIR) --podman $(PODMAN) \
		$(if $(EE_BASE_IMAGE),--base-image $(EE_BASE_IMAGE)) $(if $(EE_CA_BUNDLE),--ca-bundle $(EE_CA_BUNDLE)) \
		$(if $(EE_PIP_INDEX),--pip-index)

# The quality gates first (fast ones first), the test suite last so its summary closes the output.
test: system-deps venv collection lint docs-lint sanity galaxy pytest

# arm64 in UEFI firmware (AAVMF, Secure Boot with the snakeoil test key), emulated: minutes, so not in make test.
# The arm64 kernel, busybox and systemd stub come from Debian's arm64 packages (apt-get download through
# private package lists), cached under .build/boot.
test-arm64-uefi: system-deps venv collection
	$(BIN)/pytest -m arm64_uefi tests/playbooks/test_uefi_boot_arm64.py

# PYTEST_ARGS="tests/integration/test_copy.py -k mirror" to run a part of it.
# Tests run in pytest-xdist workers, one per core and at most 4: most of a test's time is one ansible
# process on one core, and each worker starts its own registries, sshd and caches. PYTEST_WORKERS=0 runs
# them in this one process (pdb, -s). --dist loadgroup keeps the collection order that tests/conftest.py
# sets (slowest first) and runs the tests of one xdist_group on one worker.
PYTEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n > 4 ? 4 : n )))
pytest: system-deps venv collection sigstore-verifier
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# npm ci installs exactly the lock file's versions; again only when the lock file changes.
sigstore-verifier: $(SIGSTORE_VERIFIER)
$(SIGSTORE_VERIFIER): $(SIGSTORE_DIR)/package-lock.json | system-deps
	cd $(SIGSTORE_DIR) && npm ci --no-audit --no-fund
	@touch $@

# The unit tests import module_utils directly: they need the virtualenv and the collection link, nothing else.
unit: venv collection
	$(BIN)/pytest tests/unit

# mypy reads the collection through its link, so the plugins have the module names Ansible gives them.
lint: venv collection
	$(BIN)/python tools/check_layers.py
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --config-file mypy.ini $(COLLECTION_LINK)/plugins tests tools/check_layers.py tools/build_ee.py
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint

# ansible-test needs the collection under .../ansible_collections/ironcore/image: the script copies it there.
sanity: system-deps venv
	tools/sanity.sh $(BUILD) --python $$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')

REFERENCE := docs/reference
REFERENCE_CHECK := $(BUILD)/reference-check

docs-lint: venv collection
	$(BIN)/antsibull-docs lint-collection-docs --plugin-docs --validate-collection-refs dependent .
	$(BIN)/antsibull-changelog lint
	@rm -rf $(REFERENCE_CHECK)
	$(BIN)/python tools/module_reference.py ironcore.image $(REFERENCE_CHECK)
	@diff -ru $(REFERENCE) $(REFERENCE_CHECK) || { echo "$(REFERENCE) is out of date: run make docs and commit it" >&2; exit 1; }

docs: venv collection
	rm -rf $(REFERENCE)
	$(BIN)/python tools/module_reference.py ironcore.image $(REFERENCE)

galaxy: system-deps venv
	tools/galaxy.sh $(BUILD)

# Release notes: add a fragment under changelogs/fragments/ with each change; at release time
# (after bumping galaxy.yml's version) this folds them into changelogs/changelog.yaml and CHANGELOG.md.
changelog: venv collection
	$(BIN)/antsibull-changelog release

clean:
	rm -rf $(BUILD) $(VENV)

# Not part of `make test`: the defaults move gigabytes. BENCH_ARGS="--size-mib=64 --rounds=1" to try them small.
bench: system-deps venv collection
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

bench-build: system-deps venv collection
	$(BIN)/python bench/build.py $(BENCH_ARGS)

bench-push: system-deps venv collection
	$(BIN)/python bench/push.py $(BENCH_ARGS)

bench-fetch: system-deps venv collection
	$(BIN)/python bench/fetch.py $(BENCH_ARGS)

bench-delta: system-deps venv collection
	$(BIN)/python bench/delta.py $(BENCH_ARGS)

# BENCH_ARGS=--size-mib=4096 for the issue's figures (docs/delta.md); --size-mib=256 to try it.
bench-sparse: system-deps venv collection
	$(BIN)/python bench/sparse.py $(BENCH_ARGS)

# blake3 is only a candidate the benchmark measures, not a requirement of the modules: installed here.
bench-hash: venv
	$(BIN)/pip install -q blake3
	$(BIN)/python bench/block_hash.py $(BENCH_ARGS)

# BENCH_ARGS="--rounds=9" for more calls per module; table in .build/bench/startup.md (docs/performance.md).
bench-startup: system-deps venv collection
	$(BIN)/python bench/startup.py $(BENCH_ARGS)

bench-copy: system-deps venv collection
	$(BIN)/python bench/copy_image.py $(BENCH_ARGS)

# BENCH_ARGS="--sizes-mib=32,64 --size-mib=32 --nodes=1,4" to try it small.
bench-scale: system-deps venv collection
	$(BIN)/python bench/scale.py $(BENCH_ARGS)

# BENCH_ARGS="--size-mib=64 --nodes=1,8" to try it small; table in .build/bench/fleet.md.
bench-fleet: system-deps venv collection
	$(BIN)/python bench/fleet.py $(BENCH_ARGS)

# BENCH_ARGS="push --size-mib=64": one module call under cProfile, strace -c and py-spy (when installed).
bench-profile: system-deps venv collection
	$(BIN)/python bench/profile_module.py $(BENCH_ARGS)
