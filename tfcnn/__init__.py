"""tfcnn: Keras functional CNNs from tf.data to TF Serving, LiteRT and CoreML, with verified exports.

Stages live in subpackages and hand off through the run directory (:mod:`tfcnn.rundir`):
config -> data -> models -> train -> evaluate -> export -> verify -> vis (report).
"""

import os as _os

# TensorFlow's x86 wheels enable oneDNN's kernels only on CPUs with AVX512-VNNI/BF16 or AMX.
# On AVX2-only CPUs they train the main job's model about 1.5x faster (bench/onednn.py), so
# tfcnn opts in unless the user already chose. The flag is read when TensorFlow loads: it has
# no effect if TensorFlow was imported before tfcnn.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
