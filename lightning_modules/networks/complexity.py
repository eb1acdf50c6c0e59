"""Parameter and multiply-accumulate counts of a network (the main paper's Table 7 reports its
sub-networks' sizes at 192 x 192; the renderer's widths are chosen to land within 10% of them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_complexity(net: nn.Module, inputs: Sequence[torch.Tensor | dict]) -> dict[str, float]:
    """Parameters, multiply-accumulates of one forward pass over `inputs` (FlopCounterMode counts 2 FLOPs
    per MAC) and its activation memory: the bytes of every leaf module's output (the feature maps, as
    torchstat and Table 7 count "memory"), at the batch of `inputs`."""
    params = sum(p.numel() for p in net.parameters())
    activation_bytes = 0

    def record(module: nn.Module, args: tuple, output: object) -> None:
        nonlocal activation_bytes
        if isinstance(output, torch.Tensor):
            activation_bytes += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(record) for m in net.modules() if not list(m.children())]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    return {
        "params": float(params),
        "macs": counter.get_total_flops() / 2,
        "activation_mb": activation_bytes / 2**20,
    }
