"""`tfcnn tune PIPELINE`: a KerasTuner search (random, Bayesian, Hyperband) where each trial is a run.

Why trials are whole runs and not KerasTuner's usual ``build(hp) -> model``: a trial then
trains with tfcnn's own engines, data pipeline, checks and records, so its run directory can be
evaluated, exported, compared (``tfcnn runs DIR/trials``) and resumed like any other, and the
search can cover any setting of the pipeline file (data, model, training), not only the model.
KerasTuner keeps the oracle (which values to try next) and its state on disk; tfcnn only runs
each trial (:class:`PipelineTuner.run_trial`) and reports the best validation value of the
chosen history column. The test split is never looked at when choosing.

Layout under the output directory (default ``runs/<name>_tune``)::

    trials/<trial id>/    a run directory per trial (config.json, metrics.json, model.keras, ...)
    tuner/                KerasTuner's oracle state (what makes an interrupted search resume)
    results.csv           one row per trial: its values, the objective, the test score, status
    best.toml             the best trial's settings as a pipeline file `tfcnn run` accepts as is

Hyperband trains each trial from scratch for the epochs its bracket gives it (``train.epochs``
is the largest budget); KerasTuner's warm start from a lower bracket's weights is not used.
"""

from __future__ import annotations

import copy
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfcnn import config as config_mod
from tfcnn.config import TUNE_DISTRIBUTIONS, PipelineConfig
from tfcnn.errors import ConfigError, TfcnnError
from tfcnn.run import Metrics, Run
from tfcnn.util import ensure_dir, log, write_text


@dataclass(frozen=True)
class Dimension:
    """One searched setting: its dotted key, distribution and bounds (or choices)."""

    key: str
    kind: str  # one of TUNE_DISTRIBUTIONS
    values: tuple

    @property
    def name(self) -> str:
        return self.key  # KerasTuner's hyperparameter name


def parse_space(cfg: PipelineConfig) -> list[Dimension]:
    """The ``[tune]`` search space, checked against the config before any trial starts.

    Each key must be a setting of the pipeline file, each distribution one of
    TUNE_DISTRIBUTIONS with sensible bounds, and every bound (every choice) must itself be a
    valid value of that setting: the same config checks a trial would hit, one line, at once.
    """
    if not cfg.tune.space:
        raise ConfigError(
            "tune: the [tune] section searches nothing; add settings to search, e.g. "
            "train.learning_rate = {log_uniform = [1e-4, 1e-2]} or model.width = {choice = [0.5, 1.0]}"
        )
    base = config_mod.to_dict(cfg)
    dims = []
    for key, spec in cfg.tune.space.items():
        where = f"tune.{key}"
        if key.split(".")[0] == "tune":
            raise ConfigError(f"{where}: the tuner's own settings cannot be searched")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in TUNE_DISTRIBUTIONS:
            raise ConfigError(
                f"{where} = {spec!r} must be one distribution: {{log_uniform = [lo, hi]}}, {{uniform = [lo, hi]}}, "
                "{int = [lo, hi]} (or [lo, hi, step]), or {choice = [a, b, ...]}"
            )
        kind, raw = next(iter(spec.items()))
        values = tuple(raw) if isinstance(raw, list) else (raw,)
        _check_bounds(where, kind, values)
        for v in values if kind == "choice" else values[:2]:
            _check_value(base, key, v, where)
        dims.append(Dimension(key, kind, values))
    return dims


def _check_bounds(where: str, kind: str, values: tuple) -> None:
    if kind == "choice":
        if len(values) < 2 or len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}: choice needs at least two different values, got {list(values)}")
        return
    n = 3 if kind == "int" else 2
    if len(values) not in ((2, 3) if kind == "int" else (2,)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}: {kind} needs [lo, hi]{' or [lo, hi, step]' if n == 3 else ''} numbers, got {list(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{where}: {kind} bounds must be finite numbers, got {list(values)}")
    lo, hi = values[0], values[1]
    if not lo < hi:
        raise ConfigError(f"{where}: {kind} needs lo < hi, got [{lo}, {hi}]")
    if kind == "log_uniform" and lo <= 0:
        raise ConfigError(f"{where}: log_uniform needs lo > 0, got {lo}")
    if kind == "int" and not all(float(v).is_integer() for v in values):
        raise ConfigError(f"{where}: int needs whole numbers, got {list(values)}")


def _with(base: dict, key: str, value: Any) -> dict:
    data = copy.deepcopy(base)
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"tune.{key}: {part!r} is not a section of the pipeline file")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"tune.{key}: {parts[-1]!r} is not a setting of [{'.'.join(parts[:-1]) or 'the top level'}]")
    node[parts[-1]] = value
    return data


