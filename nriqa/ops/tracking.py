"""MLflow tracking: one run per training, which evaluation and promotion later add to.

The train stage opens the run (`training_run`), logs every param, the provenance tags and the
dataset (`nriqa.ops.provenance`) and per-epoch metrics, logs the model bundle
(`nriqa.model.pyfunc.log_bundle`), and leaves a pointer file (`models/mlflow_run.json` in the
pipeline) naming the run. The evaluate stage reopens that same run
(`log_evaluation`) to add the test metrics, figures and reports; `nriqa.ops.registry` then decides
whether the run's model becomes the registered champion.

Where runs go: `mlflow.tracking_uri` in params.yaml, unless the usual `MLFLOW_TRACKING_URI`
(and `MLFLOW_EXPERIMENT_NAME`) environment variables say otherwise. The default,
`sqlite:///mlflow.db`, is resolved against the project root, and its artifacts go to
`mlartifacts/` beside it, so a local project keeps everything in its own (git-ignored) folder.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

from nriqa.core.config import Config, MlflowConfig, load_config
from nriqa.core.errors import NriqaError
from nriqa.core.stage import read_json, write_json
from nriqa.model.bundle import fetch_bundle, load_model
from nriqa.ops.provenance import folder_digest, log_dataset, provenance_tags

POINTER_KEYS = ("run_id", "experiment_id", "tracking_uri", "model_uri")

# --- Where the runs go ------------------------------------------------------------------------

def project_root() -> Path:
    """The DVC project the stage belongs to.

    `dvc exp run --temp` and queued experiments run stages in a copy under .dvc/tmp, with
    DVC_ROOT naming the real project: runs and artifacts must land in the real one's store.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def take_credentials(uri: str) -> str:
    """`uri` without its `user:password@`, which moves to MLflow's own variables for a
    server's basic auth (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD) in this process.

    So the URI that the project stores (the run pointer, promotion.json, DVC's cache) and
    prints (errors, MLflow's "View run at" lines) never holds a password: each stage reads it
    from the environment when it connects.
    """
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
    if parts.password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def load_credentials() -> None:
    """Credentials in MLFLOW_TRACKING_URI, for a store named elsewhere (a run pointer)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = take_credentials(os.environ["MLFLOW_TRACKING_URI"])


def use_store(uri: str) -> str:
    """Point MLflow at the store `uri` (a pointer's or promotion's), checked reachable, with
    the environment's credentials; returns the URI without credentials."""
    import mlflow

    load_credentials()
    uri = take_credentials(uri)  # a pointer written before URIs were stored without them
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def resolve_tracking_uri(configured: str, root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else `configured` (params.yaml's mlflow.tracking_uri);
    relative local stores made absolute; credentials moved out (`take_credentials`)."""
    load_credentials()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or take_credentials(configured)
    root = root or project_root()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{root / uri[len('sqlite:///'):]}"
    if "://" not in uri and not uri.startswith("databricks"):
        return (root / uri).as_uri()  # a bare folder: MLflow's file store
    return uri


def is_local_store(uri: str) -> bool:
    return urlparse(uri).scheme in ("sqlite", "file", "")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail now, with the URI in the message, if an HTTP tracking server does not answer.

    Asked before any work starts, so an unreachable server costs seconds, not a training.
    """
    if urlparse(uri).scheme not in ("http", "https"):
        return
    import requests

    health = uri.rstrip("/") + "/health"
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    auth = (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", "")) if user else None
    try:
        response = requests.get(health, timeout=timeout, auth=auth)
    except requests.RequestException as error:
        raise NriqaError(f"MLflow tracking server {uri} is unreachable ({type(error).__name__}). "
                         "Start it, or point MLFLOW_TRACKING_URI (or mlflow.tracking_uri in "
                         "params.yaml) at one that runs.") from error
    if response.status_code != 200:
        raise NriqaError(f"MLflow tracking server {uri} is not healthy: GET {health} answered "
                         f"HTTP {response.status_code}.")


def connect(settings: MlflowConfig) -> str:
    """Point MLflow at the store and experiment for this project; returns the tracking URI."""
    import mlflow
    from mlflow.exceptions import MlflowException

    root = project_root()
    uri = resolve_tracking_uri(settings.tracking_uri, root)
    check_reachable(uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or settings.experiment
    mlflow.set_tracking_uri(uri)
    try:
        if mlflow.get_experiment_by_name(name) is None:
            # A local store's default artifact root is ./mlruns of whatever directory the process
            # started in; name the project's folder explicitly. A server decides for itself.
            location = (root / "mlartifacts").as_uri() if is_local_store(uri) else None
            with contextlib.suppress(MlflowException):  # a parallel experiment created it first
                mlflow.create_experiment(name, artifact_location=location)
        mlflow.set_experiment(name)
    except MlflowException as error:
        raise NriqaError(f"MLflow tracking store {uri} cannot be used: {error.message}") from error
    return uri


# --- Params ---------------------------------------------------------------------------------------

def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 0.001}} -> {"train.lr": 0.001}; lists stay one value."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


# --- The training run ---------------------------------------------------------------------------

def _raise_on_sigterm(signum, frame):
    # DVC (or a CI runner) stopping the stage sends SIGTERM; as an exception it unwinds through
    # the run's context manager, which marks the run FAILED instead of leaving it RUNNING.
    sys.exit(128 + signum)


@contextlib.contextmanager
def training_run(config: Config, shard_dir: Path):
    """An MLflow run around a training on the shards in `shard_dir`: FINISHED if the block
    completes, FAILED if it raises.

    Everything that can fail for tracking reasons (an unreachable server, a broken store)
    happens before the block, i.e. before training starts.
    """
    import mlflow

    uri = connect(config.mlflow)
    for run_id, pid in end_orphaned_runs():
        print(f"MLflow run {run_id} was still RUNNING, but its training (pid {pid} on this "
              "machine) is gone, killed or out of memory: marked KILLED", file=sys.stderr)
    digest = folder_digest(shard_dir)
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        with mlflow.start_run(run_name=os.environ.get("DVC_EXP_NAME") or None) as run:
            mlflow.set_tag(PROCESS_TAG, f"{socket.gethostname()} {os.getpid()}")
            mlflow.log_params(flatten(config.as_dict()))
            mlflow.set_tags(provenance_tags(config.data, digest))
            log_dataset(config.data, shard_dir, digest)
            yield TrainingRun(run.info.run_id, run.info.experiment_id, uri)
    finally:
        signal.signal(signal.SIGTERM, previous)


# "<host> <pid>" of the training process, so that a later training on the same machine can
# tell a run whose process died without a word (kill -9, the OOM killer) from a live one.
PROCESS_TAG = "nriqa.process"


def end_orphaned_runs() -> list[tuple[str, int]]:
    """Mark KILLED (MLflow's status for it) the active experiment's RUNNING runs whose training
    process, on this machine, no longer exists; returns (run id, pid) of each. Runs of other
    machines, or without the tag, are left alone: nothing here can tell whether they live."""
    import mlflow

    host, ended = socket.gethostname(), []
    for run in mlflow.search_runs(filter_string="attributes.status = 'RUNNING'", output_format="list"):
        run_host, _, pid = run.data.tags.get(PROCESS_TAG, "").rpartition(" ")
        if run_host == host and pid.isdigit() and not _process_exists(int(pid)):
            mlflow.MlflowClient().set_terminated(run.info.run_id, status="KILLED")
            ended.append((run.info.run_id, int(pid)))
    return ended


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


class TrainingRun:
    def __init__(self, run_id: str, experiment_id: str, tracking_uri: str):
        self.run_id, self.experiment_id, self.tracking_uri = run_id, experiment_id, tracking_uri

    def epoch_logger(self):
        return epoch_metrics_callback()

    def log_summary(self, result: dict) -> None:
        import mlflow

        # averaged_val_srcc only where the weights were averaged (train.average_from)
        mlflow.log_metrics({key: result[key] for key in ("best_epoch", "best_val_srcc",
                                                         "averaged_val_srcc", "train_images",
                                                         "val_images") if key in result})

    def write_pointer(self, path: Path, model_uri: str) -> None:
        """The pointer file (models/mlflow_run.json): how evaluate and promote find this run
        and the model logged to it (`nriqa.model.pyfunc.log_bundle`)."""
        write_json(path, {"run_id": self.run_id, "experiment_id": self.experiment_id,
                          "tracking_uri": self.tracking_uri, "model_uri": model_uri})


def epoch_metrics_callback():
    """A Keras callback that logs each epoch's logs (loss, val_srcc, val_rmse, epoch_seconds).

    Defined on demand so `python -m nriqa runs` does not pay for importing Keras.
    """
    import keras
    import mlflow

    class EpochMetricsToMlflow(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            values = {key: float(value) for key, value in (logs or {}).items()
                      if isinstance(value, (int, float)) or hasattr(value, "__float__")}
            mlflow.log_metrics(values, step=epoch + 1)  # steps count epochs from 1, as the CSV does

    return EpochMetricsToMlflow()


# --- Evaluation, in the same run ---------------------------------------------------------------

def read_pointer(path: Path) -> dict:
    pointer = read_json(path, stage="train")
    missing = [key for key in POINTER_KEYS if not pointer.get(key)]
    if missing:
        raise NriqaError(f"{path} lacks {', '.join(missing)}: retrain (`dvc repro --force train`).")
    return pointer


def open_pointer(path: Path) -> dict:
    """The training run's pointer, its store checked reachable; the store is the one training
    used (recorded in the pointer), so a later change of MLFLOW_TRACKING_URI cannot split a run."""
    pointer = read_pointer(path)
    pointer["tracking_uri"] = use_store(pointer["tracking_uri"])
    return pointer


def evaluation_metrics(metrics: dict) -> dict:
    """metrics.json -> flat MLflow names: test_srcc, baseline_srcc, test_srcc_type_01, ...

    External datasets keep metrics.json's dotted path (external.humanlabels.srcc,
    external.humanlabels.per_distortion_srcc.type_01): MLflow allows dots in metric names, and
    the same name in both places is easier to find than a second naming scheme.
    """
    flat = {}
    for section in ("test", "baseline"):
        for key, value in metrics.get(section, {}).items():
            flat[f"{section}_{key}"] = value
    for key, value in metrics.get("test_per_distortion_srcc", {}).items():
        flat[f"test_srcc_{key}"] = value
    flat.update(flatten(metrics.get("external", {}), "external."))
    # MLflow stores NaN, but a NaN SRCC (a constant prediction) would sort above every real
    # score in some back ends; leave it out and let the gap speak.
    return {key: float(value) for key, value in flat.items()
            if isinstance(value, (int, float)) and math.isfinite(value)}


def log_evaluation(pointer: dict, metrics: dict, artifacts: dict[str, list[Path]],
                   test_set: str) -> None:
    """Add the test metrics, the identity of the test set they were measured on (tag
    `test_set.digest`, which the promotion gate compares) and report files to the training run;
    `artifacts` maps a folder in the run's artifacts ("" for the top) to the local files."""
    import mlflow

    with mlflow.start_run(run_id=pointer["run_id"]):
        mlflow.set_tag("test_set.digest", test_set)
        mlflow.log_metrics(evaluation_metrics(metrics))
        for folder, paths in artifacts.items():
            for path in paths:
                if path.exists():
                    mlflow.log_artifact(str(path), artifact_path=folder or None)


def log_export(run_id: str, figures: dict, folder: Path, report: Path) -> None:
    """Add the exported files (artifacts `portable/`), the parity figures (metrics `export.*`)
    and the report to the run whose model was exported."""
    import mlflow

    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({key: float(value) for key, value in flatten(figures, "export.").items()
                            if isinstance(value, (int, float))})
        mlflow.log_artifacts(str(folder), artifact_path="portable")
        mlflow.log_artifact(str(report))


def open_named_model(model_uri: str | None, model_dir: Path | None, params_path: Path,
                     workdir: str):
    """(model, model.json) of the model a command names: an MLflow model URI, read from the
    tracking store that `params_path`'s `mlflow` section (or MLFLOW_TRACKING_URI) names and
    downloaded into `workdir`, or else the bundle folder `model_dir` (default models/)."""
    if not model_uri:
        return load_model(model_dir or Path("models"))
    return load_model(fetch_bundle(model_uri, workdir, tracking_uri=command_tracking_uri(params_path)))


def named_export(model_uri: str | None, model_dir: Path | None, params_path: Path,
                 workdir: str) -> Path:
    """The folder of the exported model (model.onnx, model.json) a command names: the
    `portable/` artifacts of an MLflow model URI's run, downloaded into `workdir`, or else the
    folder `model_dir` (default models/portable/, the export stage's)."""
    if not model_uri:
        return model_dir or Path("models/portable")
    return fetch_portable(model_uri, Path(workdir), tracking_uri=command_tracking_uri(params_path))


def command_tracking_uri(params_path: Path) -> str | None:
    """The tracking URI of `params_path`'s `mlflow` section, if that file exists; else None, and
    MLflow reads MLFLOW_TRACKING_URI itself."""
    if not params_path.is_file():
        return None
    return resolve_tracking_uri(load_config(params_path).mlflow.tracking_uri,
                                params_path.resolve().parent)


def registry_version(model_uri: str):
    """The registry version (MLflow's ModelVersion) that `models:/NAME@ALIAS` or
    `models:/NAME/VERSION` names now, from the current tracking store; None for any other URI."""
    from mlflow import MlflowClient

    name, sep, number = model_uri.removeprefix("models:/").partition("/")
    name, at, alias = name.partition("@")
    if not model_uri.startswith("models:/") or not ((at and alias and not sep) or
                                                    (sep and number and not at)):
        return None
    client = MlflowClient()
    return client.get_model_version_by_alias(name, alias) if at else client.get_model_version(name, number)


def fetch_portable(model_uri: str, destination: Path, *, tracking_uri: str | None = None) -> Path:
    """The exported model of a registered version (`models:/nriqa@champion`, `models:/nriqa/3`):
    the `portable/` artifacts the export stage logged to its run, downloaded into `destination`."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        version = registry_version(model_uri)
        if version is None:
            raise NriqaError(f"{model_uri}: with --runtime onnx, name a registered version "
                             "(models:/NAME@ALIAS or models:/NAME/VERSION)")
        folder = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="portable",
                                                     dst_path=str(destination))
    except NriqaError:
        raise
    except Exception as error:  # MlflowException, OSError, ...: all mean "cannot get it"
        raise NriqaError(f"{model_uri}: cannot download its exported model (portable/) from "
                         f"MLflow ({error}); the export stage logs it") from error
    return Path(folder)
