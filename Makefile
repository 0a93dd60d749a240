# make test: everything CI runs. make run: the mirror with config/archway.toml.
.PHONY: test test-deps lint run bench

test: test-deps lint
	cargo test --all-targets

test-deps:
	./scripts/install-test-deps.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

run:
	cargo run --release -- serve --config config/archway.toml

bench:
	./benches/load.sh
