"""Looking inside models: explanations and anatomy (explain, inspect, overlay) and the run report.

Submodules are imported on demand (``from tfcnn.vis.explain import gradcam``) so that importing the
package does not pull in TensorFlow or matplotlib.
"""
