# Two commands do all set-up on a fresh machine: `make repro` and `make test`.
# The virtualenv is rebuilt whenever requirements.txt changes (the stamp is keyed on its hash).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MPLBACKEND := Agg

.PHONY: venv system-deps repro test mlflow-ui serve clean

venv: $(STAMP)

$(STAMP): requirements.txt
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

# Debian packages: bsdtar extracts TID2013's RAR archive (source: tid2013); chromium drives the
# web-page test; mate-backgrounds and plasma-workspace-wallpapers hold the photos the training
# set is generated from (nriqa.trainset).
system-deps:
	@missing=""; \
	command -v bsdtar >/dev/null || missing="$$missing libarchive-tools"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	[ -f /usr/share/backgrounds/mate/nature/Aqua.jpg ] || missing="$$missing mate-backgrounds"; \
	[ -f /usr/share/wallpapers/Path/contents/images/2560x1600.jpg ] || missing="$$missing plasma-workspace-wallpapers"; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

repro: venv system-deps
	$(BIN)/dvc repro

# pytest exits 5 when it collected nothing; that is a failure here, not a pass.
test: venv system-deps
	$(BIN)/python -m pytest -v --durations=15 tests

mlflow-ui: venv
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# The newest Bento that `dvc repro` (stage package) built, from the project's BentoML store.
BENTO ?= nriqa:latest
serve: venv
	BENTOML_HOME=$${BENTOML_HOME:-$(CURDIR)/bentoml_home} $(BIN)/bentoml serve $(BENTO) --host 127.0.0.1 --port 3000

clean:
	rm -rf data models reports
