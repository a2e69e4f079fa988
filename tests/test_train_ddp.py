"""Distributed data parallel: `torchrun --nproc_per_node=2 -m imgclf train` on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_support import write_cifar10

from imgclf.package import load_package
from imgclf.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def test_torchrun_two_cpu_processes_train_one_model(tmp_path):
    data = write_cifar10(tmp_path / "data", n_train_per_class=16, n_test_per_class=4)  # 64 train images
    out = tmp_path / "run"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "IMGCLF_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "imgclf", "train", "--data", str(data), "--recipe", "vgg3-bn-l2-dropout-aug", "--epochs", "2",
           "--batch-size", "16", "--set", "net.widths=4,8,8", "--set", "net.dense=8", "--precision", "fp32",
           "--channels-last", "off", "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 processes" in proc.stderr
    assert [line.startswith("package: ") for line in proc.stdout.splitlines()].count(True) == 1  # rank 0 only
    history = json.loads((out / "history.json").read_text())["epochs"]
    # 64 images / global batch 16 = 4 steps per epoch: the two processes split every batch.
    assert [r["step"] for r in history] == [4, 8]
    assert json.loads((out / "run.json").read_text())["environment"]["processes"] == 2
    pkg = load_package(out / "package")
    assert pkg.meta.provenance.training["steps"] == 8
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert Path(out / "report.md").is_file()
