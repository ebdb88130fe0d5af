"""Weight initialisation of the pix2pix paper (the reference implementation's ``init_type=normal``)."""

from __future__ import annotations

from torch import nn


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """Initialise `module` in place and return it.

    Conv and transposed-conv weights ~ N(0, gain), their biases 0; batch-norm (incl. SyncBatchNorm)
    weights ~ N(1, gain), biases 0. InstanceNorm here has no affine parameters; other layers keep
    PyTorch's defaults. Draws from the global torch RNG: seed it for reproducible models.
    """
    for layer in module.modules():
        if isinstance(layer, nn.modules.conv._ConvNd):
            nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine:
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)
    return module
