# sj-proxy: build, test, check. See README.md.
CARGO  ?= cargo
PYTHON ?= python3
PYTEST_TIMEOUT ?= 120

# Installation (make install / make uninstall). DESTDIR is for staging.
PREFIX    ?= /usr/local
BINDIR    ?= $(PREFIX)/bin
MANPREFIX ?= $(PREFIX)/share/man
INSTALL   ?= install
# Where cargo puts the release build (honours CARGO_TARGET_DIR).
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
# Every program of the project; install copies those that were built.
PROGS = sj-proxy sj-c2s sj-passwd messaged presenced presence iqd roster mirrord
VERSION = $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)

.PHONY: all test check bench demo clean release install uninstall

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
		echo "mandoc -Tlint -Wwarning man/*"; mandoc -Tlint -Wwarning man/*; \
	fi
	@for f in examples/sh/* examples/s6/*/run examples/s6/*/finish examples/s6/*/log/run; do \
		[ -f "$$f" ] || continue; sh -n "$$f" || exit 1; \
	done

# One run, one table (BENCHMARKS.md): the framer bench's rows, then sj-bench
# (pipeline, Prosody, memory, growth) against the release build.
bench:
	tests/setup.sh
	$(CARGO) build --release --locked --workspace
	@mkdir -p $(TARGET_DIR)/bench
	$(CARGO) bench --locked -p sj --bench framer > $(TARGET_DIR)/bench/framer.txt
	$(TARGET_DIR)/release/sj-bench -b $(TARGET_DIR)/release -f $(TARGET_DIR)/bench/framer.txt

demo:
	tests/setup.sh
	$(CARGO) build --locked --workspace
	tests/demo.sh

release:
	$(CARGO) build --release --locked --workspace

install: release
	$(INSTALL) -d -m 755 "$(DESTDIR)$(BINDIR)"
	@for p in $(PROGS); do \
		[ -x "$(TARGET_DIR)/release/$$p" ] || continue; \
		echo "$(INSTALL) -m 755 $(TARGET_DIR)/release/$$p $(DESTDIR)$(BINDIR)/$$p"; \
		$(INSTALL) -m 755 "$(TARGET_DIR)/release/$$p" "$(DESTDIR)$(BINDIR)/$$p" || exit 1; \
	done
	@for m in man/*.[178]; do \
		[ -f "$$m" ] || continue; \
		s=$${m##*.}; d="$(DESTDIR)$(MANPREFIX)/man$$s"; \
		$(INSTALL) -d -m 755 "$$d" || exit 1; \
		echo "sed 's/@VERSION@/$(VERSION)/' $$m > $$d/$${m##*/}"; \
		sed 's/@VERSION@/$(VERSION)/g' "$$m" > "$$d/$${m##*/}.tmp" && \
		chmod 644 "$$d/$${m##*/}.tmp" && mv -f "$$d/$${m##*/}.tmp" "$$d/$${m##*/}" || exit 1; \
	done

uninstall:
	@for p in $(PROGS); do \
		if [ -e "$(DESTDIR)$(BINDIR)/$$p" ]; then \
			echo "rm -f $(DESTDIR)$(BINDIR)/$$p"; rm -f "$(DESTDIR)$(BINDIR)/$$p"; fi; \
	done
	@for m in man/*.[178]; do \
		[ -f "$$m" ] || continue; \
		f="$(DESTDIR)$(MANPREFIX)/man$${m##*.}/$${m##*/}"; \
		if [ -e "$$f" ]; then echo "rm -f $$f"; rm -f "$$f"; fi; \
	done

clean:
	$(CARGO) clean
	rm -rf tests/.work
