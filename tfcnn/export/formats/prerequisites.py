"""What several formats need built first, once per export: batch-1 mobile wrappers and calibration data.

Each is a :class:`~tfcnn.export.formats.base.Prerequisite`; a format lists the names in its
``needs`` and the exporter builds exactly the ones the chosen formats need, in this order.
"""

from __future__ import annotations

from pathlib import Path

from tfcnn.errors import ExportError
from tfcnn.export.formats.base import PREREQUISITES, BuildContext, Prerequisite


def _mobile(dtype_name: str):
    def build(ctx: BuildContext) -> Path:
        import tensorflow as tf

        from tfcnn.export.wrapper import mobile_archive

        path = ctx.scratch / f"mobile_{dtype_name}"
        mobile_archive(ctx.model, getattr(tf, dtype_name), ctx.task).write_out(str(path), verbose=False)
        return path

    return build


def _representative(ctx: BuildContext):
    from tfcnn.export import tflite as tflite_mod
    from tfcnn.export.source import bundle_of

    x_train = bundle_of(ctx.run).arrays["train"][0]
    g = ctx.geometry
    if tuple(x_train.shape[1:3]) != (g.height, g.width):
        raise ExportError(f"training images are {x_train.shape[1:]}, the model expects {g.height}x{g.width}")
    return tflite_mod.representative_images(x_train, ctx.ecfg.representative_samples, ctx.cfg.data.seed)


PREREQUISITES.register("mobile_uint8", Prerequisite("mobile_uint8", "mobile wrapper (uint8 in)", _mobile("uint8")))
PREREQUISITES.register("mobile_float32", Prerequisite("mobile_float32", "mobile wrapper (float32 in)", _mobile("float32")))
PREREQUISITES.register(
    "representative",
    Prerequisite(
        "representative", "representative data", _representative, detail=lambda rep: f"{len(rep) - 1} training images + 1 range pin"
    ),
)
