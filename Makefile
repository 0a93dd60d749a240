# make test: everything CI runs. make unit: the unit tests alone (seconds, no root, no
# installs). make run: the mirror with config/archway.toml. make fuzz: every fuzz target
# for FUZZ_SECONDS each (nightly and cargo-fuzz, installed when missing).
.PHONY: test unit test-deps lint run bench fuzz

FUZZ_SECONDS ?= 60

# A CI run starts from a clean clone and builds once: incremental state (close to 2 GB) would
# only take disk.
ifeq ($(CI),true)
export CARGO_INCREMENTAL := 0
endif
FUZZ_TARGETS ?= reference range accept challenge manifest platform htpasswd config endpoint

test: test-deps lint
	cargo test --all-targets

unit:
	cargo test --lib

test-deps:
	./scripts/install-test-deps.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

run:
	cargo run --release -- serve --config config/archway.toml

# Starts from the committed seeds (fuzz/corpus/<target>/); new inputs that raise coverage go
# to fuzz/work/<target>/ (not committed). A crash stops the run and leaves its input in
# fuzz/artifacts/<target>/: fix it, then add that file to fuzz/corpus/<target>/, which
# `make test` replays.
fuzz:
	rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/work/$$t; \
		cargo +nightly fuzz run $$t fuzz/work/$$t fuzz/corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 || exit 1; \
	done

bench:
	./benches/load.sh
	./benches/cluster.sh
	./benches/soak.sh
