# The README's two commands: `make demo` and `make test`. Each does all of its own set-up.
PY      := .venv/bin/python
STAMP   := .venv/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export OMP_NUM_THREADS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test setup lint lock clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q "pip==26.3"
	# Exact versions from the lock (torch 2.14.1 / torchvision 0.29.1 among them: the machine's pip constraint
	# caps them, and torchvision and open_clip need that CUDA build; see shared ENVIRONMENT notes). The project
	# itself goes in without dependencies and without build isolation, so the locked setuptools builds it.
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	.venv/bin/mmpo demo

test: $(STAMP)
	$(PY) -m pytest -q -x --durations=15

lock: $(STAMP)  # refresh requirements.lock after changing pyproject.toml's dependencies
	$(PY) tools/lock.py

lint: $(STAMP)
	.venv/bin/ruff check .

clean:
	rm -rf .venv runs outputs .pytest_cache
