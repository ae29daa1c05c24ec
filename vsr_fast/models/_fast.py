"""What the fast BasicVSR and IconVSR share: one SPyNet batch for both flow directions, the warp, the
fused tail, and op parameters gathered once per forward call."""

import warnings

import torch

from .. import hardware
from ..ops import flow_warp, reconstruction_tail

__all__ = ["FastRecurrentMixin", "pixel_flow"]


def pixel_flow(flow):
    """(N, 2, H, W) flow as the ops take it, (N, H, W, 2); None stays None."""
    return None if flow is None else flow.permute(0, 2, 3, 1)


class FastRecurrentMixin:
    """Mixed in before a reference model class: its hooks (docs/design.md, "Step hooks") run through
    vsr_fast's ops.

    The ops take a module's parameters as lists; gathering a 30-block trunk's 122 tensors costs about
    0.3 ms in Python (measured on the 2-core machine), so `forward` gathers each list once per call and
    the steps of that call reuse it. Nothing is kept between calls: a Parameter assigned, or a
    ``load_state_dict(assign=True)``, between two calls is seen by the next one. A hook called outside
    `forward` (the long-video engine calls them one step at a time) gathers the lists itself.
    """

    _call_parameters = None
    _warned_slow_precision = False

    def _warn_if_slow_precision(self, x):
        """Once per model: bf16 / fp16 on a CPU that has no hardware for it runs emulated, far slower
        than fp32 (docs/design.md, "Precision policy")."""
        if self._warned_slow_precision or not torch.is_tensor(x) or x.device.type != "cpu":
            return  # not a tensor: forward's own check names the problem
        if torch.compiler.is_compiling():
            return  # Dynamo cannot trace warnings.warn (a graph break); the eager call warns
        if x.dtype == torch.bfloat16 and not hardware.cpu_supports_bf16():
            lacks = "AVX512-BF16/AMX-BF16"
        elif x.dtype == torch.float16 and not hardware.cpu_supports_fp16():
            lacks = "AVX512-FP16/AMX-FP16"
        else:
            return
        self._warned_slow_precision = True
        name = "bfloat16" if x.dtype == torch.bfloat16 else "float16"
        warnings.warn(
            f"{type(self).__name__}: running in {name} on a CPU that lacks {lacks}: its {name} "
            f"convolutions are emulated here, and float32 (model.float()) will be faster",
            UserWarning,
            stacklevel=3,
        )

    def forward(self, lrs):
        self._warn_if_slow_precision(lrs)
        self._call_parameters = {}
        try:
            return super().forward(lrs)
        finally:
            self._call_parameters = None

    def check_if_mirror_extended(self, lrs):
        """The reference's check, except while torch.compile traces: the check branches on a tensor's
        value, which would split the graph (no ``fullgraph=True``). Traced, the model takes the input as
        not mirrored and computes the forward flows too, the same flows to within float rounding
        (SPyNet on the very same frame pairs), at the cost of one more SPyNet pass on mirrored input."""
        if torch.compiler.is_compiling():
            self.is_mirror_extended = False
            return False
        return super().check_if_mirror_extended(lrs)

    def _warn_if_small(self, h, w):
        # Dynamo cannot trace warnings.warn (a graph break, an error under fullgraph=True): a compiled
        # model does not warn about inputs below 64x64
        if not torch.compiler.is_compiling():
            super()._warn_if_small(h, w)

    def _parameters_of(self, module, gather):
        cache = self._call_parameters
        if cache is None:
            return gather()
        if module not in cache:
            cache[module] = gather()
        return cache[module]

    def trunk_parameters(self, trunk):
        """(weights, biases) of a propagation trunk, gathered once per forward call."""
        return self._parameters_of(trunk, trunk.trunk_parameters)

    def pair_flows(self, ref, supp):
        # the long-video engine calls the hooks, not forward: it warns from here
        self._warn_if_slow_precision(ref)
        return super().pair_flows(ref, supp)

    def compute_flow(self, lrs):
        """The reference's flows, with both directions' pairs in one SPyNet batch: fewer, larger
        convolution calls (on the loaded 2-core machine, 2 threads: 370 ms per frame against 469 for
        two calls; one thread: no difference). Mirror-extended input keeps the shortcut (backward
        flows only)."""
        n, t, c, h, w = lrs.shape
        if t == 1 or self.is_mirror_extended:
            return super().compute_flow(lrs)
        lrs_1 = lrs[:, :-1].reshape(-1, c, h, w)
        lrs_2 = lrs[:, 1:].reshape(-1, c, h, w)
        flows = self.pair_flows(torch.cat([lrs_1, lrs_2]), torch.cat([lrs_2, lrs_1]))
        flows_backward, flows_forward = (f.view(n, t - 1, 2, h, w) for f in flows.chunk(2))
        return flows_forward, flows_backward

    @staticmethod
    def warp(feat, flow):
        return flow_warp(feat, flow.permute(0, 2, 3, 1))

    def reconstruct(self, feat, lr):
        return reconstruction_tail(lr, feat, *self._parameters_of(self, self.tail_parameters))
