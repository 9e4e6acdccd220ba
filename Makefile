# flexunet — two entry points for a fresh machine:
#   make demo   set up, make synthetic data, train a small UNet, evaluate it, show the outputs
#   make test   set up and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FLEX   := $(VENV)/bin/flexunet
DEMO   := projects/demo

.PHONY: demo test setup clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $@

# the tests also run the optional engines that install here (OpenVINO, Ray, whole-slide readers)
$(VENV)/.installed-extras: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[train,dev,openvino,ray,wsi]"
	touch $@

demo: setup
	$(FLEX) synth $(DEMO)/dataset --kind tiles
	$(FLEX) train $(DEMO)/train_eval_infer.config
	$(FLEX) evaluate $(DEMO)/train_eval_infer.config
	@echo
	@echo "outputs:"
	@echo "  model            $(DEMO)/models/best_model.keras"
	@echo "  curves           $(DEMO)/eval/train_metrics.png  $(DEMO)/eval/train_losses.png"
	@echo "  history          $(DEMO)/eval/train_metrics.csv  $(DEMO)/eval/train_losses.csv"
	@echo "  evaluation       $(DEMO)/evaluation.csv"
	@echo "  epoch previews   $(DEMO)/epoch_change_tiledinfer/"

test: $(VENV)/.installed-extras
	$(PY) -m pytest -q

clean-demo:
	rm -rf $(DEMO)/dataset $(DEMO)/models $(DEMO)/eval $(DEMO)/epoch_change_* $(DEMO)/evaluation.csv
