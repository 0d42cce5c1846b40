"""The same data and weights whatever CPU makes them. The project pins the CPU kernels
(`nriqa.core.runtime.pin_cpu_kernels`): TensorFlow's oneDNN on, whatever CPUID says, and capped
at AVX2, OpenCV's IPP capped at AVX2, and OpenBLAS held to its AVX2 kernels. Shown here with a
tiny training, a synthetic reference and a matrix product: they do not follow oneDNN's own cap
set in the environment (`ONEDNN_MAX_CPU_ISA`, as a user or another machine would have it), nor
the CPU the process sees, emulated by answering CPUID as another CPU model would
(`cpuid_emulator.c`: a CPU with AVX2 alone, and other cache sizes); and without the pins this
CPU makes other ones, so these tests could fail (docs/model.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nriqa.core import runtime
from nriqa.core.runtime import cpu_flags
from tests.helpers import PROJECT, TINY_PARAMS, merge, tool_env, write_tiny_shards

pytestmark = pytest.mark.integration  # trainings in processes

# Each script settles the process as nriqa does, then sets again the variables its first
# argument names, as if the project had not set them (an empty value: unset, so the library's
# own default), and prints digests as "NAME digest" lines.
AS_UNPINNED = """
import hashlib, json, os, sys
from nriqa.core.runtime import configure
configure()
for name, value in json.loads(sys.argv[1]).items():
    os.environ.pop(name) if value == "" else os.environ.__setitem__(name, value)
