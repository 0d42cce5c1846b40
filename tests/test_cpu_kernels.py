"""The same weights whatever instruction sets the environment asks for: the project caps oneDNN's
kernels at AVX2 (`nriqa.core.runtime.pin_cpu_kernels`), so the instruction set is not what
makes two trainings differ. Emulated here with oneDNN's own cap, `ONEDNN_MAX_CPU_ISA`, set in the
environment as a user or another machine would have it. (Another CPU model can still train other
weights, most likely through block sizes that follow its caches: docs/model.md.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.helpers import PROJECT, TINY_PARAMS, merge, tool_env, write_tiny_shards

pytestmark = pytest.mark.integration  # trainings in processes

# A tiny training of the pipeline's own kind (`nriqa.model.training.train`); prints a digest of
# the weights. With `override`, the variable is set again after nriqa's pin, as if the project
# did not pin it: that shows the ISA matters on this CPU, so the test above could fail.
TRAIN_SCRIPT = """
import hashlib, json, os, sys
from pathlib import Path
from nriqa.core.runtime import configure
configure()
if sys.argv[3]:
    os.environ["ONEDNN_MAX_CPU_ISA"] = sys.argv[3]
from nriqa.core.config import parse_config
from nriqa.core.imaging import preprocessing_config
from nriqa.model.training import train
config = parse_config(json.loads(sys.argv[2]))
model, _ = train(Path(sys.argv[1]), config.model, config.train, preprocessing_config(config))
digest = hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
print("WEIGHTS", digest)
"""


@pytest.fixture(scope="module")
def trained_under(tmp_path_factory):
    shards = write_tiny_shards(tmp_path_factory.mktemp("shards"), train=16, val=4)
    params = merge(yaml.safe_load((PROJECT / "params.yaml").read_text()), TINY_PARAMS)
    params["train"].update(epochs=1)

    def train(environment_isa: str | None, override: str = "") -> str:
        env = tool_env()
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        if environment_isa:
            env["ONEDNN_MAX_CPU_ISA"] = environment_isa
        result = subprocess.run(
            [sys.executable, "-c", TRAIN_SCRIPT, str(shards), json.dumps(params), override],
            cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
        return next(line for line in result.stdout.splitlines()
                    if line.startswith("WEIGHTS ")).split()[1]

    return train


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return set(next(line for line in cpuinfo if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return set()


def test_weights_do_not_depend_on_the_cpus_instruction_sets(trained_under):
    pinned = trained_under(None)
    assert trained_under("AVX512_CORE_AMX") == pinned  # what the widest CPUs would use
    assert trained_under("AVX2") == pinned


@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="this CPU has no AVX-512 to differ by")
def test_without_the_pin_avx512_trains_other_weights(trained_under):
    assert trained_under(None, override="AVX512_CORE") != trained_under(None, override="AVX2")
