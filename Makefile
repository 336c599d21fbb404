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
PROGS = sj-proxy sj-log sj-c2s sj-passwd messaged presenced presence iqd roster mirrord
VERSION = $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)

.PHONY: all test check bench demo clean release install uninstall fuzz fuzz-tool fuzz-replay fuzz-cmin

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

# Fuzzing (fuzz/README.md): cargo-fuzz on stable Rust through RUSTC_BOOTSTRAP.
# `make fuzz` runs each target for FUZZ_SECONDS, one after the other, one
# process each (a shared 2-core machine), new inputs kept in FUZZ_WORK.
FUZZ_TARGETS   ?= framer_chunks framer_diff jid_path sasl_server
FUZZ_SECONDS   ?= 45
FUZZ_SANITIZER ?= none
FUZZ_WORK      ?= fuzz/work
FUZZ           = RUSTC_BOOTSTRAP=1 $(CARGO) fuzz
FUZZ_BUILD     = --fuzz-dir fuzz --sanitizer $(FUZZ_SANITIZER) --debug-assertions

fuzz-tool:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz

fuzz: fuzz-tool
	@summary=""; for t in $(FUZZ_TARGETS); do \
		mkdir -p "$(FUZZ_WORK)/$$t" "fuzz/corpus/$$t" || exit 1; \
		log="$(FUZZ_WORK)/$$t.log"; \
		echo "$(FUZZ) run $(FUZZ_BUILD) $$t $(FUZZ_WORK)/$$t fuzz/corpus/$$t fuzz/seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -timeout=10 > $$log"; \
		$(FUZZ) run $(FUZZ_BUILD) $$t "$(FUZZ_WORK)/$$t" "fuzz/corpus/$$t" "fuzz/seeds/$$t" -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 > "$$log" 2>&1 \
			|| { tail -n 40 "$$log"; echo "make fuzz: $$t failed; the input is in fuzz/artifacts/$$t (log: $$log)"; exit 1; }; \
		runs=$$(sed -n 's/^stat::number_of_executed_units: *//p' "$$log"); \
		cov=$$(grep -E '^#[0-9]+.*DONE' "$$log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+'); \
		summary="$$summary  $$t: $$runs executions, $$cov\n"; \
	done; printf "fuzz: executions and coverage per target ($(FUZZ_SECONDS) s each)\n$$summary"

# Every committed input once: a quick regression check.
fuzz-replay: fuzz-tool
	@for t in $(FUZZ_TARGETS); do \
		echo "$(FUZZ) run $(FUZZ_BUILD) $$t fuzz/corpus/$$t fuzz/seeds/$$t -- -runs=0"; \
		$(FUZZ) run $(FUZZ_BUILD) $$t "fuzz/corpus/$$t" "fuzz/seeds/$$t" -- -runs=0 \
			> "$${TMPDIR:-/tmp}/sj-fuzz-replay.log" 2>&1 \
			|| { tail -n 40 "$${TMPDIR:-/tmp}/sj-fuzz-replay.log"; exit 1; }; \
	done

# Fold what `make fuzz` found into the committed, minimised corpus.
fuzz-cmin: fuzz-tool
	@for t in $(FUZZ_TARGETS); do \
		rm -rf "fuzz/corpus/$$t.new" && mkdir -p "fuzz/corpus/$$t.new" "fuzz/corpus/$$t" "$(FUZZ_WORK)/$$t" || exit 1; \
		echo "$(FUZZ) run $(FUZZ_BUILD) $$t fuzz/corpus/$$t.new fuzz/corpus/$$t $(FUZZ_WORK)/$$t -- -merge=1"; \
		$(FUZZ) run $(FUZZ_BUILD) $$t "fuzz/corpus/$$t.new" "fuzz/corpus/$$t" "$(FUZZ_WORK)/$$t" -- -merge=1 \
			> "$(FUZZ_WORK)/$$t.cmin.log" 2>&1 || { tail -n 20 "$(FUZZ_WORK)/$$t.cmin.log"; exit 1; }; \
		rm -rf "fuzz/corpus/$$t" && mv "fuzz/corpus/$$t.new" "fuzz/corpus/$$t" || exit 1; \
		echo "fuzz/corpus/$$t: $$(ls "fuzz/corpus/$$t" | wc -l) inputs, $$(du -sh "fuzz/corpus/$$t" | cut -f1)"; \
	done

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
	rm -rf tests/.work fuzz/target fuzz/work fuzz/artifacts
