# The two commands of the README. Both set up .venv first (keeping an importable torch).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup setup-dev demo test clean

setup:
	./scripts/setup.sh

setup-dev:
	./scripts/setup.sh dev

# The main job on a small default: CLIP ViT-B/16 with half the visual tokens pruned, then the
# projector comparison, on whatever device is present (cuda when available).
demo: setup
	$(BIN)/effprof run clip-vtp --keep 0.5 --batch 1 --min-time 0.5
	$(BIN)/effprof compare projectors --batch 1 --min-time 0.3

test: setup-dev
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
