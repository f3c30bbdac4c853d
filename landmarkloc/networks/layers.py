"""Convolution layers that stay fast at inference on a CPU.

PyTorch picks its CPU convolution kernel with a heuristic tuned for 2D images:
a batch of one with a small first spatial axis goes to the generic im2col
kernel (``slow_conv3d``), which runs the 3D convolutions of a whole-volume FCN
pass 5-10x slower than oneDNN (measured in ``landmarkloc bench``'s profile:
the compact global network on a 120 x 120 x 90 brain went from 66 ms to about
20 ms of CPU time). These subclasses send inference-time float32 CPU
convolutions to oneDNN directly. Training (gradients enabled), other devices and
dtypes take PyTorch's usual path, and the parameters and state-dict keys are
those of ``nn.Conv2d`` / ``nn.Conv3d``, so model files are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def _use_onednn(conv: nn.Module, x: torch.Tensor) -> bool:
    return (not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


class Conv3d(nn.Conv3d):
    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias):
        if _use_onednn(self, x):
            return torch.ops.aten.mkldnn_convolution(x, weight, bias, self.padding, self.stride, self.dilation,
                                                     self.groups)
        return super()._conv_forward(x, weight, bias)


class Conv2d(nn.Conv2d):
    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias):
        if _use_onednn(self, x):
            return torch.ops.aten.mkldnn_convolution(x, weight, bias, self.padding, self.stride, self.dilation,
                                                     self.groups)
        return super()._conv_forward(x, weight, bias)
