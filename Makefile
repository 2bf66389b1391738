# The README's two commands are `make demo` and `make test`; everything else is a step.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install demo test check lint docs stack-up stack-down bench chaos soak

# Python deps, pinned by constraints.txt (regenerate: uv pip compile pyproject.toml --extra dev -o constraints.txt)
$(BIN)/relaybus: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as on these machines) every
	# process would otherwise compile its imports from source (~1.5 s per CLI call).
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt -e ".[dev]"
	touch $@

install: $(BIN)/relaybus

stack-up: install
	$(BIN)/relaybus stack up

stack-down: install
	$(BIN)/relaybus stack down

# Main job: the real stack, migrations, events through Kafka and RabbitMQ, a report.
demo: install
	$(BIN)/relaybus stack up
	$(BIN)/relaybus shop-db upgrade
	$(BIN)/relaybus demo --burst 30

# Every test, against the real services (started here if they are not running), in
# runs side by side (tests/phases.py: integration then e2e on this stack, the faults on
# a stack of their own, the 3-node cluster's tests, the unit tests); a table of times last.
test: install
	$(BIN)/relaybus stack up
	$(BIN)/relaybus shop-db upgrade
	@# Our own modules' bytecode too (the tests start hundreds of relaybus processes).
	$(BIN)/python -m compileall -q relaybus tests bench examples > /dev/null
	$(BIN)/python -m tests.phases

# The fault matrix at full size (~25 min: the last run's scenarios took 19 min, plus S5's
# three cluster faults): rewrites its table in docs/guarantees.md.
chaos: install
	$(BIN)/relaybus stack up --kafka-nodes 3
	$(BIN)/relaybus shop-db upgrade
	$(BIN)/python -m tests.chaos.matrix

# 10 minutes at 70 % of the measured max rate, a relay or worker killed every minute;
# RSS, open files and backlog sampled, growth reported (not in CI).
soak: stack-up
	$(BIN)/relaybus shop-db upgrade
	$(BIN)/python -m tests.chaos.soak

# The fast tier: lint, types, import contracts and every test that needs no service
# (tests/unit, the CLI in-process), under two minutes; iterate with this, then `make test`.
check: lint
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

# docs/configuration.md from the settings classes (a unit test fails when it is stale).
docs: install
	$(BIN)/python -m relaybus.cli.configuration > docs/configuration.md
	$(BIN)/python -m relaybus.shop.system > docs/asyncapi.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
