import json

import pytest
import torch

from worker.engine import checkpoints as ck
from worker.engine.config import preset
from worker.engine.sparsity import sparse_params, target_nonzeros
from worker.engine.train import TrainError, train


def losses(folder):
    return [json.loads(line)["loss"] for line in (folder / ck.METRICS).read_text().splitlines()]


def test_trained_matrices_hold_exactly_their_budget(test_model):
    model, _, run = ck.load_model(test_model)
    tc = run.train
    for sp in sparse_params(model):
        density = tc.weight_density if sp.kind == "weight" else tc.embed_density
        k = target_nonzeros(sp, density, tc.min_per_neuron)
        assert int((sp.param != 0).sum()) == k, sp.name
        if sp.min_dim is not None:
            per_neuron = (sp.param != 0).sum(dim=sp.min_dim)
            assert int(per_neuron.min()) >= 4, sp.name


def test_training_lowers_the_loss_and_writes_metrics(test_model):
    records = [json.loads(line) for line in (test_model / ck.METRICS).read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 201))
    evals = [r for r in records if "val_loss" in r]
    assert len(evals) == 4
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] < 6.9  # uniform over 1024 tokens is 6.93
    assert evals[-1]["l0"] == pytest.approx(0.25, abs=1e-3)
    assert all(0 <= r["dead_neurons"] <= 1 and r["tokens_per_s"] > 0 for r in evals)


def short_run(steps=24):
    run = preset("test", steps=steps)
    run.train = run.train.model_copy(
        update={"checkpoint_every": 8, "eval_every": 8, "max_corpus_bytes": 300_000}
    )
    return run


def test_interrupted_run_resumes_bit_for_bit(tmp_path):
    run = short_run()
    train(run, tmp_path / "whole")

    class Killed(Exception):
        pass

    def kill_at_19(fraction, message, **rec):
        if rec.get("step") == 19 and "loss" in rec:
            raise Killed

    with pytest.raises(Killed):
        train(run, tmp_path / "cut", on_progress=kill_at_19)
    assert not (tmp_path / "cut" / ck.WEIGHTS).exists()  # not complete
    assert len(losses(tmp_path / "cut")) == 19
    train(run, tmp_path / "cut", resume=True)  # continues from the step-16 checkpoint
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")
    a, _, _ = ck.load_model(tmp_path / "whole")
    b, _, _ = ck.load_model(tmp_path / "cut")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_dense_run_keeps_every_weight(tmp_path):
    run = short_run(steps=10)
    run.train = run.train.model_copy(update={"dense": True})
    train(run, tmp_path / "dense")
    model, _, _ = ck.load_model(tmp_path / "dense")
    assert all(
        int((sp.param != 0).sum()) == sp.param.numel() for sp in sparse_params(model) if sp.kind == "weight"
    )


def test_refuses_to_overwrite_or_resume_wrongly(tmp_path, test_model):
    with pytest.raises(TrainError, match="already holds a training run"):
        train(short_run(), test_model)
    with pytest.raises(TrainError, match="finished model"):
        train(short_run(), test_model, resume=True)
    with pytest.raises(ck.CheckpointError, match="no config.json"):
        train(short_run(), tmp_path / "empty", resume=True)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    run = short_run(steps=16)

    def stop(fraction, message, **rec):
        if rec.get("step") == 9 and "loss" in rec:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(run, tmp_path / "r", on_progress=stop)
    (tmp_path / "r" / ck.CHECKPOINT).write_bytes(b"\x00garbage")
    with pytest.raises(ck.CheckpointError, match="corrupt"):
        train(run, tmp_path / "r", resume=True)
    assert not (tmp_path / "r" / ck.WEIGHTS).exists()
