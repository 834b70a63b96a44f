# One entry point for people and CI. Each target installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
BIN := $(VENV)/bin
BUILD := $(CURDIR)/.build
COLLECTIONS := $(BUILD)/collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/ironcore/image
DEMO_DIR ?= $(BUILD)/demo
# Execution environment for AWX: build context (offline) and image.
EE_CONTEXT ?= $(BUILD)/ee/context
EE_TAG ?= ironcore-image-ee:latest
CONTAINER_RUNTIME ?= podman

# Debian packages the tests drive for real: registry, OCI client, emulator, sshd, ...
APT_PACKAGES := docker-registry skopeo qemu-system-x86 qemu-utils openssh-server openssh-client \
	busybox-static apache2-utils e2fsprogs curl openssl cpio rsync libvirt-clients

export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH := false
export ANSIBLE_NOCOLOR := 1
# Modules run with the virtualenv that holds their Python dependencies.
export ANSIBLE_PYTHON_INTERPRETER := $(BIN)/python
export PATH := $(BIN):$(PATH)

.PHONY: help system-deps venv collection demo ee-context ee test clean bench-build bench-push

help:
	@echo "make demo   build a sample two-platform image into a local OCI layout and show it"
	@echo "make test   install everything and run every test"
	@echo "make ee     build the execution environment image for AWX (make ee-context: only its build context)"
	@echo "make bench-push  time a 1 GiB-rootfs push against skopeo (local TLS registry)"

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(BIN)/.installed: requirements.txt meta/requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

venv: $(BIN)/.installed

# Ansible and the unit tests find the collection through this link.
collection:
	@mkdir -p $(dir $(COLLECTION_LINK))
	@ln -sfn $(CURDIR) $(COLLECTION_LINK)

demo: system-deps venv collection
	$(BIN)/ansible-playbook -i localhost, -c local playbooks/demo.yml -e demo_dir=$(DEMO_DIR)
	@echo "--- skopeo inspect --raw oci:$(DEMO_DIR)/layout:demo.example.com/os/sample:1.0"
	@skopeo inspect --raw oci:$(DEMO_DIR)/layout:demo.example.com/os/sample:1.0 | $(BIN)/python -m json.tool

# The collection as a tarball of this checkout, then ansible-builder's context (no network needed).
ee-context: venv collection
	@rm -rf $(BUILD)/ee/collection
	$(BIN)/ansible-galaxy collection build --force --output-path $(BUILD)/ee/collection .
	cp $(BUILD)/ee/collection/ironcore-image-*.tar.gz $(BUILD)/ee/ironcore-image.tar.gz
	$(BIN)/ansible-builder create --file meta/execution-environment.yml --context $(EE_CONTEXT) \
		--output-filename Containerfile

ee: ee-context
	$(CONTAINER_RUNTIME) build --file $(EE_CONTEXT)/Containerfile --tag $(EE_TAG) $(EE_CONTEXT)

test: system-deps venv collection
	$(BIN)/pytest

# Not part of `make test`: moves gigabytes. BENCH_ARGS=--size-mib=N for another size.
bench-push: system-deps venv collection
	$(BIN)/python bench/push_vs_skopeo.py $(BENCH_ARGS)

clean:
	rm -rf $(BUILD) $(VENV)

bench-build: system-deps venv collection
	$(BIN)/python bench/build_vs_cp.py
