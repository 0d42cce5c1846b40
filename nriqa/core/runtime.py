"""What a process of the project settles before it does any work: `configure()`, called first by
every entry point (the stages, the command line, the service). It pins the CPU kernels that
TensorFlow, OpenCV and OpenBLAS may use, keeps TensorFlow's start-up banners out of the logs,
and makes MLflow's HTTP client fail in seconds. Importing nriqa sets none of this.

The same data, weights and metrics on any x86-64 machine, in four parts, all set by
`pin_cpu_kernels` for every process of the project (stages, CLI, service), whatever the
environment says:
- oneDNN picks its kernels by the widest instruction set the CPU has (AVX2, AVX-512, AMX), and
  kernels of other widths sum in another order, so the same training gave other weights on a
  machine with AVX-512 than on one without: oneDNN is capped at AVX2, which every x86-64 server
  and desktop of the last decade has;
- TensorFlow turns oneDNN on by default only where CPUID shows AVX-512 VNNI, BF16 or AMX, and
  runs its Eigen kernels elsewhere (other sums, and 1.6 to 2 times slower here): on a CPU with
  AVX2 alone the same training gave other weights again. oneDNN is turned on everywhere
  (TF_ENABLE_ONEDNN_OPTS=1);
- OpenCV calls Intel's IPP, which picks its code by the CPU as well: its AVX-512 and AVX2 cubic
  resizes round differently, so one synthetic reference (the upscaled cat) and its 77 distorted
  images differed between the two. IPP is capped at AVX2 too (OPENCV_IPP=AVX2, read at OpenCV's
  first IPP call);
- OpenBLAS (NumPy's and SciPy's) picks its matrix kernels by the CPU too, and its AVX-512 and
  AVX2 products differ in the last bits: the BRISQUE baseline's predictions did. It is held to
  its Haswell (AVX2) kernels (OPENBLAS_CORETYPE=Haswell, read when NumPy loads it: the stages
  call `configure()` before importing it).
IPP and OpenBLAS are held to AVX2 only where the CPU has it: unlike oneDNN's cap, they would
run AVX2 kernels on a CPU without it. A fifth part no setting reaches: TensorFlow's Rsqrt starts
from the CPU's approximate RSQRTPS, which AMD and Intel build differently, so the network's
normalization layers divide by a square root instead (nriqa.model.normalization).

On import and on first looking for devices, TensorFlow's C++ side prints to stderr that oneDNN
is on, which CPU instructions it could use, that no CUDA driver was found and, on a machine
with the CUDA libraries but no NVIDIA driver, "failed call to cuInit: ... CUDA error". A user
reads that as a fault. Most of it is printed before TensorFlow reads TF_CPP_MIN_LOG_LEVEL, so
no setting silences it: instead, the first `import tensorflow` (by Keras or anything else) runs
with stderr captured at the file-descriptor level, and every line that is not one of these
known banners is passed on. Real warnings and errors stay; the cuInit failure stays too where
an NVIDIA driver is installed, since there a GPU was expected. TF_CPP_MIN_LOG_LEVEL is left
alone, so later warnings still show. Set NRIQA_TF_BANNERS=1 to see everything.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path

BANNERS = [
    r"oneDNN custom operations are on",
    r"All log messages before absl::InitializeLog\(\) is called",
    r"Could not find cuda drivers on your machine",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .* rebuild TensorFlow",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"TF-TRT Warning: Could not find TensorRT",
]
NO_GPU_EXPECTED = [r"failed call to cuInit"]


def banner_pattern(gpu_expected: bool) -> re.Pattern:
    return re.compile("|".join(BANNERS + ([] if gpu_expected else NO_GPU_EXPECTED)))


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern):
    """Capture file descriptor 2 (C++ writes there too) and pass on the lines `noise` misses."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not noise.search(line)))
            sys.stderr.flush()


class _QuietLoader:
    """Runs TensorFlow's own loader, and its device discovery (where cuInit fails), filtered."""

    def __init__(self, loader, noise: re.Pattern):
        self.loader, self.noise = loader, noise

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with filtered_stderr(self.noise):
            self.loader.exec_module(module)
            # Device discovery would happen at the first op anyway; a failure surfaces there.
            with contextlib.suppress(Exception):
                module.config.list_physical_devices()


class _QuietFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once, and not for the look-up below
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            gpu_expected = os.path.exists("/proc/driver/nvidia/version")
            spec.loader = _QuietLoader(spec.loader, banner_pattern(gpu_expected))
        return spec


# oneDNN's name for the widest instruction set it may use; read when its first kernel is made.
CPU_ISA = "AVX2"
# What every process sets before TensorFlow starts (see the module's docstring).
CPU_KERNELS = {"ONEDNN_MAX_CPU_ISA": CPU_ISA, "TF_ENABLE_ONEDNN_OPTS": "1"}
# IPP and OpenBLAS run the kernels they are told to even where the CPU lacks them (oneDNN's cap
# is only an upper bound), so these are set where the CPU has AVX2 and FMA.
AVX2_KERNELS = {"OPENCV_IPP": CPU_ISA, "OPENBLAS_CORETYPE": "Haswell"}

# MLflow retries a failing HTTP request 7 times with exponential backoff (minutes in all) and
# waits 120 s for each answer. A pipeline stage should fail in seconds instead; a user who wants
# patience sets these variables themselves, and their values win.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup's CPU quota (a
    container limited to 4 CPUs on a 64-core host has 4), not the host's count."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()  # cgroup v2
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))
    return count


def configure() -> None:
    """Settle this process before TensorFlow or MLflow start; safe to call more than once."""
    pin_cpu_kernels()
    quiet_tensorflow_start()
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def pin_cpu_kernels() -> None:
    os.environ.update(CPU_KERNELS)
    if {"avx2", "fma"} <= cpu_flags():
        os.environ.update(AVX2_KERNELS)


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where it does not)."""
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as cpuinfo:
        return set(next(line for line in cpuinfo if line.startswith("flags")).split(":")[1].split())
    return set()


def quiet_tensorflow_start() -> None:
    """Filter the banners of the first TensorFlow import in this process (if still to come)."""
    if "tensorflow" in sys.modules or os.environ.get("NRIQA_TF_BANNERS") == "1":
        return
    if not any(isinstance(finder, _QuietFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())