"""

# A tiny training of the pipeline's own kind (`nriqa.model.training.train`): its weights.
TRAIN_SCRIPT = AS_UNPINNED + """
from pathlib import Path
from nriqa.core.config import parse_config
from nriqa.core.imaging import preprocessing_config
from nriqa.model.training import train
config = parse_config(json.loads(sys.argv[3]))
model, _ = train(Path(sys.argv[2]), config.model, config.train, preprocessing_config(config))
print("WEIGHTS", hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest())
"""

# The synthetic reference that OpenCV upscales (cubic), as the fetch stage makes it, and a
# matrix product of NumPy's OpenBLAS, as the baseline's SVR makes them.
REFERENCE_SCRIPT = AS_UNPINNED + """
from nriqa.data.synthetic import REFERENCE_SOURCES, load_reference
upscaled = next(i for i, s in enumerate(REFERENCE_SOURCES, 1) if "upscaled" in s.description)
print("PIXELS", hashlib.sha256(load_reference(upscaled, (512, 384)).tobytes()).hexdigest())
import numpy as np
rng = np.random.default_rng(0)
product = rng.standard_normal((300, 517)) @ rng.standard_normal((517, 301))
print("PRODUCT", hashlib.sha256(product.tobytes()).hexdigest())
"""


# CPUs where TensorFlow turns oneDNN on by itself (with AVX2 alone it runs Eigen's kernels).
ONEDNN_BY_DEFAULT = {"avx512_vnni", "avx512_bf16", "amx_tile", "avx_vnni"}
needs_cpuid_fault = pytest.mark.skipif("cpuid_fault" not in cpu_flags(),
                                       reason="this CPU cannot make CPUID fault, so no other "
                                              "CPU can be emulated")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Path:
    if not shutil.which("gcc"):
        pytest.fail("gcc is missing: `make system-deps` installs it")
    library = tmp_path_factory.mktemp("cpuid") / "cpuid_emulator.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(library),
                    str(Path(__file__).with_name("cpuid_emulator.c"))], check=True)
    return library


def digests(emulator: Path, script: str, *args: str, cpu: str | None = None,
            unpinned: dict | None = None, environment: dict | None = None) -> dict[str, str]:
    """Run `script` in a fresh process, as `cpu` (emulated) or this CPU, with none of the pinned
    variables in its environment but `environment`; its "NAME digest" lines."""
    env = tool_env()
    for name in (*runtime.CPU_KERNELS, *runtime.AVX2_KERNELS, "EMULATED_CPU"):
        env.pop(name, None)
    env.update(environment or {})
    if cpu:
        env.update(EMULATED_CPU=cpu, LD_PRELOAD=str(emulator))
    result = subprocess.run([sys.executable, "-c", script, json.dumps(unpinned or {}), *args],
                            cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return dict(line.split() for line in result.stdout.splitlines()
                if line.startswith(("WEIGHTS ", "PIXELS ", "PRODUCT ")))


@pytest.fixture(scope="module")
def reference_under(emulator):
    def reference(*, cpu: str | None = None, unpinned: dict | None = None) -> dict:
        return digests(emulator, REFERENCE_SCRIPT, cpu=cpu, unpinned=unpinned)

    return reference


@pytest.fixture(scope="module")
def trained_under(tmp_path_factory, emulator):
    shards = write_tiny_shards(tmp_path_factory.mktemp("shards"), train=16, val=4)
    params = merge(yaml.safe_load((PROJECT / "params.yaml").read_text()), TINY_PARAMS)
    params["train"].update(epochs=1)

    def train(environment_isa: str | None = None, *, cpu: str | None = None,
              unpinned: dict | None = None) -> str:
        environment = {"ONEDNN_MAX_CPU_ISA": environment_isa} if environment_isa else None
        return digests(emulator, TRAIN_SCRIPT, str(shards), json.dumps(params), cpu=cpu,
                       unpinned=unpinned, environment=environment)["WEIGHTS"]

    return train


def test_weights_do_not_depend_on_the_cpus_instruction_sets(trained_under):
    pinned = trained_under()
    assert trained_under("AVX512_CORE_AMX") == pinned  # what the widest CPUs would use
    assert trained_under("AVX2") == pinned


@needs_cpuid_fault
def test_weights_do_not_depend_on_the_cpu_model(trained_under):
    pinned = trained_under()
    assert trained_under(cpu="haswell") == pinned
    assert trained_under(cpu="other_caches") == pinned


@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="this CPU has no AVX-512 to differ by")
def test_without_the_cap_avx512_trains_other_weights(trained_under):
    assert (trained_under(unpinned={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"})
            != trained_under(unpinned={"ONEDNN_MAX_CPU_ISA": "AVX2"}))


@needs_cpuid_fault
@pytest.mark.skipif(not ONEDNN_BY_DEFAULT & cpu_flags(),
                    reason="TensorFlow leaves oneDNN off on this CPU too, so nothing differs")
def test_without_onednn_on_a_cpu_with_avx2_alone_trains_other_weights(trained_under):
    tensorflow_default = {"TF_ENABLE_ONEDNN_OPTS": ""}
    assert (trained_under(cpu="haswell", unpinned=tensorflow_default)
            != trained_under(unpinned=tensorflow_default))


@needs_cpuid_fault
def test_synthetic_references_and_products_do_not_depend_on_the_cpu_model(reference_under):
    pinned = reference_under()
    assert reference_under(cpu="haswell") == pinned
    assert reference_under(cpu="other_caches") == pinned


@needs_cpuid_fault
@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="this CPU has no AVX-512 to differ by")
def test_without_the_caps_a_cpu_with_avx2_alone_makes_other_pixels_and_products(reference_under):
    libraries_default = {"OPENCV_IPP": "", "OPENBLAS_CORETYPE": ""}
    haswell = reference_under(cpu="haswell", unpinned=libraries_default)
    this_cpu = reference_under(unpinned=libraries_default)
    assert haswell["PIXELS"] != this_cpu["PIXELS"]
    assert haswell["PRODUCT"] != this_cpu["PRODUCT"]


def test_avx2_kernels_are_asked_for_only_where_the_cpu_has_them(monkeypatch):
    for name in (*runtime.CPU_KERNELS, *runtime.AVX2_KERNELS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"sse4_2", "avx"})
    runtime.pin_cpu_kernels()
    assert all(name not in os.environ for name in runtime.AVX2_KERNELS)
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"sse4_2", "avx", "avx2", "fma"})
    runtime.pin_cpu_kernels()
    assert os.environ["OPENBLAS_CORETYPE"] == "Haswell" and os.environ["OPENCV_IPP"] == "AVX2"
