# pg_realtime — `make run` for a local stack, `make test` for every test tier, `make bench`.
# Every target installs what it is missing first, and is quick when everything is there.

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PGTEST_DATA ?= /tmp/pg_realtime-pgtest
SIDECAR := target/release/pg-realtime-sidecar

.PHONY: run test test-unit test-pg test-sql test-integration bench deps node install sidecar

run: install sidecar
	bash scripts/run.sh

test: test-unit test-pg test-sql test-integration

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

# Tier 0: the sidecar's unit tests (codec, auth, …).
test-unit:
	cargo test -p pg-realtime-sidecar

# Tier 1: #[pg_test] inside PostgreSQL (pgrx runs its own cluster as the postgres user).
test-pg: deps
	install -d -o postgres -g postgres $(PGTEST_DATA)
	cd extension && cargo pgrx test pg15 --runas postgres --pgdata $(PGTEST_DATA)

# Tier 2: pg_regress and isolation specs for the SQL surface.
test-sql: install
	bash scripts/test-sql.sh

# Tier 3: real PostgreSQL + the real sidecar + the unmodified realtime-js client.
test-integration: install sidecar node
	bash scripts/test-integration.sh

bench: install sidecar
	bash scripts/bench.sh
