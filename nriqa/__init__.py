"""nriqa: no-reference image quality assessment, from data to a served model."""

from nriqa.tf_startup import pin_cpu_kernels, quiet_tensorflow_start

# Before any stage, the CLI or the service imports TensorFlow (through Keras or directly).
pin_cpu_kernels()
quiet_tensorflow_start()

__version__ = "0.1.0"
