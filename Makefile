# Task runner: each target runs exactly what CI runs for it.
.PHONY: test setup lint fmt build demo bench-deps

## test: install what is missing (Redis, the hls4ml and S3-server venvs), lint, run every test
test:
	bash .ci/test

## setup: install what is missing, idempotently; then `source ~/.local/share/hlsfarm/env`
setup:
	bash .ci/setup

## lint: the formatting and clippy checks CI runs
lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

## fmt: format the code
fmt:
	cargo fmt --all

## build: build the hlsfarm binary (target/release/hlsfarm)
build:
	cargo build --release --locked -p hlsfarm-coordinator

## bench-deps: s3s-fs, the Rust S3 server `hlsfarm bench store` measures beside moto (from
## crates.io, a few minutes' build the first time; not needed by the tests)
bench-deps:
	cargo install s3s-fs --version 0.14.1 --features binary --locked --root "$${HLSFARM_HOME:-$$HOME/.local/share/hlsfarm}/s3s-fs"

## demo: install what is missing, then run the example sweep on this host (examples/trials)
demo:
	bash .ci/setup --formats keras --without-browser
	cargo build --locked -p hlsfarm-coordinator
	target/debug/hlsfarm run --input-dir examples/trials --num-workers 2
