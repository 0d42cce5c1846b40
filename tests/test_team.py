"""The project run by a team, on real back ends on 127.0.0.1 (docs/team.md).

* A tracking server started by `make tracking-server`: `mlflow server` on a real PostgreSQL
  (Debian's, run as the `postgres` user when the tests run as root), artifacts proxied through
  the server. Two separate clones, with different learning rates, run the whole pipeline
  against it: both runs land in one experiment, `python -m nriqa runs` compares them, and the
  champion is the better of the two whichever finished last.
* A DVC remote over SSH on a real `sshd`: the first clone commits its dvc.lock and pushes; a
  fresh `git clone` of it runs `make pull` and is up to date without regenerating or retraining.
* The container: the build context `bentoml containerize` would send to Docker carries the pins of
  requirements.txt and the champion model, and its service takes its settings from NRIQA_* variables.

Every server starts on a free port and is stopped at the end. A missing server binary fails
with the package to install (`make system-deps` installs them all).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.helpers import (
    PROJECT,
    TINY_PARAMS,
    VENV_BIN,
    free_port,
    make_clone,
    merge,
    project_env,
    run,
    stop_process_group,
)

pytestmark = pytest.mark.integration  # PostgreSQL, an MLflow server and sshd

DVC = str(VENV_BIN / "dvc")
PYTHON = str(VENV_BIN / "python")
LR_SECOND_CLONE = 0.01
GIT_USER = ["-c", "user.name=test", "-c", "user.email=test@example.com"]


def as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: the `postgres` user runs it then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def postgres_dir(prefix: str) -> Path:
    """A temporary folder the postgres user can write (pytest's own are root-only)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    return folder


def postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.fail(f"PostgreSQL's {name} is missing: install Debian's postgresql "
                    "(`make system-deps`)")
    return found[-1]


def make_command(target: str, **variables) -> list[str]:
    """`make TARGET KEY=value ...` with this virtualenv, which `make test` has just built
    (`-o venv`: not rebuilt)."""
    return ["make", "-o", "venv", f"BIN={VENV_BIN}", target,
            *(f"{key}={value}" for key, value in variables.items())]


def wait_until(ready, process: subprocess.Popen, log: Path, what: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process_group(process)
            pytest.fail(f"{what} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(1)


# --- The servers ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster of its own, on a free port, with an empty database `mlflow`."""
    folder = postgres_dir("nriqa-postgres-")
    data, port = folder / "data", free_port()
    user = as_postgres_user()
    run([*user, postgres_bin("initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust"], cwd=folder)
    run([*user, postgres_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w",
         "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"], cwd=folder)
    try:
        run([postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow",
             "mlflow"], cwd=folder)
        yield {"uri": f"postgresql://mlflow@127.0.0.1:{port}/mlflow", "port": port}
    finally:
        run([*user, postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            cwd=folder, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def sql(postgres: dict, query: str) -> str:
    return run([postgres_bin("psql"), "-h", "127.0.0.1", "-p", str(postgres["port"]), "-U",
                "mlflow", "-d", "mlflow", "-tAc", query], cwd=PROJECT).stdout.strip()


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    """`make tracking-server` itself, on the PostgreSQL above."""
    root = tmp_path_factory.mktemp("tracking_server")
    port, log = free_port(), root / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            make_command("tracking-server", MLFLOW_BACKEND_STORE_URI=postgres["uri"],
                         MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=port, MLFLOW_WORKERS=1,
                         MLFLOW_ARTIFACTS_DESTINATION=root / "artifacts"),
            cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{url}/health", timeout=2).status_code == 200
        return False

    wait_until(healthy, process, log, "make tracking-server")
    yield {"url": url, "artifacts": root / "artifacts"}
    stop_process_group(process)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """OpenSSH's sshd on a free port, letting in one generated key; a HOME for the client whose
    known_hosts holds the server's key, so the host is verified rather than trusted blindly."""
    daemon = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(daemon).is_file():
        pytest.fail("sshd is missing: install Debian's openssh-server (`make system-deps`)")
    root = tmp_path_factory.mktemp("sshd")
    home, port = root / "home", free_port()
    (home / ".ssh").mkdir(parents=True)
    for key in (root / "host_key", home / ".ssh/team_key"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], cwd=root)
    host_key = (root / "host_key.pub").read_text().split()
    (home / ".ssh/known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    (root / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}",
        f"AuthorizedKeysFile {home / '.ssh/team_key.pub'}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitRootLogin yes",
        f"PidFile {root / 'sshd.pid'}", "Subsystem sftp internal-sftp", ""]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    log = root / "sshd.log"
    process = subprocess.Popen([daemon, "-D", "-e", "-f", str(root / "sshd_config")],
                               stdout=log.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)

    def accepting():
        result = subprocess.run(
            ["ssh", "-p", str(port), "-i", str(home / ".ssh/team_key"), "-o", "BatchMode=yes",
             "-o", f"UserKnownHostsFile={home / '.ssh/known_hosts'}", "127.0.0.1", "true"],
            capture_output=True)
        return result.returncode == 0

    wait_until(accepting, process, log, "sshd", timeout=60)
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    yield {"url": f"ssh://{user}@127.0.0.1:{port}{root / 'remote'}", "home": home,
           "key": home / ".ssh/team_key"}
    stop_process_group(process)


# --- Two clones, one tracking server --------------------------------------------------------------

def outputs(clone: Path) -> dict:
    return {name: json.loads((clone / path).read_text()) for name, path in (
        ("pointer", "models/mlflow_run.json"), ("promotion", "reports/promotion.json"),
        ("bento", "reports/bento.json"), ("metrics", "reports/metrics.json"))}


@pytest.fixture(scope="module")
def team(tmp_path_factory, tracking_server):
    """Two clones train, evaluate, promote and package against the server, one after the other."""
    clones = {"first": make_clone(tmp_path_factory.mktemp("first"), TINY_PARAMS),
              "second": make_clone(tmp_path_factory.mktemp("second"),
                                   merge(TINY_PARAMS, {"train": {"lr": LR_SECOND_CLONE}}))}
    envs, results = {}, {}
    for name, clone in clones.items():
        envs[name] = project_env(clone, MLFLOW_TRACKING_URI=tracking_server["url"])
        run([DVC, "repro"], cwd=clone, env=envs[name])
        results[name] = outputs(clone)
    return {"clones": clones, "envs": envs, "results": results, **tracking_server}


def test_both_clones_log_to_one_experiment_in_postgresql(team, postgres):
    import mlflow

    mlflow.set_tracking_uri(team["url"])
    runs = mlflow.search_runs(experiment_names=["nriqa"])
    ids = {r["pointer"]["run_id"] for r in team["results"].values()}
    assert set(runs["run_id"]) == ids and set(runs["status"]) == {"FINISHED"}
    assert sorted(runs["params.train.lr"].astype(float)) == sorted(
        [float(yaml.safe_load((PROJECT / "params.yaml").read_text())["train"]["lr"]),
         LR_SECOND_CLONE])
    # The runs live in PostgreSQL, and the models went through the server into its artifact store.
    assert set(sql(postgres, "SELECT run_uuid FROM runs").split()) == ids
    for result in team["results"].values():
        assert result["pointer"]["tracking_uri"] == team["url"]
    assert len(list(team["artifacts"].rglob("model.keras"))) >= 2


def test_runs_command_compares_the_two_clones(team):
    second = team["clones"]["second"]
    table = run([PYTHON, "-m", "nriqa", "runs"], cwd=second, env=team["envs"]["second"]).stdout
    lines = table.strip().splitlines()
    assert "train.lr" in lines[0]
    by_srcc = sorted(team["results"].values(), key=lambda r: r["metrics"]["test"]["srcc"],
                     reverse=True)
    assert [line.split()[0] for line in lines[1:3]] == [r["pointer"]["run_id"][:8]
                                                        for r in by_srcc]


def test_champion_is_the_better_run_whichever_finished_last(team):
    from mlflow import MlflowClient

    first, second = team["results"]["first"], team["results"]["second"]
    better = max((first, second), key=lambda r: r["metrics"]["test"]["srcc"])
    assert first["metrics"]["test"]["srcc"] != second["metrics"]["test"]["srcc"], \
        "a tie would not tell the gate's order apart"
    champion = MlflowClient(team["url"]).get_model_version_by_alias("nriqa", "champion")
    assert champion.run_id == better["pointer"]["run_id"]
    # The second clone finished last; it took the alias only if it was better.
    assert second["promotion"]["promoted"] == (better is second)
    assert second["promotion"]["champion_run_id"] == champion.run_id
    # Its Bento serves the champion, fetched from the server's registry, lineage included.
    assert second["bento"]["mlflow_run_id"] == champion.run_id
    assert second["bento"]["registry_version"] == str(champion.version)
    # ... and its model store holds the very model.keras the champion's clone trained.
    name, version = second["bento"]["model_tag"].split(":")
    stored = team["clones"]["second"] / "bentoml_home/models" / name / version / "model.keras"
    trained = team["clones"]["second" if better is second else "first"] / "models/model.keras"
    assert stored.read_bytes() == trained.read_bytes()


def test_worse_model_promoted_last_leaves_the_champion(team):
    """The other order: the worse run's promotion comes after the better one's (the pipeline
    order above gave one order; this gives the other, whichever clone trained better)."""
    from nriqa.ops.registry import promote

    first, second = team["results"]["first"], team["results"]["second"]
    worse, better = sorted((first, second), key=lambda r: r["metrics"]["test"]["srcc"])
    report = promote(worse["pointer"], "nriqa", worse["metrics"]["test"]["srcc"])
    assert not report["promoted"], report["reason"]
    assert report["champion_run_id"] == better["pointer"]["run_id"]


# --- The DVC remote -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pushed(team, sshd):
    """The first clone commits its dvc.lock and remote, then `dvc push`es everything over SSH."""
    clone, env = team["clones"]["first"], {**team["envs"]["first"], "HOME": str(sshd["home"])}
    run([DVC, "remote", "add", "-d", "team", sshd["url"]], cwd=clone, env=env)
    run([DVC, "remote", "modify", "--local", "team", "keyfile", str(sshd["key"])], cwd=clone,
        env=env)
    run(["git", "add", "dvc.lock", ".dvc/config"], cwd=clone, env=env)
    run(["git", *GIT_USER, "commit", "-q", "-m", "pipeline results"], cwd=clone, env=env)
    run([DVC, "push"], cwd=clone, env=env)
    return {"clone": clone, "env": env}


@pytest.fixture(scope="module")
def teammate(pushed, sshd, tmp_path_factory):
    """A fresh `git clone` of the pushed commit, which runs `make pull`."""
    clone = tmp_path_factory.mktemp("teammate") / "nriqa"
    env = {**project_env(clone), "HOME": str(sshd["home"])}
    run(["git", "clone", "-q", str(pushed["clone"]), str(clone)], cwd=clone.parent, env=env)
    run([DVC, "remote", "modify", "--local", "team", "keyfile", str(sshd["key"])], cwd=clone,
        env=env)
    pull = run(make_command("pull"), cwd=clone, env=env)
    return {"clone": clone, "env": env, "pull": pull.stdout}


def test_make_targets_name_what_is_missing(tmp_path):
    server = run(make_command("tracking-server", MLFLOW_BACKEND_STORE_URI=""), cwd=PROJECT,
                 check=False)
    assert server.returncode == 2 and "set MLFLOW_BACKEND_STORE_URI=postgresql://" in server.stderr
    clone = make_clone(tmp_path, {})
    (clone / "dvc.lock").unlink(missing_ok=True)  # a teammate's checkout before anyone pushed
    pull = run(make_command("pull"), cwd=clone, env=project_env(clone), check=False)
    assert pull.returncode == 2 and "no dvc.lock here" in pull.stderr


def test_push_leaves_nothing_missing_on_the_remote(pushed):
    status = run([DVC, "status", "--cloud", "--json"], cwd=pushed["clone"], env=pushed["env"])
    assert json.loads(status.stdout) == {}


def test_pulled_clone_is_up_to_date_without_rerunning_anything(teammate, pushed):
    clone = teammate["clone"]
    assert "Data and pipelines are up to date." in teammate["pull"]
    for path in ("data/processed/splits.csv", "models/model.keras", "models/mlflow_run.json",
                 "reports/metrics.json", "reports/promotion.json", "reports/bento.json"):
        assert (clone / path).read_bytes() == (pushed["clone"] / path).read_bytes(), path
    again = run([DVC, "repro"], cwd=clone, env=teammate["env"]).stdout
    assert "Running stage" not in again, again


# --- The container --------------------------------------------------------------------------------

CONTEXT_SCRIPT = """
import json, os, shutil, sys
import bentoml
from bentoml._internal.container import construct_containerfile

bento = bentoml.get(sys.argv[1])
with construct_containerfile(bento) as (context, dockerfile):
    shutil.copytree(context, sys.argv[2])
    relative = os.path.relpath(dockerfile, context)
print(json.dumps({"dockerfile": relative}))
"""


@pytest.fixture(scope="module")
def build_context(team, tmp_path_factory):
    """The build context `bentoml containerize` sends to Docker (its own function builds it)."""
    clone, env = team["clones"]["second"], team["envs"]["second"]
    bento = team["results"]["second"]["bento"]
    target = tmp_path_factory.mktemp("container") / "context"
    made = run([PYTHON, "-c", CONTEXT_SCRIPT, bento["bento_tag"], str(target)], cwd=clone, env=env)
    return {"path": target, "bento": bento, "clone": clone,
            "dockerfile": target / json.loads(made.stdout.strip().splitlines()[-1])["dockerfile"]}


def pins(text: str) -> dict:
    return dict(line.split("==", 1) for line in text.splitlines()
                if "==" in line and not line.startswith("#"))


def test_container_context_carries_the_pinned_versions(build_context):
    required = pins((PROJECT / "requirements.txt").read_text())
    shipped = pins((build_context["path"] / "env/python/requirements.txt").read_text())
    bentofile = yaml.safe_load((PROJECT / "bentofile.yaml").read_text())
    wanted = [p.split("==")[0] for p in bentofile["python"]["packages"]]
    assert {name: shipped.get(name) for name in wanted} == {name: required[name] for name in wanted}
    # The image installs exactly that file.
    assert "env/python/requirements.txt" in build_context["dockerfile"].read_text()


def test_container_context_carries_the_champion_model(build_context):
    name, version = build_context["bento"]["model_tag"].split(":")
    model = build_context["path"] / "models" / name / version
    stored = build_context["clone"] / "bentoml_home/models" / name / version
    assert (model / "model.keras").read_bytes() == (stored / "model.keras").read_bytes()
    labels = yaml.safe_load((model / "model.yaml").read_text())["labels"]
    assert labels["mlflow_run_id"] == build_context["bento"]["mlflow_run_id"]


def test_container_service_takes_its_settings_from_the_environment(build_context):
    """The context's own service.py on the context's models, as in the image (BENTOML_HOME
    holds the Bento's models there): every serve limit comes from NRIQA_<KEY>, each of which
    the README documents."""
    from nriqa.ops.packaging import SERVE_KEYS

    readme = (PROJECT / "README.md").read_text()
    overrides = {f"NRIQA_{key.upper()}": str(1000 + i) for i, key in enumerate(SERVE_KEYS)}
    for variable in overrides:
        assert f"`{variable}`" in readme, f"README does not document {variable}"
    dockerfile = build_context["dockerfile"].read_text()
    assert "NRIQA_" not in dockerfile, "the image must not fix a setting the environment gives"
    env = {**project_env(build_context["clone"]), **overrides,
           "BENTOML_HOME": str(build_context["path"])}
    # The settings the service reads when it starts (nriqa.serving.api.UploadScorer.for_model).
    started = ("import dataclasses, json, service; from nriqa.serving.api import UploadScorer; "
               "scorer = UploadScorer.for_model(service.NRIQA.inner.bento_model); "
               "print(json.dumps(dataclasses.asdict(scorer.settings), default=str))")
    shown = run([PYTHON, "-c", started], cwd=build_context["path"] / "src", env=env).stdout
    settings = json.loads(shown.strip().splitlines()[-1])
    assert {f"NRIQA_{key.upper()}": str(settings[key]) for key in SERVE_KEYS} == overrides
    assert settings["mlflow_run_id"] == build_context["bento"]["mlflow_run_id"]
