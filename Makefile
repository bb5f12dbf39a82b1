# fleetcast: `make demo` shows it working, `make test` proves it. Both set everything up first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := ntfs-3g partclone fdisk dosfstools mtools qemu-utils libhivex-bin python3-hivex \
	python3-venv dnsmasq-base udpcast e2fsprogs postgresql nftables iproute2 attr xz-utils util-linux \
	fuse3 kmod xfsprogs btrfs-progs parted zstd cpio mmdebstrap qemu-system-x86 ovmf ipxe \
	shim-signed grub-efi-amd64-signed grub-pc-bin grub-efi-amd64-bin grub-common xorriso chromium
STAMP := $(VENV)/.setup-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: setup test lint typecheck unit demo demo-netns demo-image bench clean format

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.setup-*; touch $@
	@echo "setup: done ($(VENV)/bin/fleetcast)"

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: setup
	$(VENV)/bin/mypy --strict src/fleetcast

format: setup
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

test: setup lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS) tests

unit: setup
	$(VENV)/bin/pytest tests/unit

# The virtual lab: QEMU machines with blank disks network-boot from fleetcast (full DHCP on a bridge in
# a network namespace), get the golden Debian image with names LAB-01.. and static IPs, and restart
# into it. The boot environment and the golden image are built when missing (cached by input hash).
demo: setup
	$(VENV)/bin/fleetcast lab demo --clients 3 --firmware mixed

# Server + agents in network namespaces, loop-device disks, a real captured image deployed with names
# and static IPs. `make demo-image` shows capture/restore alone.
demo-netns: setup
	$(PY) -m fleetcast.lab.deploy_demo

demo-image: setup
	$(PY) -m fleetcast.lab.demo

bench: setup
	$(PY) bench/image_engine.py
	$(PY) bench/fsmap.py
	$(PY) bench/unicast.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
