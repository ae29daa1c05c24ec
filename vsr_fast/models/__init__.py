"""Fast BasicVSR / IconVSR: the official models with their hot steps running through vsr_fast's ops.

Same constructor arguments and state-dict keys as mmagic's BasicVSRNet / IconVSRNet (and
`vsr_fast.reference`), so official checkpoints load with `vsr_fast.checkpoint.load_checkpoint`.
"""

from .basicvsr import BasicVSR
from .edvr import EDVRFeatureExtractor
from .iconvsr import IconVSR
from .spynet import SPyNet

__all__ = ["BasicVSR", "IconVSR", "SPyNet", "EDVRFeatureExtractor"]
