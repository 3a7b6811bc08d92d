"""Distributed data parallel training through Lightning's DDP, on the CPU with 2 processes.

``_ddp_child.py`` fits the same seeded model once in one process (minibatch 64) and once on
two gloo processes (32 cells each: the same global minibatch). The shards are disjoint and
cover every cell, every rank takes the same steps and ends with the same model, early
stopping stops every rank at the same epoch, and the held-out ELBO is the single process's
within noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scvae
from scvae.data import read_training_data
from scvae.minibatch import CSRMinibatches

CHILD = Path(__file__).with_name("_ddp_child.py")


def _fit(out: Path, world: int, batch_size: int, *, backed: bool = False) -> list[dict]:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    options = [str(world), str(batch_size), "150", "10", "3", *(["backed"] if backed else [])]
    run = subprocess.run(
        [sys.executable, str(CHILD), str(out), *options],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One process, minibatch 64, in memory: the reference of both DDP runs."""
    (record,) = _fit(tmp_path_factory.mktemp("ddp") / "one", 1, 64)
    return record


@pytest.mark.slow
@pytest.mark.parametrize("backed", [False, True], ids=["in_memory", "backed"])
def test_ddp_on_two_cpu_processes_matches_one_process(
    tmp_path: Path, single: dict, backed: bool
) -> None:
    ranks = _fit(tmp_path / "two", 2, 32, backed=backed)
    zero, one = ranks
    # disjoint shards that cover every training and validation cell
    for part in ("train", "validation"):
        a, b = set(zero[f"{part}_shard"]), set(one[f"{part}_shard"])
        assert not a & b
        assert sorted(a | b) == single[f"{part}_indices"]
    assert zero["steps_per_epoch"] == one["steps_per_epoch"] == single["steps_per_epoch"]
    assert zero["validation_batches"] == one["validation_batches"]
    # the same model on every rank; reduced validation ELBO, so early stopping agrees
    assert zero["world_size"] == one["world_size"] == 2
    assert zero["latent_md5"] == one["latent_md5"]
    assert zero["history_validation_elbo"] == one["history_validation_elbo"]
    assert zero["n_epochs_trained"] == one["n_epochs_trained"] < 150  # it stopped early
    assert zero["best_epoch"] == one["best_epoch"]
    assert zero["reloaded_latent_equal"]
    # within noise of one process with the same global minibatch: measured differences of
    # 2.0, 1.1 and 0.2 nats/cell (1.4 % at most) for seeds 3, 4, 5, most of it from where
    # early stopping ended each run
    assert abs(zero["held_out_elbo"] - single["held_out_elbo"]) < 0.025 * abs(
        single["held_out_elbo"]
    )


def test_shards_are_disjoint_cover_the_cells_and_take_equal_steps(sim) -> None:
    _, data = read_training_data(sim, layer=None, batch_key="batch")
    cells = np.arange(3, 401 - 4)  # 394 cells: shards of 132, 131, 131
    world = 3
    shards = [
        CSRMinibatches(data, cells, batch_size=20, shuffle=True, drop_last=True, seed=2).shard(
            r, world
        )
        for r in range(world)
    ]
    held = [set(s.cells.tolist()) for s in shards]
    assert set().union(*held) == set(cells.tolist())
    assert sum(len(h) for h in held) == len(cells)
    assert len({len(s) for s in shards}) == 1  # the same number of steps on every rank
    for shard, mine in zip(shards, held, strict=True):
        served = [b.n_cells for b in shard]
        assert sum(served) == shard.n_cells_per_epoch == len(cells) // world
        # the counts served are those of the shard's own cells
        first = next(iter(CSRMinibatches(data, np.array(sorted(mine)), batch_size=500,
                                         shuffle=False)))  # fmt: skip
        assert first.x.sum() == sum(
            b.x.sum() for b in CSRMinibatches(data, np.array(sorted(mine)), batch_size=7,
                                              shuffle=False)
        )  # fmt: skip
    validation = [
        CSRMinibatches(data, cells, batch_size=50, shuffle=False).shard(r, world)
        for r in range(world)
    ]
    assert len({len(v) for v in validation}) == 1
    assert sum(b.n_cells for v in validation for b in v) == len(cells)


def test_a_shard_serves_its_cells_counts(sim) -> None:
    _, data = read_training_data(sim, layer=None, batch_key="batch")
    cells = np.arange(sim.n_obs)
    shard = CSRMinibatches(data, cells, batch_size=1000, shuffle=False).shard(1, 2)
    (batch,) = list(shard)
    np.testing.assert_array_equal(batch.x.numpy(), sim.X[1::2].toarray())
    np.testing.assert_array_equal(batch.batch_index.numpy(), data.batch_index[1::2])


def test_spawning_strategies_are_refused_with_the_way_out(sim) -> None:
    model = scvae.NBVAE(sim, n_latent=2, n_hidden=8)
    with pytest.raises(ValueError, match="strategy='ddp' in a script"):
        model.fit(max_epochs=1, strategy="ddp_spawn", progress_bar=False)
    with pytest.raises(ValueError, match="num_nodes"):
        model.fit(max_epochs=1, num_nodes=0, progress_bar=False)
