# normbook: the two commands are `make report` (everything, from nothing) and `make test`.
PY      ?= python3
NORMS   ?= bn gn ln
SEEDS   ?= 1 2
DATA    ?= data
# An offline copy of CIFAR-10 as an ImageFolder tarball; used when present, else torchvision downloads.
CIFAR_TARBALL ?= ../shared/data/cifar10-jpeg.tar.gz
PAPERMILL = $(PY) -m papermill --log-output --no-progress-bar

.PHONY: report setup data run runs seeds sweeps tune tune-gpu cluster robustness analysis book readme test browser bench clean


## The whole report from nothing: install, data, three training runs, analysis, README, site.
report: setup data runs robustness analysis readme book

setup:
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

data:
	@if [ -d $(DATA)/train ] || [ -f $(DATA)/cifar-10-batches-py/data_batch_1 ]; then echo "data: $(DATA) is ready"; \
	elif [ -f $(CIFAR_TARBALL) ]; then mkdir -p $(DATA) && tar xzf $(CIFAR_TARBALL) -C $(DATA) --strip-components=1 && echo "data: unpacked $(CIFAR_TARBALL)"; \
	else echo "data: no local copy; the first run downloads CIFAR-10 through torchvision"; fi

## One training run by hand, the safe way: `make run NORM=bn` (SEED=0, ARGS="-p epochs 1 -p subset 640").
## The executed notebook goes beside the artifacts: book/runs/<norm>.ipynb for seed 0, runs/<norm>-s<seed>/
## for other seeds (as make seeds does), runs/scratch/ for a run with other ARGS.
## Papermill writes to a hidden file, renamed only on success, so a failed run keeps the old notebook;
## a run not trained like the reported ones (fewer epochs, a subset) writes under runs/scratch/.
NORM ?= bn
SEED ?= 0
ARGS ?=
run:
	@mkdir -p book/runs runs/scratch
	@nb=$$( [ -n "$(ARGS)" ] && echo runs/scratch/$(NORM)-s$(SEED).ipynb || \
	       ( [ "$(SEED)" = 0 ] && echo book/runs/$(NORM).ipynb || echo runs/$(NORM)-s$(SEED)/notebook.ipynb ) ); \
	  mkdir -p $$(dirname $$nb); \
	  tmp=$$(dirname $$nb)/.$$(basename $$nb .ipynb).partial.ipynb; \
	  $(PAPERMILL) book/train.ipynb $$tmp -p norm $(NORM) -p seed $(SEED) -p data_dir $(DATA) $(ARGS) \
	    && $(PY) publish.py tidy $$tmp \
	    && mv $$tmp $$nb && echo "run: wrote $$nb"

## The three reported runs (seed 0): book/runs/<norm>.ipynb and runs/<norm>-s0/.
runs:
	@for n in $(NORMS); do $(MAKE) --no-print-directory run NORM=$$n SEED=0 || exit 1; done

## Experiments are plans, runs/<folder>/plan.json; experiments.py trains only what a plan's folder lacks.
## The batch-size and group-count sweeps of the experiments chapter, in the reported recipe (the earlier
## recipe's runs/batch-size and runs/group-count are read until these are complete), and the control for
## Muon's learning-rate rule at small batches. A plan this machine cannot train (one pinned to bf16 on a CPU
## without it) is named and left; the others train, and the exit status says something was left.
sweeps:
	$(PY) experiments.py run runs/batch-size-muon runs/group-count-muon runs/muon-lr-rule --data $(DATA)

## The experiments meant for the CPU (sweeps, lever screen, the ceiling), then those for a CUDA GPU. With RAY=local
## (a Ray cluster on this machine) or RAY=<address> (an existing cluster), every run is a Ray task: see the README.
RAY ?=
RAY_ARGS = $(if $(RAY),--ray $(RAY) $(if $(CPUS_PER_RUN),--cpus-per-run $(CPUS_PER_RUN)) $(if $(GPUS_PER_RUN),--gpus-per-run $(GPUS_PER_RUN)))
tune:
	$(PY) experiments.py device cpu --data $(DATA) $(RAY_ARGS)
tune-gpu:
	$(PY) experiments.py device cuda --data $(DATA) $(RAY_ARGS)

## Ray, for running plans on several machines (an optional extra; the tests use it).
cluster:
	$(PY) -m pip install -q --no-build-isolation -e ".[cluster]"

## Extra seeds for error bars; their executed notebooks stay beside their artifacts.
seeds:
	@for s in $(SEEDS); do for n in $(NORMS); do $(MAKE) --no-print-directory run NORM=$$n SEED=$$s || exit 1; done; done

## The chapters computed from run artifacts (tables, figures, glued numbers).
CHAPTERS = intro theory architecture results experiments why tuning performance reproducibility
analysis:
	@$(PY) publish.py colab
	@for c in $(CHAPTERS); do \
	  $(PAPERMILL) --cwd book book/$$c.ipynb book/.$$c.partial.ipynb $(if $(filter-out data,$(DATA)),-p data_dir $(DATA)) \
	    && mv book/.$$c.partial.ipynb book/$$c.ipynb || exit 1; done

readme:
	$(PY) publish.py readme

## The evaluations of the "why they differ" chapter (shifted inputs, batch companions) of every saved run.
robustness:
	$(PY) robustness.py --data $(DATA)

## Warnings are errors (a missing glued number, a broken reference), as in the tests.
book:
	jupyter-book build book/ -W -n --keep-going

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test: setup browser cluster
	$(PY) -m pytest -q tests

## Debian's chromium and chromedriver, for the browser test.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver)

bench:
	$(PY) bench/throughput.py

clean:
	rm -rf _build book/_build

# Make variables reach the shell: anything but the values they may take is refused here, in one line,
# before a folder is made or a command run.
nodigits = $(subst 9,,$(subst 8,,$(subst 7,,$(subst 6,,$(subst 5,,$(subst 4,,$(subst 3,,$(subst 2,,$(subst 1,,$(subst 0,,$1))))))))))
unsafe = $(strip $(foreach c,; & | $$ ` ' " < > ( ) * ? [ ] { } ~ ! \ \#,$(findstring $c,$1)))
$(if $(filter-out bn gn ln,$(NORM) $(NORMS))$(filter-out 1,$(words $(NORM))),$(error NORM and NORMS take bn, gn or ln, not '$(NORM)' / '$(NORMS)'))
spaced = $(subst 9,9 ,$(subst 8,8 ,$(subst 7,7 ,$(subst 6,6 ,$(subst 5,5 ,$(subst 4,4 ,$(subst 3,3 ,$(subst 2,2 ,$(subst 1,1 ,$(subst 0,0 ,$1))))))))))
$(foreach s,$(SEED) $(SEEDS),$(if $(call nodigits,$s)$(word 19,$(call spaced,$s)),$(error SEED and SEEDS take whole numbers below 10^18, not '$s')))
$(if $(filter-out 1,$(words $(SEED))),$(error SEED takes one whole number, not '$(SEED)'))
$(if $(call unsafe,$(DATA) $(ARGS) $(RAY) $(CPUS_PER_RUN) $(GPUS_PER_RUN))$(filter-out 1,$(words $(DATA))),$(error DATA, ARGS, RAY and the per-run counts take plain words and paths (no shell characters or spaces in DATA)))
