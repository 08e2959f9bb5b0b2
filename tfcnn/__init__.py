"""tfcnn: Keras functional CNNs from tf.data to TF Serving, LiteRT and CoreML, with verified exports.

Stages live in subpackages and hand off through the run directory (:mod:`tfcnn.rundir`):
config -> data -> models -> train -> evaluate -> export -> verify -> vis (report).
"""

__version__ = "0.1.0"
