"""fit(checkpoint_dir=...): a fit killed with SIGKILL resumes and ends as if never killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest

import scvae

CHILD = Path(__file__).with_name("_checkpoint_child.py")


def _run(directory: str, out: Path, *, kill_after_checkpoint: bool = False) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, str(CHILD), directory, str(out)], env=env)
    if kill_after_checkpoint:
        ckpt = Path(directory) / "last.ckpt"
        deadline = time.monotonic() + 120
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # a few more epochs, then the kill lands anywhere, mid-save too
        proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=300)


@pytest.mark.slow
def test_a_killed_fit_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    reference = tmp_path / "reference.json"
    assert _run("-", reference) == 0
    directory = tmp_path / "ckpt"
    killed = _run(str(directory), tmp_path / "killed.json", kill_after_checkpoint=True)
    assert killed == -signal.SIGKILL
    assert (directory / "last.ckpt").exists()
    assert not (tmp_path / "killed.json").exists()
    resumed = tmp_path / "resumed.json"
    assert _run(str(directory), resumed) == 0
    a, b = json.loads(reference.read_text()), json.loads(resumed.read_text())
    assert b["training"]["resumed"] is True and a["training"]["resumed"] is False
    assert b["epochs"] == a["epochs"]  # no epoch lost or repeated
    assert b["validation_elbo"] == a["validation_elbo"]
    assert b["weights"] == a["weights"]
    assert not (directory / "last.ckpt").exists()  # removed once the fit completed


def test_a_checkpoint_of_another_fit_is_refused(tmp_path: Path) -> None:
    adata = scvae.datasets.simulate(n_cells=80, n_genes=20, seed=0)
    model = scvae.NBVAE(adata, n_hidden=8, n_latent=2)

    # a fit interrupted by Ctrl-C keeps its checkpoint

    class CtrlC(pl.Callback):
        def on_train_epoch_end(self, trainer, plan) -> None:
            if plan.current_epoch == 1:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.warns(UserWarning, match="interrupted"):
        model.fit(max_epochs=10, progress_bar=False, checkpoint_dir=tmp_path, callbacks=[CtrlC()])
    assert (tmp_path / "last.ckpt").exists()
    with pytest.raises(ValueError, match=r"checkpoint of another fit .*fit options"):
        model.fit(max_epochs=11, progress_bar=False, checkpoint_dir=tmp_path)
    other = scvae.NBVAE(adata, n_hidden=8, n_latent=3)
    with pytest.raises(ValueError, match=r"checkpoint of another fit .*model options"):
        other.fit(max_epochs=10, progress_bar=False, checkpoint_dir=tmp_path)
    (tmp_path / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="damaged or not an scvae checkpoint"):
        model.fit(max_epochs=10, progress_bar=False, checkpoint_dir=tmp_path)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        model.fit(max_epochs=10, progress_bar=False, checkpoint_dir=afile)
