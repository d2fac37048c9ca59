"""Data-parallel training: each process's share of the batches, and a real 2-process torchrun
run on CPU (gloo) against a single-process one."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import mlflow
import pytest
import torch

from training.config import TrainConfig
from training.engine.distributed import World
from training.engine.loop import batches, steps_per_epoch
from training.pipeline.run import train
from zoo import names
from zoo.data import PKBatchSampler, Split
from zoo.losses import create_loss

LABELS = torch.arange(10).repeat_interleave(20)  # 10 classes x 20 samples


def test_pair_loss_processes_take_alternate_class_balanced_batches() -> None:
    whole = list(PKBatchSampler(LABELS, batch_size=16, k=4, seed=3))
    shares = [list(PKBatchSampler(LABELS, batch_size=16, k=4, seed=3, num_replicas=2, rank=r))
              for r in (0, 1)]
    # one sequence drawn from the seed, dealt out in turn: as many batches on each process
    assert shares[0] == whole[0::2] and shares[1] == whole[1::2]
    assert len(shares[0]) == len(shares[1]) == 200 // (16 * 2)
    for batch in shares[0] + shares[1]:
        assert sorted(Counter(LABELS[batch].tolist()).values()) == [4, 4, 4, 4]
    with pytest.raises(ValueError, match="rank"):
        PKBatchSampler(LABELS, batch_size=16, k=4, num_replicas=2, rank=2)


def test_shuffled_batches_are_disjoint_shares_of_one_epoch() -> None:
    split = Split(x=torch.randn(len(LABELS), 4), y=LABELS)
    cfg = TrainConfig.of(batch_size=16)
    loss = create_loss("softmax", 10, 8)
    worlds = [World(rank=r, size=2) for r in (0, 1)]
    shares = [torch.cat(list(batches(split, cfg, loss, epoch=2, world=w))) for w in worlds]
    counts = [len(list(batches(split, cfg, loss, epoch=2, world=w))) for w in worlds]
    assert counts[0] == counts[1] == steps_per_epoch(split, cfg, loss, worlds[0]) == 100 // 16
    assert not set(shares[0].tolist()) & set(shares[1].tolist())
    again = torch.cat(list(batches(split, cfg, loss, epoch=2, world=worlds[0])))
    assert torch.equal(shares[0], again)  # the epoch, not chance, decides the order
    other = torch.cat(list(batches(split, cfg, loss, epoch=3, world=worlds[0])))
    assert not torch.equal(shares[0], other)


def test_learning_rate_grows_with_the_world_as_configured() -> None:
    world = World(rank=0, size=4)
    assert [world.lr_factor(s) for s in ("linear", "sqrt", "none")] == [4.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="lr_scaling='cubic'"):
        world.lr_factor("cubic")
    with pytest.raises(ValueError, match="lr_scaling='cubic' is not one of linear, sqrt"):
        TrainConfig.of(lr_scaling="cubic")


def test_nproc_without_torchrun_says_how_to_start_it(tracking_uri: str) -> None:
    with pytest.raises(ValueError, match=r"python -m training\.commands\.train --nproc 2"):
        train(TrainConfig.of(nproc=2, epochs=1))
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")
    # entry points whose runs train in one process each refuse it as they are configured
    from training.pipeline.distill import DistillConfig
    from training.pipeline.sweep import SweepConfig
    from training.pipeline.tune import TuneConfig

    for cls, why in ((SweepConfig, "a sweep trains `workers` combinations at once"),
                     (TuneConfig, "tune trains one trial at a time"),
                     (DistillConfig, "a student trains in one process")):
        with pytest.raises(ValueError, match=f"nproc=2 is for single runs .-e train.; {why}"):
            cls.of(nproc=2)


ARGS = dict(model="mobilenetv3_small_100", loss="arcface", image_size=16, embedding_dim=32,
            epochs=1, log_model=False, plots=False)


@pytest.mark.slow
def test_two_processes_log_one_run_like_one_process(tracking_uri: str) -> None:
    single = train(TrainConfig.of(**ARGS, experiment="single"))
    flags = [a for k, v in ARGS.items() for a in (f"--{k}", str(v).lower())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core each (the tests ask torch for 2)
    proc = subprocess.run([sys.executable, "-m", "training.commands.train", *flags, "--nproc", "2",
                           "--experiment", "ddp"], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    [run] = mlflow.search_runs(experiment_names=["ddp"], output_format="list")  # rank 0's only
    one = mlflow.MlflowClient().get_run(single.run_id)
    assert run.info.status == "FINISHED"
    assert set(run.data.params) == set(one.data.params)
    assert set(run.data.metrics) == set(one.data.metrics)
    assert (run.data.params["nproc"], run.data.params["world_size"]) == ("2", "2")
    assert one.data.params["world_size"] == "1"
    # linear scaling: the same schedule at twice the peak
    client = mlflow.MlflowClient()
    lr = [client.get_metric_history(r, "lr")[0].value for r in (run.info.run_id, single.run_id)]
    assert lr[0] == pytest.approx(2 * lr[1])
    digests = run.data.tags[names.DDP_CHECKSUMS_TAG].split(",")
    assert len(digests) == 2 and digests[0] == digests[1]  # the two replicas ended identical
    assert run.data.metrics["test_precision_at_1"] > 0.2  # it learned (chance: 0.1)
