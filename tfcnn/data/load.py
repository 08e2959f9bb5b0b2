"""`load_data`: turn ``data.source`` into a DataBundle, whatever the source; `bundle_for`: once per run.

The kinds of ``data.source`` and their loaders are registered in :mod:`tfcnn.data.sources`;
every loader ends in :func:`tfcnn.data.inmemory.from_arrays`, so validation, size/channel
conversion, splitting, statistics and the tf.data pipelines are the same for all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tfcnn.config import DataConfig
from tfcnn.data.sources import parse_source

if TYPE_CHECKING:
    from tfcnn.data.bundle import DataBundle
    from tfcnn.run import Run


def load_data(cfg: DataConfig) -> "DataBundle":
    """Load, validate, convert and split ``cfg.source`` through its registered kind.

    The kind's no-I/O check runs first (the same one :func:`tfcnn.config.validate` runs), so a
    direct caller gets the same one-line ConfigError as a pipeline file would.
    """
    source, arg = parse_source(cfg.source)
    if source.check is not None:
        source.check(cfg, arg)
    return source.load(cfg, arg)


def bundle_for(run: "Run") -> "DataBundle":
    """The run's data bundle, decoded once per process and shared through ``run.memo``
    (training, int8 calibration, verification and the report all get this one copy)."""
    def load() -> "DataBundle":
        from tfcnn.data.holdout import hold_out_class

        cfg = run.config()
        return hold_out_class(load_data(cfg.data), cfg)  # unchanged unless a class is held out

    return run.memo("data_bundle", load)
