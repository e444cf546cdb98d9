# pg_realtime — `make run` for a local stack, `make test` for every test tier, `make bench`.
# Every target installs what it is missing first, and is quick when everything is there.
# No target writes over a file a running server has mapped: `make install` installs by rename,
# and pgrx's in-place installs go to a private copy of PostgreSQL (scripts/pg-private.sh).

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
SIDECAR := target/release/pg-realtime-sidecar

.PHONY: run test lint test-unit test-pg test-sql test-fuzz test-integration bench fuzz deps node \
	install sidecar

run: install sidecar
	bash scripts/run.sh

# Lint first: an unformatted or clippy-unclean tree fails before the long tiers. The integration
# tier runs last, so node's test summary closes the output; a failing tier stops the run and
# make's last line names it.
test: lint test-unit test-pg test-sql test-fuzz test-integration
	@echo "make test: all tiers passed (lint, unit, pg, sql, fuzz, integration)"

deps:
	bash scripts/install-deps.sh

node:
	bash scripts/install-node.sh >/dev/null

# Builds the release extension and installs it into Debian's PostgreSQL 15 directories (by
# rename, so running clusters keep the library they loaded).
install: deps
	cd extension && cargo pgrx package --pg-config $(PG_CONFIG)
	bash scripts/install-ext.sh

sidecar:
	cargo build --release -p pg-realtime-sidecar

# rustfmt --check and clippy -D warnings for every crate (scripts/lint.sh).
lint: deps
	bash scripts/lint.sh

# Tier 0: the sidecar's and the load generator's unit tests (codec, auth, …).
test-unit:
	cargo test -p pg-realtime-sidecar -p pg-realtime-bench

# Tier 1: #[pg_test] inside PostgreSQL (pgrx runs its own cluster as the postgres user, from a
# private copy of the installation), run while a cluster like `make run`'s is up on the installed
# extension, followed by `make install`; that cluster must come through both untouched.
test-pg: install
	bash scripts/test-coexist.sh

# Tier 2: pg_regress and isolation specs for the SQL surface.
test-sql: install
	bash scripts/test-sql.sh

# Tier 3: a bounded fuzz/property run of the frame codecs, the filter parser and JWT handling.
test-fuzz:
	bash scripts/fuzz.sh quick

# Tier 4: real PostgreSQL + the real sidecar + the unmodified realtime-js client, including the
# adversarial suite (tests/security).
test-integration: install sidecar node
	bash scripts/test-integration.sh

# The long fuzz run.
fuzz:
	bash scripts/fuzz.sh long

bench: install sidecar
	bash scripts/bench.sh
