"""The speed probe: time a few real training steps per precision and layout, keep the fastest.

With ``precision="auto"`` on a CPU with native bf16, the trainer times fp32 and bf16 (and NCHW vs
channels-last when ``channels_last`` is ``None``) on a copy of the model, then (``probe_threads``,
one process) tries the winner on a single thread, which wins when other work shares the cores:
oneDNN's bf16 kernels synchronise their threads often. Under DDP the ranks average their timings
so every rank makes the same choice.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from imgclf.train.precision import autocast
from imgclf.train.runtime import sync_device

PROBE_BATCH = 256  # relative speed is what matters; keep big-batch probes short


@dataclass(frozen=True)
class ProbeChoice:
    precision: str
    channels_last: bool
    threads: int
    rates: dict[str, float]  # images/s per option, e.g. {"fp32": ..., "bf16+channels_last": ...}


def probe_speed(module: nn.Module, x: torch.Tensor, y: torch.Tensor,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, device: torch.device,
                precisions: list[str], layouts: list[bool], world: int = 1,
                try_one_thread: bool = True) -> ProbeChoice:
    """Time forward+backward passes per option on a copy of ``module``; the fastest wins.

    The caller's RNG state and thread count are left as they were (the run's randomness must not
    depend on the probe); the chosen thread count is returned, not set.
    """
    rng = torch.get_rng_state()  # the probe's dropout draws must not shift the run's randomness
    net = copy.deepcopy(module).train()
    x, y = x[:PROBE_BATCH], y[:PROBE_BATCH]
    threads = torch.get_num_threads()

    def rate(prec: str, cl: bool) -> float:
        fmt = torch.channels_last if cl else torch.contiguous_format
        net.to(memory_format=fmt)  # type: ignore[call-overload]  # (torch stubs lack it)
        xx = x.contiguous(memory_format=fmt)

        def once() -> None:
            with autocast(prec, device):
                out = net(xx)
            loss_fn(out.float(), y).backward()
            net.zero_grad(set_to_none=True)

        once()
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            once()
            times.append(time.perf_counter() - t0)
        return len(xx) * world / min(times)

    rates = {f"{p}{'+channels_last' if cl else ''}": rate(p, cl) for cl in layouts for p in precisions}
    best = max(rates, key=rates.__getitem__)
    if try_one_thread and device.type == "cpu" and world == 1 and threads > 1:
        torch.set_num_threads(1)
        one = rate(*_parse(best))
        rates[f"{best}@1thread"] = one
        torch.set_num_threads(threads)
        if one > rates[best]:
            threads = 1
    torch.set_rng_state(rng)
    if world > 1:  # every rank must make the same choice
        t = torch.tensor(list(rates.values()), dtype=torch.float64, device=sync_device(device))
        dist.all_reduce(t)
        rates = {k: float(v) / world for k, v in zip(rates, t.tolist(), strict=True)}
        best = max((k for k in rates if "@" not in k), key=rates.__getitem__)
    precision, channels_last = _parse(best)
    return ProbeChoice(precision, channels_last, threads, rates)


def _parse(option: str) -> tuple[str, bool]:
    return option.split("+")[0], option.endswith("+channels_last")


def describe(choice: ProbeChoice) -> str:
    rates = ", ".join(f"{k} {v:.0f}" for k, v in choice.rates.items())
    return (f"speed probe (img/s): {rates} -> {choice.precision}"
            f"{' + channels_last' if choice.channels_last else ''}, {choice.threads} thread(s)")
