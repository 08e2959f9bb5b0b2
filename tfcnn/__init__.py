"""tfcnn: Keras functional CNNs from tf.data to TF Serving, LiteRT, ONNX and CoreML, with verified exports.

Stages live in subpackages and hand off through the run directory (:class:`tfcnn.run.Run`), in
one direction: config -> util/run -> data -> models -> tasks -> train -> evaluate -> export ->
vis -> pipeline/cli (``tests/test_layering.py`` enforces it).
"""

import os as _os

# TensorFlow's x86 wheels enable oneDNN's kernels by default only on CPUs with AVX512-VNNI/BF16
# or AMX. They trained the main job's model 1.56x faster in a train-step probe on an AVX2-only
# 2-vCPU EPYC, and 1.32x on an AVX512 one (bench/onednn.py), so tfcnn opts in unless the user
# already chose. The flag is read when TensorFlow loads: no effect if it was imported first.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
