"""The trainer: learning, checkpoints and exact resume, Ctrl-C, early stopping, time budget,
param groups and frozen parts, callbacks, schedules, precision."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from torch import nn
from train_support import class_images

from imgclf.preprocess import PreprocessSpec
from imgclf.train.callbacks import EarlyStopping, FreezeGroupAfter, Lookahead
from imgclf.train.checkpoint import load_checkpoint
from imgclf.train.config import TrainConfig
from imgclf.train.data import Augment, ImageSet, TensorBatches, image_batches
from imgclf.train.hooks import Callback, LambdaCallback
from imgclf.train.loop import Trainer
from imgclf.train.models import build_model
from imgclf.train.precision import cpu_has_bf16
from imgclf.train.schedule import lr_factor

FP32 = {"precision": "fp32", "channels_last": False, "progress": False, "log_epochs": False}


def _features(n_per_class: int = 40, dim: int = 16, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centers[y] + torch.randn(len(y), dim, generator=g)
    return x, y


def _images():
    x, y = class_images(12, size=16, seed=11)
    ims = ImageSet(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y))
    spec = PreprocessSpec(input_size=16, crop_pct=1.0, resize_mode="squash", mean=(0.3,) * 3, std=(0.3,) * 3)
    return ims, spec


def _vgg(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("vgg2", num_classes=4, image_size=16, widths=[8, 16], dense=16, batchnorm=True,
                       dropout=[0.1, 0.1, 0.2])


def _image_trainer(out, epochs=2.0, callbacks=(), **cfg):
    ims, spec = _images()
    train = image_batches(ims, spec, batch_size=8, train=True, augment=Augment("random", 2, 4), seed=5)
    val = image_batches(ims, spec, batch_size=16, train=False)
    config = TrainConfig(epochs=epochs, lr=0.05, momentum=0.9, nesterov=True, schedule="linear", warmup=0.2,
                         seed=5, **{**FP32, **cfg})
    return Trainer(_vgg(), train, val=val, config=config, callbacks=list(callbacks), out_dir=out,
                   meta={"note": "test"})


def test_trainer_learns_a_feature_cache(tmp_path):
    x, y = _features()
    train = TensorBatches(x, y, batch_size=16, shuffle=True, drop_last=True, seed=1)
    val = TensorBatches(x, y, batch_size=64)
    model = nn.Linear(16, 3)
    result = Trainer(model, train, val=val, config=TrainConfig(epochs=5, lr=0.1, **FP32), out_dir=tmp_path).fit()
    assert result.stopped == "completed" and result.steps == 5 * (120 // 16) == result.total_steps
    assert result.history[-1]["val_acc"] > 0.95
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5]
    assert (tmp_path / "checkpoints" / "last.pt").is_file() and (tmp_path / "checkpoints" / "best.pt").is_file()
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["eval_split"] == "val" and len(saved["epochs"]) == 5
    header = (tmp_path / "history.csv").read_text().splitlines()[0].split(",")
    assert header[:8] == ["epoch", "epoch_float", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc"]


def _interrupt_at(step: int) -> Callback:
    def on_step_end(trainer):
        if trainer.step == step:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, handled by the trainer

    return LambdaCallback(on_step_end=on_step_end)


def test_ctrl_c_saves_and_resume_matches_an_uninterrupted_run(tmp_path):
    # What the process had before (the default handler; SIG_IGN when started in the background).
    handler = signal.getsignal(signal.SIGINT)
    straight = _image_trainer(tmp_path / "a").fit()
    assert straight.stopped == "completed"

    first = _image_trainer(tmp_path / "b", callbacks=[_interrupt_at(9)]).fit()  # mid-epoch 2 (6 steps/epoch)
    assert first.stopped == "interrupted" and first.steps == 9
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch"]) == (9, 1, 3)
    assert signal.getsignal(signal.SIGINT) is handler  # handlers restored

    resumed = _image_trainer(tmp_path / "b").fit(resume=True)
    assert resumed.stopped == "completed" and resumed.steps == straight.steps == 12
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    for ra, rb in zip(straight.history, resumed.history, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
        assert ra["val_acc"] == pytest.approx(rb["val_acc"])


def test_resume_of_a_finished_run_extends_it(tmp_path):
    _image_trainer(tmp_path, epochs=1).fit()
    more = _image_trainer(tmp_path, epochs=2).fit(resume=True)
    assert more.steps == 12 and [r["epoch"] for r in more.history] == [1, 2]


def test_early_stopping_stops_and_restores_the_best_weights(tmp_path):
    x, y = _features()
    train = TensorBatches(x, y, batch_size=20, shuffle=True, drop_last=True)
    model = nn.Linear(16, 3)
    stopper = EarlyStopping("val_loss", patience=2)
    trainer = Trainer(model, train, val=TensorBatches(x, y, batch_size=60),
                      config=TrainConfig(epochs=20, lr=0.0, **FP32), callbacks=[stopper], out_dir=tmp_path)
    result = trainer.fit()
    assert result.stopped == "early_stopping"
    assert len(result.history) == 3  # best at epoch 1, then two epochs without improvement
    assert stopper.best_epoch == 1
    # Resuming an early-stopped run does not train further.
    again = Trainer(nn.Linear(16, 3), TensorBatches(x, y, batch_size=20, shuffle=True, drop_last=True),
                    val=TensorBatches(x, y, batch_size=60), config=TrainConfig(epochs=20, lr=0.0, **FP32),
                    callbacks=[EarlyStopping("val_loss", patience=2)], out_dir=tmp_path).fit(resume=True)
    assert again.stopped == "early_stopping" and again.steps == result.steps


def test_early_stopping_restores_weights_of_best_epoch():
    x, y = _features()
    model = nn.Linear(16, 3)
    saved = {}

    def track(trainer, logs):
        saved[logs["epoch"]] = {k: v.clone() for k, v in trainer.module.state_dict().items()}
        logs["val_loss"] = {1: 1.0, 2: 0.5, 3: 0.7, 4: 0.8}.get(logs["epoch"], 0.9)  # best: epoch 2

    trainer = Trainer(model, TensorBatches(x, y, batch_size=20, shuffle=True, drop_last=True),
                      config=TrainConfig(epochs=10, lr=0.1, **FP32),
                      callbacks=[LambdaCallback(on_epoch_end=track), EarlyStopping("val_loss", patience=2)])
    result = trainer.fit()
    assert result.stopped == "early_stopping" and len(result.history) == 4
    torch.testing.assert_close(model.weight, saved[2]["weight"])


def test_time_budget_stops_cleanly_and_resumes(tmp_path):
    tight = _image_trainer(tmp_path, epochs=2, time_budget=1e-6).fit()
    assert tight.stopped == "time_budget" and tight.steps == 1
    assert tight.history[-1]["partial"] is True and "val_acc" in tight.history[-1]
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    rest = _image_trainer(tmp_path, epochs=2, time_budget=3600).fit(resume=True)
    assert rest.stopped == "completed" and rest.steps == 12
    assert [r["epoch"] for r in rest.history] == [1, 2] and not rest.history[0].get("partial")


def test_param_groups_lr_scales_and_frozen_parts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    for p in list(model[0].parameters()) + list(model[1].parameters()):
        p.requires_grad_(False)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _features()
    groups = [{"params": [model[3].weight], "lr_scale": 0.5, "name": "w"},
              {"params": [model[3].bias], "lr": 0.0, "name": "b"}]
    trainer = Trainer(model, TensorBatches(x, y, batch_size=20, shuffle=True, drop_last=True),
                      config=TrainConfig(epochs=1, lr=0.2, **FP32), param_groups=groups)
    trainer.fit()
    state = model.state_dict()
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        assert torch.equal(state[key], frozen[key]), key  # frozen BatchNorm kept its statistics
    assert torch.equal(state["3.bias"], frozen["3.bias"])
    assert not torch.equal(state["3.weight"], frozen["3.weight"])
    assert [g["base_lr"] for g in trainer.optimizer.param_groups] == [0.1, 0.0]

    with pytest.raises(ValueError, match="in no param group"):
        Trainer(model, TensorBatches(x, y, batch_size=20), config=TrainConfig(epochs=1, **FP32),
                param_groups=groups[:1]).fit()
    with pytest.raises(ValueError, match="frozen parameter"):
        Trainer(model, TensorBatches(x, y, batch_size=20), config=TrainConfig(epochs=1, **FP32),
                param_groups=[*groups, {"params": [model[0].weight]}]).fit()


def test_freeze_group_after():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = _features()
    first_bias = model[0].bias.detach().clone()
    seen = []
    groups = [{"params": [model[0].bias], "name": "early"},
              {"params": [model[0].weight, model[2].weight, model[2].bias], "name": "rest"}]
    trainer = Trainer(model, TensorBatches(x, y, batch_size=20, shuffle=True, drop_last=True),
                      config=TrainConfig(epochs=3, lr=0.1, **FP32), param_groups=groups,
                      callbacks=[FreezeGroupAfter("early", 1),
                                 LambdaCallback(on_epoch_start=lambda t, e: seen.append(model[0].bias.detach().clone()))])
    trainer.fit()
    assert not torch.equal(seen[1], first_bias)  # trained during epoch 0
    assert torch.equal(seen[2], seen[1]) and torch.equal(model[0].bias, seen[1])  # not after
    assert trainer.optimizer.param_groups[0]["base_lr"] == 0.0


def test_lookahead_ends_on_the_averaged_weights(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = _features()
    look = Lookahead(every=2)
    Trainer(model, TensorBatches(x, y, batch_size=20, shuffle=True, drop_last=True),
            config=TrainConfig(epochs=3, lr=0.1, **FP32), callbacks=[look], out_dir=tmp_path).fit()
    for key, value in model.state_dict().items():
        assert torch.equal(value, look.ema[key])
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["callbacks"][0]
    assert saved["type"] == "Lookahead" and set(saved["state"]["ema"]) == set(model.state_dict())


def test_extra_metrics_from_callbacks_reach_the_history(tmp_path):
    x, y = _features()

    def add(trainer, logs):
        logs["val_top1_errors"] = round((1 - logs["val_acc"]) * 120)

    Trainer(nn.Linear(16, 3), TensorBatches(x, y, batch_size=20, shuffle=True, drop_last=True),
            val=TensorBatches(x, y, batch_size=60), config=TrainConfig(epochs=2, lr=0.1, **FP32),
            callbacks=[LambdaCallback(on_epoch_end=add)], out_dir=tmp_path).fit()
    header = (tmp_path / "history.csv").read_text().splitlines()[0]
    assert header.endswith("val_top1_errors")


def test_any_dataloader_through_loader_batches():
    from torch.utils.data import DataLoader, TensorDataset

    from imgclf.train.data import LoaderBatches

    x, y = _features()
    loader = DataLoader(TensorDataset(x, y), batch_size=24, shuffle=True, generator=torch.Generator().manual_seed(0))
    result = Trainer(nn.Linear(16, 3), LoaderBatches(loader), val=LoaderBatches(DataLoader(TensorDataset(x, y), 60)),
                     config=TrainConfig(epochs=4, lr=0.1, **FP32)).fit()
    assert result.steps == 20 and result.history[-1]["val_acc"] > 0.9
    assert len(list(LoaderBatches(loader).batches(0, start=3))) == 2


def test_lr_schedules():
    total = 100
    lin = TrainConfig(schedule="linear", warmup=0.2, start_factor=0.2, final_factor=0.07)
    assert lr_factor(lin, 0, total) == pytest.approx(0.2)
    assert lr_factor(lin, 10, total) == pytest.approx(0.6)
    assert lr_factor(lin, 20, total) == pytest.approx(1.0)
    assert lr_factor(lin, 100, total) == pytest.approx(0.07)
    cos = TrainConfig(schedule="cosine", final_factor=0.0)
    assert lr_factor(cos, 50, total) == pytest.approx(0.5)
    assert lr_factor(TrainConfig(schedule="constant"), 77, total) == 1.0
    assert lr_factor(TrainConfig(schedule=lambda p: 1 - p), 25, total) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        TrainConfig(schedule="exponential")


def test_fractional_epochs():
    x, y = _features()
    result = Trainer(nn.Linear(16, 3), TensorBatches(x, y, batch_size=20, shuffle=True, drop_last=True),
                     config=TrainConfig(epochs=1.5, lr=0.1, **FP32)).fit()
    assert result.steps == math.ceil(6 * 1.5) and result.history[-1]["partial"] is True
    assert result.epochs == 1.5


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_bf16_autocast_and_speed_probe():
    ims, spec = _images()
    train = image_batches(ims, spec, batch_size=8, train=True, seed=1)
    config = TrainConfig(epochs=1, lr=0.05, precision="auto", channels_last=None, progress=False, log_epochs=False)
    result = Trainer(_vgg(), train, config=config).fit()
    layouts = {"fp32", "bf16", "fp32+channels_last", "bf16+channels_last"}
    chosen = result.precision + ("+channels_last" if result.channels_last else "")
    assert result.probe[chosen] == max(result.probe[k] for k in layouts)
    if torch.get_num_threads() > 1:  # then the winner is also timed on one thread
        assert set(result.probe) == layouts | {f"{chosen}@1thread"}
        faster_alone = result.probe[f"{chosen}@1thread"] > result.probe[chosen]
        assert result.threads == (1 if faster_alone else torch.get_num_threads())
    bf = Trainer(_vgg(), train, config=TrainConfig(epochs=1, lr=0.05, precision="bf16", channels_last=True,
                                                   progress=False, log_epochs=False)).fit()
    assert bf.precision == "bf16" and math.isfinite(bf.history[-1]["train_loss"])


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_fast_net_whitens_in_fp32_under_bf16_autocast():
    """Smooth images have patch directions of tiny variance that whitening scales up; from bf16
    input those channels would be mostly rounding noise, so the whitening conv must stay fp32."""
    g = torch.Generator().manual_seed(0)
    x = nn.functional.interpolate(torch.randn(32, 3, 8, 8, generator=g), size=32, mode="bilinear")
    x = x + 1e-3 * torch.randn(x.shape, generator=g)
    net = build_model("fast", num_classes=10).eval()
    net.init_whitening(x)
    seen = []
    net.act.register_forward_hook(lambda m, inp, out: seen.append(inp[0].float()))
    with torch.no_grad():
        net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(x)
    reference, under_autocast = seen
    assert reference.std((0, 2, 3)).min() > 0.1  # the weakest direction is really amplified
    torch.testing.assert_close(under_autocast, reference, rtol=1e-6, atol=1e-6)


def test_fast_recipe_updates_equal_airbench94s_summed_loss_formulation():
    """The trainer averages the loss; airbench states its rates for a summed loss, per 1024
    examples, divided by Nesterov's gain. Same init, same batches: the weights must agree."""
    from imgclf.train.recipes import fast_training, get_recipe

    hyp = get_recipe("fast", {"net.widths": [8, 16, 16]})
    batch, momentum, label_smoothing = 64, 0.85, 0.2
    hyp["opt"]["batch_size"] = batch

    def net():
        torch.manual_seed(0)
        m = build_model("fast", num_classes=10, widths=[8, 16, 16]).double()
        with torch.no_grad():
            m.whiten.weight.normal_()
        return m

    ours, ref = net(), net()
    _, groups, _ = fast_training(hyp, ours, None, init_model=False)
    opt_ours = torch.optim.SGD([{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]}
                                for g in groups], momentum=momentum, nesterov=True)
    # airbench94.py, verbatim in substance
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr = 11.5 / kilostep_scale
    wd = 0.0153 * batch / kilostep_scale
    lr_biases = lr * 64.0
    norm_biases = [p for k, p in ref.named_parameters() if "norm" in k and p.requires_grad]
    other = [p for k, p in ref.named_parameters() if "norm" not in k and p.requires_grad]
    opt_ref = torch.optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                               dict(params=other, lr=lr, weight_decay=wd / lr)], momentum=momentum, nesterov=True)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(batch, 3, 32, 32, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (batch,), generator=g)
        for model, opt, reduction in ((ours, opt_ours, "mean"), (ref, opt_ref, "sum")):
            loss = nn.functional.cross_entropy(model(x), y, label_smoothing=label_smoothing, reduction=reduction)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), name
    assert not torch.equal(ours.layers[0].norm1.bias, net().layers[0].norm1.bias)  # the biases did move


