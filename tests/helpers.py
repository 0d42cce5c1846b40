"""Plain helpers shared by the tests and the benchmarks: a throw-away git clone of the project
with tiny params, running commands in it, tiny training shards. No pytest here, so
benchmarks/ can import it; the tests import it directly, conftest.py holds only fixtures."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from nriqa.core.config import Config, DataConfig, ModelConfig, parse_config

# --------------------------------------------------------------------------------------------
# Project clones, processes and training shards (moved from conftest.py, so that benchmarks/
# no longer import a pytest conftest)
# --------------------------------------------------------------------------------------------

PROJECT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Seconds-not-minutes settings for the whole pipeline: 3 references, 4 types, 3 levels,
# 24 generated training images, a 2-block network on 32-pixel crops, 2 epochs.
TINY_PARAMS = {
    "data": {"num_references": 3, "image_size": [96, 64], "distortion_types": [1, 8, 10, 17],
             "levels": [1, 3, 5]},
    "trainset": {"images": 24, "image_size": [64, 48], "distortion_types": [1, 8, 10, 17]},
    "preprocess": {"shards": 1},
    "model": {"input_size": 32, "width": 0.25, "depth": 2, "head_units": [8]},
    "train": {"epochs": 2, "patience": 2, "crops_per_image": 4, "batch_size": 4},
    "predict": {"stride": 32, "max_crops": 4},
}


# The small from-scratch network that unit tests build (not the default's pretrained one).
TINY_NETWORK = {"backbone": "mobilenet_style", "weights": None, "pooling": "last", "freeze": False,
                "fusion": False, "input_size": 32, "width": 0.25, "depth": 2, "head_units": [8],
                "distortion_types": 0, "undistorted_class": False, "mos_head": "direct"}


def config(overrides: dict | None = None) -> Config:
    """params.yaml with `overrides` merged in, parsed as the stages parse it."""
    return parse_config(merge(yaml.safe_load((PROJECT / "params.yaml").read_text()), overrides or {}))


def model_config(**overrides) -> ModelConfig:
    """TINY_NETWORK, with `overrides`."""
    return config({"model": {**TINY_NETWORK, **overrides}}).model


def data_config(**overrides) -> DataConfig:
    """params.yaml's data section, with `overrides`."""
    return config({"data": overrides}).data


def stage_command(name: str, python: str = sys.executable) -> list[str]:
    """A stage's command as dvc.yaml runs it, paths included, with this interpreter."""
    cmd = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"][name]["cmd"].split()
    return [python, *cmd[1:]]


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a test server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True, children included (make, a shell)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tool_env(**extra) -> dict:
    """The environment stage commands need: this virtualenv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MPLBACKEND", "Agg")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def project_env(clone: Path, **extra) -> dict:
    """Each clone keeps its own BentoML store; MLflow defaults to the clone's sqlite file."""
    return tool_env(BENTOML_HOME=str(clone / "bentoml_home"), **extra)


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True,
        timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env or tool_env(), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def make_clone(destination: Path, params_override: dict) -> Path:
    """Copy the project's working tree (tracked and untracked-but-not-ignored files) into a new
    git repository with one commit: a clone of what is being tested, uncommitted edits included."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           cwd=PROJECT, capture_output=True, text=True, check=True).stdout
    for name in filter(None, files.split("\0")):
        source = PROJECT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    # The web page's runtime, which `make node` installs where git ignores it: the package
    # stage ships it in the Bento, as in the project.
    from nriqa.ops.packaging import RUNTIME_FILES, RUNTIME_PATH

    for file in RUNTIME_FILES:
        if (PROJECT / RUNTIME_PATH / file).is_file():
            (destination / RUNTIME_PATH).mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / RUNTIME_PATH / file, destination / RUNTIME_PATH / file)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    (destination / "params.yaml").write_text(yaml.safe_dump(merge(params, params_override),
                                                            sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=test", "-c", "user.email=test@example.com",
                 "commit", "-q", "-m", "test clone"]):
        subprocess.run(cmd, cwd=destination, check=True, capture_output=True)
    return destination


def write_tiny_shards(out_dir: Path, *, train: int = 24, val: int = 8, seed: int = 0) -> Path:
    """Training shards in seconds, without the pipeline: smooth random 48x64 pictures with
    Gaussian noise (TID2013 type 1) or blur (type 8) at levels 1..4, MOS 6 - level, so that a
    tiny model has something to learn. Writes what the train stage reads: one shard per split
    and splits.csv."""
    import numpy as np
    import pandas as pd
    import tensorflow as tf
    from scipy import ndimage

    from nriqa.data.shards import _example

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, count in (("train", train), ("val", val), ("test", 0)):
        with tf.io.TFRecordWriter(str(out_dir / f"{split}-00-of-01.tfrecord")) as writer:
            for i in range(count):
                picture = ndimage.zoom(rng.uniform(0, 255, (6, 8, 3)), (8, 8, 1), order=3)
                distortion, level = (1, 8)[i % 2], 1 + (i // 2) % 4
                if distortion == 1:
                    picture = picture + rng.normal(0, 12 * level, picture.shape)
                else:
                    picture = ndimage.gaussian_filter(picture, (0.8 * level, 0.8 * level, 0))
                image = np.clip(picture, 0, 255).astype(np.uint8)
                row = {"image": f"{split}{i:03d}.png", "reference": f"{split}{i // 8}",
                       "distortion": distortion, "level": level, "mos": 6.0 - level,
                       "type_label": distortion, "split": split}
                writer.write(_example(image, row).SerializeToString(deterministic=True))
                rows.append(row)
    pd.DataFrame(rows).to_csv(out_dir / "splits.csv", index=False)
    return out_dir
