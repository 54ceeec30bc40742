# The README's two commands: `make demo` and `make test`. Each does all of its own set-up.
PY      := .venv/bin/python
STAMP   := .venv/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export OMP_NUM_THREADS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test setup lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision first and pinned: the machine's pip constraint caps them, and the CUDA build is
	# what torchvision and open_clip need (see shared ENVIRONMENT notes).
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	.venv/bin/mmpo demo

test: $(STAMP)
	$(PY) -m pytest -q -x --durations=15

lint: $(STAMP)
	.venv/bin/ruff check .

clean:
	rm -rf .venv runs outputs .pytest_cache
