# make test: everything CI runs. make unit: the unit tests alone (seconds, no root, no
# installs). make run: the mirror with config/archway.toml.
.PHONY: test unit test-deps lint run bench

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

bench:
	./benches/load.sh
	./benches/cluster.sh
