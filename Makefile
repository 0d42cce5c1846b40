# Two commands do all set-up on a fresh machine: `make repro` and `make test`.
# The virtualenv is rebuilt whenever requirements.txt or pyproject.toml changes (the stamp is
# keyed on their hash); nriqa itself is installed editable, with its `nriqa` command.
# node_modules/ (the web page's onnxruntime-web, which the Bento ships) is reinstalled with
# `npm ci` whenever package-lock.json changes, the same way.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REQ_HASH := $(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
LOCK_HASH := $(shell cat package.json package-lock.json | sha256sum | cut -c1-16)
NODE_STAMP := node_modules/.installed-$(LOCK_HASH)
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MPLBACKEND := Agg

.PHONY: venv node system-deps repro test test-fast pull mlflow-ui tracking-server serve clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install -qq --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

# Exactly the lockfile's versions, checked against its integrity hashes; no install scripts run
# (.npmrc). npm ci empties node_modules/ first, so older stamps go with it.
node: $(NODE_STAMP)

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "error: npm is missing: run \`make system-deps\` (Debian package npm)" >&2; exit 2; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Debian packages: bsdtar extracts TID2013's RAR archive (source: tid2013); chromium drives the
# web-page test; npm installs the page's JavaScript runtime (`make node`); mate-backgrounds,
# plasma-workspace-wallpapers, lomiri-wallpapers-16.04, lxqt-themes, sddm-theme-maldives and
# palapeli-data hold the photos the training set is generated from (nriqa.data.trainset);
# postgresql and openssh-server are the real back ends that tests/test_team.py runs (a tracking
# server on PostgreSQL, a DVC remote over SSH);
# openjdk-17-jre-headless is the Java runtime PySpark drives (`nriqa score --engine spark`,
# tests/test_spark.py), which the single-process CLI does not need; gcc builds the CPU emulator
# of tests/test_cpu_kernels.py.
system-deps:
	@missing=""; \
	compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing="$$missing postgresql"; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v bsdtar >/dev/null || missing="$$missing libarchive-tools"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	[ -f /usr/share/backgrounds/mate/nature/Aqua.jpg ] || missing="$$missing mate-backgrounds"; \
	[ -f /usr/share/wallpapers/Path/contents/images/2560x1600.jpg ] || missing="$$missing plasma-workspace-wallpapers"; \
	[ -f /usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg ] || missing="$$missing lomiri-wallpapers-16.04"; \
	[ -f /usr/share/lxqt/wallpapers/flowers.png ] || missing="$$missing lxqt-themes"; \
	[ -f /usr/share/sddm/themes/maldives/background.jpg ] || missing="$$missing sddm-theme-maldives"; \
	[ -f /usr/share/palapeli/collection/european-honey-bee.jpg ] || missing="$$missing palapeli-data"; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

repro: venv system-deps node
	$(BIN)/dvc repro

# pytest exits 5 when it collected nothing; that is a failure here, not a pass.
test: venv system-deps node
	$(BIN)/python -m pytest -v --durations=15 tests

# The unit tests only (about a minute): no servers, browsers, pipelines or Debian packages.
test-fast: venv
	$(BIN)/python -m pytest -q -m "not integration" tests

# A teammate's checkout: data, shards, model and reports from the DVC remote (`dvc remote add -d`),
# nothing regenerated or retrained; needs the dvc.lock of the commit that was pushed.
pull: venv
	@[ -f dvc.lock ] || { echo "error: no dvc.lock here, so nothing names the outputs to pull: whoever ran the pipeline commits dvc.lock and runs dvc push (docs/team.md)" >&2; exit 2; }
	$(BIN)/dvc pull
	$(BIN)/dvc status

mlflow-ui: venv
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# The team's MLflow server: runs and registry in PostgreSQL, artifacts uploaded through the server
# (`--artifacts-destination`: a folder here, or s3://..., gs://...), so clients need only its URL.
# Not echoed: the store URI holds a password.
MLFLOW_BACKEND_STORE_URI ?=
MLFLOW_ARTIFACTS_DESTINATION ?= $(CURDIR)/mlflow-server-artifacts
MLFLOW_HOST ?= 0.0.0.0
MLFLOW_PORT ?= 5000
MLFLOW_WORKERS ?= 4
tracking-server: venv
	@[ -n "$(MLFLOW_BACKEND_STORE_URI)" ] || { echo "error: set MLFLOW_BACKEND_STORE_URI=postgresql://USER:PASSWORD@HOST:5432/DATABASE (docs/team.md)" >&2; exit 2; }
	@exec $(BIN)/mlflow server --backend-store-uri '$(MLFLOW_BACKEND_STORE_URI)' \
		--artifacts-destination '$(MLFLOW_ARTIFACTS_DESTINATION)' --serve-artifacts \
		--host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers $(MLFLOW_WORKERS)

# The newest Bento that `dvc repro` (stage package) built, from the project's BentoML store.
BENTO ?= nriqa:latest
serve: venv node
	BENTOML_HOME=$${BENTOML_HOME:-$(CURDIR)/bentoml_home} $(BIN)/bentoml serve $(BENTO) --host 127.0.0.1 --port 3000

clean:
	rm -rf data models reports
