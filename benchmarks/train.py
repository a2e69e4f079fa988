"""Training-from-scratch figures: throughput, epoch time, the seed ladder, the fast recipe, Fashion-MNIST.

    python benchmarks/train.py throughput [--archs vgg,fast] [--steps 6]
    python benchmarks/train.py epoch --data CIFAR10_DIR --recipe fast [--steps 40]
    python benchmarks/train.py ladder --data CIFAR10_DIR --out runs/ladder [--epochs N]
    python benchmarks/train.py fast --data CIFAR10_DIR --out runs/fast [--epochs 9.9] [--processes 2] [--set K=V]
    python benchmarks/train.py fashion [--data FASHION_DIR] --out runs/fashion

``throughput`` times training steps (forward, backward, optimizer) of each recipe's network on
random data, in fp32 and bf16 autocast, NCHW and channels-last, and prints img/s. ``epoch`` runs
the real trainer on the real data for a number of steps and extrapolates a full epoch and a full
run. The others run the real commands and print the figures docs/benchmarks.md quotes. Timings
on a machine shared with other work are noisy: the step times printed are the minimum and the
median of several.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
            + (f", CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))


def cpu_seconds() -> float:
    """CPU time this process has used (user + system), to show how much of the machine it got."""
    t = os.times()
    return t.user + t.system


def _fake_data(channels: int, size: int, classes: int, n: int):
    import torch

    from imgclf.data import RawDataset, RawSplit
    from imgclf.preprocess import PreprocessSpec
    from imgclf.train.data import ImageSet, TrainingData

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    spec = PreprocessSpec(input_size=size, crop_pct=1.0, resize_mode="squash", mean=(0.5,) * channels,
                          std=(0.25,) * channels, grayscale=channels == 1)
    raw = RawDataset("random", "random", Path("."), [str(i) for i in range(classes)],
                     {"train": RawSplit(labels.numpy())})
    return TrainingData(ImageSet(images, labels), None, None, raw.classes, spec, raw)


def throughput(args: argparse.Namespace) -> None:
    import torch

    from imgclf.train.data import image_batches
    from imgclf.train.loop import TrainConfig, Trainer, configure_cpu, cpu_has_bf16
    from imgclf.train.recipes import build, get_recipe

    configure_cpu(args.threads)
    print(f"machine: {machine()}")
    precisions = ["fp32", "bf16"] if (cpu_has_bf16() or torch.cuda.is_available()) else ["fp32"]
    print(f"threads: {torch.get_num_threads()}; 'cores' = CPU-seconds used per wall second (less than the "
          "threads when other work shares the machine)")
    print(f"{'recipe':<8} {'batch':>5} {'precision':<9} {'layout':<13} {'min step':>9} {'median':>9} {'img/s':>8} "
          f"{'cores':>6}")
    for recipe in args.archs.split(","):
        hyp = get_recipe(recipe)
        batch = args.batch_size or int(hyp["opt"]["batch_size"])
        data = _fake_data(3, 32, 10, batch * (args.steps + 2))
        for cl in (False, True):
            for prec in precisions:
                hyp_run = get_recipe(recipe, {"run.precision": prec, "run.channels_last": cl})
                setup = build(hyp_run, data, progress=False)
                times: list[float] = []
                last = [time.perf_counter()]

                from imgclf.train.callbacks import LambdaCallback

                def tick(trainer, times=times, last=last) -> None:  # noqa: ANN001
                    now = time.perf_counter()
                    times.append(now - last[0])
                    last[0] = now

                batches = image_batches(data.train, data.spec, batch_size=batch, train=True, augment=setup.augment)
                cfg: TrainConfig = setup.config
                cfg.epochs, cfg.log_epochs, cfg.progress = 1.0, False, False
                trainer = Trainer(setup.model, batches, config=cfg, param_groups=setup.param_groups,
                                  callbacks=[LambdaCallback(on_step_end=tick)])
                last[0] = time.perf_counter()
                c0, w0 = cpu_seconds(), time.perf_counter()
                trainer.fit()
                cores = (cpu_seconds() - c0) / (time.perf_counter() - w0)
                steady = times[2:] or times  # the first steps build kernels
                best, med = min(steady), statistics.median(steady)
                layout = "channels_last" if cl else "NCHW"
                print(f"{recipe:<8} {batch:>5} {prec:<9} {layout:<13} {best * 1000:>7.0f}ms {med * 1000:>7.0f}ms "
                      f"{batch / med:>8.0f} {cores:>6.2f}", flush=True)


def epoch_time(args: argparse.Namespace) -> None:
    """Real trainer, real data, ``--steps`` steps: img/s and the extrapolated epoch and run time."""
    from imgclf.train.data import image_batches, load_training_data
    from imgclf.train.loop import Trainer, configure_cpu
    from imgclf.train.recipes import build, get_recipe

    configure_cpu(args.threads)
    print(f"machine: {machine()}")
    overrides = {}
    if args.precision:
        overrides["run.precision"] = args.precision
    if args.channels_last is not None:
        overrides["run.channels_last"] = args.channels_last == "on"
    hyp = get_recipe(args.recipe, overrides)
    data = load_training_data(args.data, cache_dir=args.cache_dir)
    setup = build(hyp, data, progress=False)
    batch = setup.batch_size
    batches = image_batches(data.train, data.spec, batch_size=batch, train=True, augment=setup.augment)
    per_epoch = len(batches)
    setup.config.epochs = min(1.0, args.steps / per_epoch)
    setup.config.log_epochs = False
    trainer = Trainer(setup.model, batches, config=setup.config, param_groups=setup.param_groups,
                      callbacks=setup.callbacks)
    t0, c0 = time.perf_counter(), cpu_seconds()
    result = trainer.fit()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    rate = result.history[-1]["img_per_s"]
    epoch_s = len(data.train) / rate
    epochs = float(hyp["opt"]["epochs"])
    print(f"recipe {args.recipe}: {result.steps} steps of {batch} ({result.precision}"
          f"{' + channels_last' if result.channels_last else ''}) in {wall:.0f} s -> {rate:.0f} img/s")
    if result.probe:
        print("speed probe (img/s): " + ", ".join(f"{k} {v:.0f}" for k, v in result.probe.items()))
    print(f"one epoch of {len(data.train):,} images: {epoch_s / 60:.1f} min; the recipe's {epochs:g} epochs: "
          f"{epoch_s * epochs / 60:.0f} min (training only, extrapolated)")
    print(f"CPU share: {cpu:.0f} CPU-seconds in {wall:.0f} s wall = {cpu / wall:.2f} cores on average "
          f"(of {os.cpu_count()}; the rest went to other work on the machine)")


def _cli(argv: list[str], processes: int = 1) -> None:
    """Run an imgclf command in this process, or under torchrun with ``processes`` CPU processes."""
    if processes > 1:
        import subprocess

        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "imgclf", *argv]
        code = subprocess.call(cmd)
    else:
        from imgclf.cli import main

        code = main(argv)
    if code:
        raise SystemExit(code)


def _extra(args: argparse.Namespace) -> list[str]:
    argv = ["--epochs", str(args.epochs)] if args.epochs else []
    for setting in args.set:
        argv += ["--set", setting]
    return argv


def ladder(args: argparse.Namespace) -> None:
    argv = ["experiment", "seed-ladder", "--data", args.data, "--out", args.out, "--no-progress"]
    argv += _extra(args)
    print(f"machine: {machine()}")
    _cli(argv, args.processes)


def _train_and_print(argv: list[str], out: str, processes: int = 1) -> None:
    print(f"machine: {machine()}" + (f", {processes} training processes" if processes > 1 else ""))
    t0 = time.perf_counter()
    _cli(argv, processes)
    wall = time.perf_counter() - t0
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    history = json.loads((Path(out) / "history.json").read_text())["epochs"]
    print(f"test accuracy (served package): {metrics['accuracy']:.2%} on {metrics['n']:,} images")
    print(f"training time: {history[-1]['elapsed'] / 60:.1f} min for {history[-1]['epoch_float']} epochs; "
          f"wall time of the whole command (load, train, export, evaluate): {wall / 60:.1f} min")


def fast(args: argparse.Namespace) -> None:
    argv = ["train", "--data", args.data, "--recipe", "fast", "--out", args.out, "--no-progress"]
    argv += _extra(args)
    _train_and_print(argv, args.out, args.processes)


def fashion(args: argparse.Namespace) -> None:
    argv = ["train", "--format", "fashion-mnist", "--recipe", "vgg", "--out", args.out, "--no-progress"]
    if args.data:
        argv += ["--data", args.data]
    argv += _extra(args)
    _train_and_print(argv, args.out, args.processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("throughput", help="img/s of each recipe's net: fp32/bf16 x NCHW/channels-last")
    p.add_argument("--archs", default="vgg,fast", help="recipes whose networks to time")
    p.add_argument("--batch-size", type=int, help="default: each recipe's")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int)
    p.set_defaults(fn=throughput)
    p = sub.add_parser("epoch", help="time real training steps on real data and extrapolate")
    p.add_argument("--data", required=True)
    p.add_argument("--recipe", default="fast")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--channels-last", choices=["on", "off"])
    p.add_argument("--cache-dir")
    p.add_argument("--threads", type=int)
    p.set_defaults(fn=epoch_time)
    for name, fn, help_ in (("ladder", ladder, "imgclf experiment seed-ladder"),
                            ("fast", fast, "imgclf train --recipe fast"),
                            ("fashion", fashion, "imgclf train --format fashion-mnist --recipe vgg")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--data", required=name != "fashion")
        p.add_argument("--out", required=True)
        p.add_argument("--epochs", type=float)
        p.add_argument("--processes", type=int, default=1,
                       help="train with torchrun and this many processes (one thread each)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe setting, as imgclf train --set")
        p.set_defaults(fn=fn)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
