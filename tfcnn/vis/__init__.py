"""Everything drawn: the figures of a run (figures), explanations and anatomy (explain, inspect),
the figure toolkit (plots, campanels) and the run report.

Submodules are imported on demand (``from tfcnn.vis.explain import gradcam``) so that importing the
package does not pull in TensorFlow or matplotlib.
"""