def test_a_checkpoint_written_before_the_trainer_was_split_still_resumes(tmp_path):
    """``tests/data/checkpoint_v1`` was written by the trainer of the previous release: ``last.pt``
    of a 4-epoch run stopped at step 10 (mid-epoch 2), and the weights the same run ends with
    uninterrupted. Resuming it now must end with those weights."""
    import shutil
    from pathlib import Path

    fixture = Path(__file__).parent / "data" / "checkpoint_v1"
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(fixture / "last.pt", tmp_path / "checkpoints" / "last.pt")
    expected = torch.load(fixture / "expected.pt", weights_only=True)
    x, y = _features()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.Dropout(0.2), nn.ReLU(), nn.Linear(8, 3))
    config = TrainConfig(epochs=4, lr=0.1, momentum=0.9, schedule="cosine", warmup=0.2, seed=3, **FP32)
    threads = torch.get_num_threads()
    result = Trainer(model, TensorBatches(x, y, batch_size=16, shuffle=True, drop_last=True, seed=1),
                     val=TensorBatches(x, y, batch_size=64), config=config,
                     callbacks=[EarlyStopping("val_loss", patience=10)], out_dir=tmp_path).fit(resume=True)
    assert torch.get_num_threads() == threads  # the checkpoint's thread count applies to the run only
    assert result.stopped == "completed" and result.steps == expected["steps"] == 28
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    for key, value in expected["model"].items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=1e-6)
    assert result.history[-1]["val_loss"] == pytest.approx(expected["history"][-1]["val_loss"], abs=1e-6)
