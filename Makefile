# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test setup lint db-up db-stop clean

setup: $(STAMP)

# torch first, from its CPU wheel: any other route resolves to a multi-GB CUDA build.
# unstructured-inference and timm go in without their declared deps (CUDA torch + torchvision);
# the offline PDF text-layer path needs neither. torchvision, if anything pulled it, breaks transformers.
$(STAMP): pyproject.toml constraints.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	-$(BIN)/pip uninstall -y -q torchvision 2>/dev/null
	touch $(STAMP)

db-up: setup
	$(BIN)/sluice db up

db-stop:
	-$(BIN)/sluice db stop

demo: setup
	$(BIN)/sluice demo
	$(BIN)/sluice eval-demo
	$(BIN)/sluice demo-api --detach

test: setup
	scripts/ensure-redis.sh
	scripts/ensure-rabbitmq.sh
	scripts/ensure-netns.sh
	scripts/ensure-chromium.sh
	$(BIN)/sluice db up
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean: db-stop
	rm -rf .sluice
