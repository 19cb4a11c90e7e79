# tandem: build, test and try it. Written for GNU make, run as root on a
# fresh Debian 12 with Go in /usr/local/go:
#
#   make demo    build tandem and run the demo (installs what it needs)
#   make test    install the test peers, then go test -race ./...
#
# Other targets: deps build bench lint fuzz clean (see `make help`).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

# Go lives in /usr/local/go on the target machines, often not on PATH.
export PATH := $(PATH):/usr/local/go/bin
GO ?= go

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

TEST_TIMEOUT  ?= 30m
FUZZTIME      ?= 30s
# Empty FUZZ_TARGETS fuzzes every Fuzz* function in FUZZ_PKGS.
FUZZ_PKGS     ?= ./nbd/ ./vip/
FUZZ_TARGETS  ?=
STATICCHECK   ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

# command:Debian package. `deps` installs a package only when its command is
# missing, so a prepared machine never touches apt. gcc is here because
# -race needs cgo. nbdsh is a script in python3-libnbd, which also needs the
# python module checked below.
DEPS := nbdinfo:libnbd-bin nbdcopy:libnbd-bin nbdfuse:libnbd-bin \
	nbdsh:python3-libnbd nbdkit:nbdkit qemu-img:qemu-utils qemu-io:qemu-utils \
	fio:fio fusermount3:fuse3 mkfs.ext4:e2fsprogs e2fsck:e2fsprogs \
	lsblk:util-linux mountpoint:util-linux losetup:mount mount:mount \
	umount:mount sha256sum:coreutils strace:strace ip:iproute2 gcc:gcc \
	ipmi_sim:openipmi ipmitool:ipmitool fence_ipmilan:fence-agents jq:jq \
	nft:nftables timeout:coreutils

.PHONY: help deps build test bench demo lint fuzz clean check-go

help:
	@echo "make deps   install missing Debian packages (libnbd-bin python3-libnbd nbdkit qemu-utils fio fuse3 strace ...)"
	@echo "make build  static binary at bin/tandem"
	@echo "make test   deps + go test -race ./... (CI=true turns skips for missing tools into failures)"
	@echo "make demo   deps + build + tools/demo/demo.sh"
	@echo "make bench  go run ./tools/bench"
	@echo "make lint   gofmt, go vet, staticcheck"
	@echo "make fuzz   $(FUZZTIME) per fuzz target in $(FUZZ_PKGS) (FUZZTIME=, FUZZ_TARGETS= to change)"
	@echo "make clean  remove bin/"

check-go:
	@command -v $(GO) >/dev/null || { echo "make: Go not found on PATH or in /usr/local/go/bin; install Go 1.26+ from https://go.dev/dl/" >&2; exit 1; }

deps:
	@missing=(); \
	for pair in $(DEPS); do \
		cmd=$${pair%%:*}; pkg=$${pair#*:}; \
		command -v "$$cmd" >/dev/null 2>&1 || missing+=("$$pkg"); \
	done; \
	[ -e /usr/include/stdio.h ] || missing+=(libc6-dev); \
	/usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || missing+=(python3-libnbd); \
	if [ $${#missing[@]} -eq 0 ]; then echo "deps: all present"; exit 0; fi; \
	pkgs=$$(printf '%s\n' "$${missing[@]}" | sort -u | tr '\n' ' '); \
	if [ "$$(id -u)" -ne 0 ]; then echo "deps: missing packages: $$pkgs; run make deps as root" >&2; exit 1; fi; \
	echo "deps: installing $$pkgs"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update; \
	apt-get install -y $$pkgs

build: check-go
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/tandem ./cmd/tandem
	@echo "built bin/tandem $(VERSION)"

# go test prints its usual ok/FAIL lines per package; -v would bury them.
# The lab and the demo run after everything else, one package at a time:
# processes they start through `ip netns exec` get a copy of the machine's
# mount table, which keeps another test's FUSE mount busy (fusermount3 -u
# fails with EBUSY) while they run.
SERIAL_PKGS := ./tools/lab/ ./tools/demo/

test: deps check-go
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v -e '/tools/lab$$' -e '/tools/demo$$')
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -p 1 $(SERIAL_PKGS)

bench: check-go
	$(GO) run ./tools/bench

demo: deps build
	tools/demo/demo.sh

lint: check-go
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "gofmt -l: not formatted:" >&2; echo "$$unformatted" >&2; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

fuzz: check-go
	@for pkg in $(FUZZ_PKGS); do \
		targets="$(FUZZ_TARGETS)"; \
		[ -n "$$targets" ] || targets=$$($(GO) test -list '^Fuzz' "$$pkg" | grep '^Fuzz' || true); \
		[ -n "$$targets" ] || { echo "fuzz: no Fuzz targets in $$pkg" >&2; exit 1; }; \
		for f in $$targets; do \
			echo "fuzz: $$pkg $$f for $(FUZZTIME)"; \
			$(GO) test -run=NONE -fuzz="^$$f\$$" -fuzztime=$(FUZZTIME) "$$pkg"; \
		done; \
	done

clean:
	rm -rf bin/
