"""flow_warp exactly as mmagic formulates it, with the grid in fp32.

mmagic builds the sampling grid in ``x.dtype``; in fp16 that rounds pixel coordinates of wide frames by
up to 0.25 px. Here the grid is built in fp32 (fp64 when ``x`` is fp64) and cast to ``x.dtype`` only at
the ``grid_sample`` call, which requires matching dtypes. Everything else is the official maths.
"""

import torch
import torch.nn.functional as F

__all__ = ["flow_warp"]


def flow_warp(x, flow, interpolation="bilinear", padding_mode="zeros", align_corners=True):
    """Warp ``x`` [N, C, H, W] by ``flow`` [N, H, W, 2] (pixels, x displacement first)."""
    if x.dim() != 4 or flow.dim() != 4 or flow.size(-1) != 2:
        raise ValueError(
            f"reference.flow_warp: expected x [N, C, H, W] and flow [N, H, W, 2], "
            f"got x {list(x.shape)} and flow {list(flow.shape)}"
        )
    if x.shape[-2:] != flow.shape[1:3] or x.size(0) != flow.size(0):
        raise ValueError(
            f"reference.flow_warp: the spatial sizes of x ({x.size(-2)}, {x.size(-1)}) and flow "
            f"({flow.size(1)}, {flow.size(2)}) are not the same (or batch {x.size(0)} vs {flow.size(0)})"
        )
    _, _, h, w = x.shape
    grid_dtype = torch.float64 if x.dtype == torch.float64 or flow.dtype == torch.float64 else torch.float32
    grid_y, grid_x = torch.meshgrid(
        torch.arange(0, h, device=x.device, dtype=grid_dtype),
        torch.arange(0, w, device=x.device, dtype=grid_dtype),
        indexing="ij",
    )
    grid = torch.stack((grid_x, grid_y), 2)  # (h, w, 2), x first
    grid.requires_grad_(False)
    grid_flow = grid + flow.to(grid_dtype)
    # normalise to [-1, 1]; mmagic uses max(size - 1, 1) whatever align_corners is
    grid_flow_x = 2.0 * grid_flow[:, :, :, 0] / max(w - 1, 1) - 1.0
    grid_flow_y = 2.0 * grid_flow[:, :, :, 1] / max(h - 1, 1) - 1.0
    grid_flow = torch.stack((grid_flow_x, grid_flow_y), dim=3).to(x.dtype)
    return F.grid_sample(
        x, grid_flow, mode=interpolation, padding_mode=padding_mode, align_corners=align_corners
    )
