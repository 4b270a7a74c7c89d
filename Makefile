# normbook: the two commands are `make report` (everything, from nothing) and `make test`.
PY      ?= python3
NORMS   ?= bn gn ln
SEEDS   ?= 1 2
DATA    ?= data
# An offline copy of CIFAR-10 as an ImageFolder tarball; used when present, else torchvision downloads.
CIFAR_TARBALL ?= ../shared/data/cifar10-jpeg.tar.gz
PAPERMILL = $(PY) -m papermill --log-output --no-progress-bar

.PHONY: report setup data runs seeds sweeps tune tune-gpu analysis book readme test browser bench clean

## The whole report from nothing: install, data, three training runs, analysis, README, site.
report: setup data runs analysis readme book

setup:
	$(PY) -m pip install -q -r requirements.txt

data:
	@if [ -d $(DATA)/train ] || [ -f $(DATA)/cifar-10-batches-py/data_batch_1 ]; then echo "data: $(DATA) is ready"; \
	elif [ -f $(CIFAR_TARBALL) ]; then mkdir -p $(DATA) && tar xzf $(CIFAR_TARBALL) -C $(DATA) --strip-components=1 && echo "data: unpacked $(CIFAR_TARBALL)"; \
	else echo "data: no local copy; the first run downloads CIFAR-10 through torchvision"; fi

## One papermill run per norm, seed 0: book/runs/<norm>.ipynb and runs/<norm>-s0/.
## Papermill writes to a hidden file, renamed only on success, so a failed run keeps the old notebook.
runs:
	@mkdir -p book/runs
	@for n in $(NORMS); do \
	  $(PAPERMILL) book/train.ipynb book/runs/.$$n.partial.ipynb -p norm $$n -p seed 0 -p data_dir $(DATA) \
	    -p out_dir runs/$$n-s0 && mv book/runs/.$$n.partial.ipynb book/runs/$$n.ipynb || exit 1; \
	done

## The batch-size and group-count sweeps of the experiments chapter (resumable: done points are kept).
sweeps:
	$(PY) -c 'import lib; lib.run_sweep("groups", seeds=(0, 1), data_dir="$(DATA)"); lib.run_sweep("batch", seeds=(0, 1), data_dir="$(DATA)")'

## Recipe variants on the validation split (resumable), for the tuning appendix: the rounds of
## lib.ROUNDS that run on the CPU (0 and 3).
tune:
	$(PY) -c 'import lib; lib.run_rounds("cpu", data_dir="$(DATA)")'

## The rounds of lib.ROUNDS that run on a CUDA GPU (the activation, then the levers left): runs/tune-gpu*/.
tune-gpu:
	$(PY) -c 'import lib; lib.run_rounds("cuda", data_dir="$(DATA)")'

## Extra seeds for error bars; their executed notebooks stay beside their artifacts.
seeds:
	@for s in $(SEEDS); do for n in $(NORMS); do \
	  $(PAPERMILL) book/train.ipynb runs/.$$n-s$$s.partial.ipynb -p norm $$n -p seed $$s -p data_dir $(DATA) \
	    -p out_dir runs/$$n-s$$s && mv runs/.$$n-s$$s.partial.ipynb runs/$$n-s$$s/notebook.ipynb || exit 1; \
	done; done

## The chapters computed from run artifacts (tables, figures, glued numbers).
CHAPTERS = intro theory architecture results experiments tuning performance reproducibility
analysis:
	@for c in $(CHAPTERS); do \
	  $(PAPERMILL) --cwd book book/$$c.ipynb book/.$$c.partial.ipynb $(if $(filter-out data,$(DATA)),-p data_dir $(DATA)) \
	    && mv book/.$$c.partial.ipynb book/$$c.ipynb || exit 1; done

readme:
	$(PY) -c 'import lib; lib.update_readme()'

book:
	jupyter-book build book/

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test: setup browser
	$(PY) -m pytest -q tests

## Debian's chromium and chromedriver, for the browser test.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver)

bench:
	$(PY) bench/throughput.py

clean:
	rm -rf book/_build