def _check_value(base: dict, key: str, value: Any, where: str) -> None:
    try:
        config_mod.from_dict(config_mod._drop_none(_with(base, key, value)))
    except ConfigError as exc:
        raise ConfigError(f"{where}: the value {value!r} is not valid there: {exc}") from None


def trial_config(cfg: PipelineConfig, values: dict[str, Any], epochs: int | None = None) -> PipelineConfig:
    """The pipeline config of one trial: the base with the trial's values (and Hyperband's budget)."""
    data = config_mod.to_dict(cfg)
    for key, value in values.items():
        data = _with(data, key, value)
    if epochs is not None:
        data["train"]["epochs"] = int(epochs)
    data["export"]["enabled"] = False  # a trial is compared, not shipped: `tfcnn run best.toml` ships
    data["report"] = False
    return config_mod.from_dict(config_mod._drop_none(data))


def direction(cfg: PipelineConfig) -> str:
    d = cfg.tune.direction
    return d if d != "auto" else ("min" if cfg.tune.objective.endswith("loss") else "max")


def objective_value(run: Run, objective: str, how: str) -> float:
    """The best value of history column ``objective`` (best = max or min) over the trial's epochs."""
    history = run.read_history()
    if objective not in history:
        raise TfcnnError(
            f"tune.objective = {objective!r} is not a column of {run.path('history')}; it has {', '.join(sorted(history))}"
        )
    finite = [v for v in history[objective] if math.isfinite(v)]
    if not finite:
        raise TfcnnError(f"trial {run.root.name}: {objective} was never finite")
    return max(finite) if how == "max" else min(finite)


def _hyperparameters(dims: list[Dimension]):
    import keras_tuner as kt

    hp = kt.HyperParameters()
    for d in dims:
        if d.kind == "choice":
            hp.Choice(d.name, list(d.values))
        elif d.kind == "int":
            hp.Int(d.name, int(d.values[0]), int(d.values[1]), step=int(d.values[2]) if len(d.values) == 3 else 1)
        else:
            hp.Float(d.name, float(d.values[0]), float(d.values[1]), sampling="log" if d.kind == "log_uniform" else "linear")
    return hp


def _oracle(cfg: PipelineConfig, dims: list[Dimension]):
    import keras_tuner as kt

    tc = cfg.tune
    objective = kt.Objective(tc.objective, direction(cfg))
    common = dict(objective=objective, hyperparameters=_hyperparameters(dims), seed=tc.seed, tune_new_entries=False)
    if tc.algorithm == "random":
        return kt.oracles.RandomSearchOracle(max_trials=tc.max_trials, **common)
    if tc.algorithm == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=tc.max_trials, **common)
    return kt.oracles.HyperbandOracle(max_epochs=cfg.train.epochs, factor=tc.hyperband_factor, **common)


