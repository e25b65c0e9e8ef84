"""``average``: the element-wise mean of the weights of several epoch checkpoints.

Averaging the last few checkpoints of a run (OpenNMT-tf ``average_checkpoints``,
fairseq ``average_checkpoints.py``) smooths out the noise of the final updates. Training
keeps the newest ``train.keep_checkpoints`` ``epoch-N.keras`` files for this; the mean
is written as a weights file that ``translate`` / ``evaluate --weights`` load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from translator.errors import UserError
from translator.prepare import RunPaths
from translator.training import save_weights_atomic
from translator.translator import Translator

AVERAGED_WEIGHTS = "averaged.weights.h5"


def average_checkpoints(
    run_dir: str | Path,
    *,
    last: int | None = None,
    epochs: list[int] | None = None,
    output: str | Path | None = None,
) -> dict:
    """Average the ``last`` N kept epoch checkpoints (or exactly ``epochs``) of a run.

    Float weights are averaged in float64; any other variable keeps the value of the
    newest checkpoint. Returns the epochs averaged and the output path.
    """
    run_dir = Path(run_dir)
    paths = RunPaths(run_dir)
    if not paths.config.is_file():
        raise UserError(f"{run_dir}: not a run dir (no config.yaml); train one first")
    available = paths.epoch_checkpoints()
    if not available:
        raise UserError(f"{paths.checkpoints}: no epoch-N.keras checkpoints; train first")
    if epochs:
        missing = sorted(set(epochs) - set(available))
        if missing:
            raise UserError(
                f"{paths.checkpoints}: no checkpoint for epoch(s) {missing}; kept: "
                f"{sorted(available)} (raise train.keep_checkpoints to keep more)")
        chosen = sorted(set(epochs))
    else:
        n = last if last is not None else len(available)
        if n < 1:
            raise UserError(f"--last must be >= 1, got {n}")
        if len(available) < n:
            raise UserError(
                f"{paths.checkpoints}: {len(available)} epoch checkpoint(s) kept, {n} asked; "
                "lower --last or raise train.keep_checkpoints")
        chosen = sorted(available)[-n:]
    model = Translator.load(run_dir, available[chosen[0]]).model  # holds the first one
    total = [v.astype(np.float64) if v.dtype.kind == "f" else v
             for v in (w.numpy() for w in model.weights)]
    for epoch in chosen[1:]:
        model.load_weights(available[epoch])
        total = [t + w.numpy() if t.dtype.kind == "f" else w.numpy()
                 for t, w in zip(total, model.weights, strict=True)]
    for w, t in zip(model.weights, total, strict=True):
        w.assign((t / len(chosen)).astype(w.dtype) if t.dtype.kind == "f" else t)
    out = Path(output) if output else paths.checkpoints / AVERAGED_WEIGHTS
    if not out.name.endswith(".weights.h5"):
        raise UserError(f"{out}: the output name must end in .weights.h5 (Keras requires it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights_atomic(model, out)
    return {"run_dir": str(run_dir), "epochs": chosen, "output": str(out)}
