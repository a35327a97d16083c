# The two commands of the README:  `make train`  and  `make test`.
PYTHON ?= python3
BACKENDS ?= jax tensorflow torch
PYTEST_ARGS ?=

.PHONY: install test train summary

# torch first, pinned to the CPU build, so the torch extra's torch>=... range is already satisfied
# (an unpinned torch pulls a several-GB CUDA build). A machine that has a torch keeps it.
# Then the package, editable, with every backend and what the recipes use ([all]) and pytest ([dev]).
# Fashion-MNIST (the shipped fmnist weights are checked against its test set) comes from the
# Debian package dataset-fashion-mnist when the machine has apt-get and the folder is missing.
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist

install:
	@[ -d $(FMNIST_DIR) ] || ! command -v apt-get >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || \
	  echo "warning: could not install dataset-fashion-mnist; tests that need Fashion-MNIST will fail"
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[all,dev]"

test: install
	@set -e; for b in $(BACKENDS); do \
	  echo "=== tests on KERAS_BACKEND=$$b"; \
	  KERAS_BACKEND=$$b $(PYTHON) -m pytest -q -n 2 --dist worksteal -p no:cacheprovider tests $(PYTEST_ARGS); \
	done

# The main job: ResNet-20 with a sparse skip, DropPathFreeze, on the embedded 8x8 digits.
train: install
	KERAS_BACKEND=$${KERAS_BACKEND:-jax} $(PYTHON) -m recipes.train train --config recipes/configs/default.json --out runs/default

summary: install
	@set -e; for b in $(BACKENDS); do KERAS_BACKEND=$$b $(PYTHON) -m recipes.summary resnet56_cifar; done