def _tuner_class():
    import keras_tuner as kt

    class PipelineTuner(kt.engine.base_tuner.BaseTuner):
        """Each trial is ``train_stage`` on its own run directory; returns the objective."""

        def __init__(self, cfg: PipelineConfig, trials_dir: Path, **kwargs: Any):
            self.cfg, self.trials_dir = cfg, trials_dir
            super().__init__(**kwargs)

        def run_trial(self, trial, *args: Any, **kwargs: Any) -> dict[str, float]:
            from tfcnn.pipeline import train_stage

            values = {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
            epochs = trial.hyperparameters.values.get("tuner/epochs")
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            log.info("tune: trial %s: %s%s", trial.trial_id, shown, f" ({epochs} epochs)" if epochs else "")
            try:
                tcfg = trial_config(self.cfg, values, epochs)
                run = Run.create(self.trials_dir / str(trial.trial_id))
                train_stage(tcfg, run)
                value = objective_value(run, self.cfg.tune.objective, direction(self.cfg))
            except TfcnnError as exc:  # this trial's values cannot train: record why and go on
                log.warning("tune: trial %s failed: %s", trial.trial_id, exc)
                raise kt.errors.FailedTrialError(str(exc)) from None
            log.info("tune: trial %s: %s = %.4f", trial.trial_id, self.cfg.tune.objective, value)
            return {self.cfg.tune.objective: value}

        def save_model(self, trial_id, model, step=0) -> None:  # the trial's run directory has model.keras
            return None

        def load_model(self, trial):  # pragma: no cover - not used: load trials/<id>/model.keras
            raise NotImplementedError("load trials/<id>/model.keras")

    return PipelineTuner


def default_out(cfg: PipelineConfig) -> Path:
    return (Path(cfg.out_dir).parent if cfg.out_dir else Path("runs")) / f"{cfg.name}_tune"


def tune(cfg: PipelineConfig, out: Path | None = None, *, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the search; write results.csv and best.toml; return a summary."""
    from tfcnn.pipeline import validate

    validate(cfg)
    dims = parse_space(cfg)
    out = Path(out) if out is not None else default_out(cfg)
    state = out / "tuner"
    if state.exists() and not overwrite:
        log.info("tune: resuming the search in %s (pass --overwrite to start again)", out)
    ensure_dir(out)
    trials_dir = ensure_dir(out / "trials")
    tuner = _tuner_class()(
        cfg, trials_dir, oracle=_oracle(cfg, dims), directory=str(out), project_name="tuner", overwrite=overwrite
    )
    tuner.search()
    rows = results(tuner, cfg, trials_dir, dims)
    write_text(out / "results.csv", _csv(rows, dims))
    done = [r for r in rows if r["objective"] is not None]
    if not done:
        raise TfcnnError(f"tune: no trial finished (see {out / 'results.csv'} for each trial's status and reason)")
    best = max(done, key=lambda r: r["objective"]) if direction(cfg) == "max" else min(done, key=lambda r: r["objective"])
    best_cfg = trial_config(cfg, best["values"], best["epochs"])
    best_cfg = config_mod.from_dict(config_mod._drop_none({
        **config_mod.to_dict(best_cfg),
        "export": config_mod.to_dict(cfg.export), "report": cfg.report, "out_dir": None,
    }))
    header = (
        f"best of {len(done)} finished trials (tfcnn tune, {cfg.tune.algorithm}): trial {best['trial']}, "
        f"{cfg.tune.objective} = {best['objective']:.4f}\n"
        + "".join(f"{k} = {v!r}\n" for k, v in best["values"].items())
        + f"run it with: tfcnn run {out / 'best.toml'}"
    )
    write_text(out / "best.toml", config_mod.dumps(best_cfg, header=header, skip=("tune",)))
    log.info("tune: best trial %s: %s = %.4f -> %s", best["trial"], cfg.tune.objective, best["objective"], out / "best.toml")
    return {"out": str(out), "trials": len(rows), "finished": len(done), "best": best, "best_file": str(out / "best.toml")}


def results(tuner, cfg: PipelineConfig, trials_dir: Path, dims: list[Dimension]) -> list[dict[str, Any]]:
    """One row per trial the oracle knows, in the order they started."""
    rows = []
    oracle = tuner.oracle
    for trial_id in oracle.start_order:
        trial = oracle.trials[trial_id]
        values = {d.key: trial.hyperparameters.values[d.key] for d in dims if d.key in trial.hyperparameters.values}
        metric = trial.metrics.get_best_value(cfg.tune.objective) if trial.metrics.exists(cfg.tune.objective) else None
        run = Run(trials_dir / str(trial_id))
        test = None
        try:
            m = run.read_optional(Metrics)
            test = m.scores.get("test_accuracy") if m else None
        except TfcnnError:
            pass
        message = (trial.message or "").strip().splitlines()
        rows.append({
            "trial": str(trial_id), "status": str(trial.status), "values": values,
            "epochs": trial.hyperparameters.values.get("tuner/epochs"), "objective": metric, "test_accuracy": test,
            "reason": message[-1] if message and str(trial.status) != "COMPLETED" else "",
        })
    return rows


def _csv(rows: list[dict[str, Any]], dims: list[Dimension]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["trial", "status", *[d.key for d in dims], "epochs", "objective", "test_accuracy", "reason"])
    for r in rows:
        w.writerow([r["trial"], r["status"], *[r["values"].get(d.key, "") for d in dims], r["epochs"] or "",
                    "" if r["objective"] is None else r["objective"], "" if r["test_accuracy"] is None else r["test_accuracy"],
                    r["reason"]])
    return buf.getvalue()
