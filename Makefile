# make demo  — installs into .venv and runs the default job end to end (embedded prior, CPU is fine);
#              REFINE=1 adds the mesh refinement stages (coarse → geometry → texture)
# make test  — installs into .venv and runs the tests
# make bench — speed table (bench/speed.py); make bench-quality — the ground-truth guidance benchmark (--quick)
# make web  — installs the run pages' 3D viewer (@google/model-viewer) from the npm registry into web/
# make blender — Debian's Blender, which the asset test and bench/view_asset.py --viewer blender open the GLB in
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
REPR ?= nerf
METHOD ?= sds
PROMPT ?= a red ball on a blue box
DEMO_CONFIG ?= configs/$(METHOD)-$(REPR).yaml
# REFINE=1: the coarse run, then the geometry and texture refinement stages converted from it
REFINE ?= 0
REFINE_CONFIGS ?= configs/refine-geometry.yaml configs/refine-texture.yaml

MODEL_VIEWER := web/node_modules/@google/model-viewer/dist/model-viewer-umd.min.js

.PHONY: install kernels web chromium blender demo test bench bench-quality clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.py
	@# torch first, pinned, so that no newer CUDA build is pulled in as a dependency
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP) kernels

# the compiled CPU kernels, built once into the torch extensions cache (a no-op once built; without
# a compiler it says so and everything runs on the torch path)
kernels: $(STAMP)
	$(PY) -m threestudio_like.kernels

$(MODEL_VIEWER): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $(MODEL_VIEWER)

web: $(MODEL_VIEWER)

# the page tests need a browser: Debian's Chromium, when none is installed (they skip without one)
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium) \
		|| echo "warning: could not install chromium; the browser tests will skip"

# the asset tests open the GLB in Blender too: Debian's blender (its glTF importer needs python3-numpy)
blender:
	@(command -v blender >/dev/null 2>&1 && dpkg -s python3-numpy >/dev/null 2>&1) || (apt-get update -q && apt-get install -y -q blender python3-numpy) \
		|| echo "warning: could not install blender; the Blender import test will skip"

demo: install web
ifeq ($(REFINE),1)
	$(PY) -m threestudio_like.chain $(DEMO_CONFIG) $(REFINE_CONFIGS) \
		system.prompt_processor.prompt="$(PROMPT)" system.guidance_type=$(METHOD)
else
	$(PY) launch.py --config $(DEMO_CONFIG) --train system.prompt_processor.prompt="$(PROMPT)"
endif

test: install web chromium blender
	$(PY) -m pytest -q tests

bench: install
	$(PY) bench/speed.py

bench-quality: install
	$(PY) bench/quality.py --quick

clean:
	rm -rf outputs .pytest_cache
