# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv when missing.
PY      := .venv/bin/python
SGTOOL  := .venv/bin/sgtool
STAMP   := .venv/.installed

.PHONY: install demo test test-fast lint docs bench clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned through the constraints file: the local CPU build, not gigabytes of CUDA.
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,cluster,docs]'
	# torchattacks is only a cross-check in the tests; its own deps would pull torchvision.
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(SGTOOL) sweep experiments.yaml --only demo
	$(SGTOOL) report --format html --out reports/demo

test: $(STAMP)
	$(PY) -m pytest

# The same suite without the groups that start processes, run clusters, retrain or fuzz.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not (processes or cluster or retrain or slow)"

lint: $(STAMP)
	$(PY) -m ruff check sgtool tests benchmarks

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

bench: $(STAMP)
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/mask_eval_speed.py
	$(PY) benchmarks/attack_speed.py
	$(PY) benchmarks/ts_speed.py
	$(PY) benchmarks/sweep_executors.py

clean:
	rm -rf .venv runs reports site .pytest_cache
