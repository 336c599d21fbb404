# sj-proxy: build, test, check. See README.md.
CARGO  ?= cargo
PYTHON ?= python3
PYTEST_TIMEOUT ?= 120

.PHONY: all test check bench demo clean

all:
	$(CARGO) build --locked --workspace

test:
	tests/setup.sh
	$(CARGO) build --locked --workspace
	$(CARGO) test --locked --workspace
	$(PYTHON) -m pytest -q --timeout=$(PYTEST_TIMEOUT) tests/

check:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@if ls man/* >/dev/null 2>&1; then \
		command -v mandoc >/dev/null 2>&1 || tests/setup.sh; \
		echo "mandoc -Tlint man/*"; mandoc -Tlint man/*; \
	fi

bench:
	$(CARGO) bench -p sj --bench framer

demo:
	tests/setup.sh
	$(CARGO) build --locked --workspace
	tests/demo.sh

clean:
	$(CARGO) clean
	rm -rf tests/.work
