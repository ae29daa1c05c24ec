"""`vsr_fast.accelerate`: the fast model built from an official (mmagic / BasicSR), reference or fast
BasicVSR / IconVSR module, with its weights, device, dtype, train/eval modes and frozen parameters.

The official classes are recognised by their state-dict keys (`vsr_fast.checkpoint` knows both
namings), never imported. Constructor arguments come from the weights where the weights tell them
(mid_channels, num_blocks, IconVSR's padding) and from the official attributes where they do not
(IconVSR's keyframe_stride); what neither tells is an error, never a default.
"""

import torch
from torch import nn

from . import checkpoint, reference
from .models import BasicVSR, IconVSR

__all__ = ["accelerate"]

_EXPECTED = (
    "an mmagic BasicVSRNet / IconVSRNet, a BasicSR BasicVSR / IconVSR, or a vsr_fast(.reference) "
    "BasicVSR / IconVSR"
)
# the attributes the official classes keep IconVSR's temporal padding in (mmagic / reference, BasicSR)
_PADDING_ATTRIBUTES = ("padding", "temporal_padding")


def accelerate(module, dtype=None):
    """The fast vsr_fast model equivalent to ``module``: a new ``vsr_fast.BasicVSR`` / ``IconVSR``.

    ``module`` is an mmagic ``BasicVSRNet`` / ``IconVSRNet``, a BasicSR ``BasicVSR`` / ``IconVSR``,
    a ``vsr_fast.reference`` model or a vsr_fast model. The result has a copy of its weights, on its
    device, in ``dtype`` (a floating ``torch.dtype``; default: the module's), with its train / eval
    mode (per submodule) and each parameter's ``requires_grad``. ``module`` itself is not modified,
    and the two share no storage. Hooks, optimiser state and other Python attributes are not carried.

    Raises TypeError for a module that is none of the above, ValueError when a constructor argument
    cannot be told (naming it) or the module's weights are on several devices or in several dtypes,
    and `vsr_fast.checkpoint.CheckpointError` when its weights do not fit the model they describe.
    """
    if not isinstance(module, nn.Module):
        hint = (
            " (weights go into a model with vsr_fast.checkpoint.load_checkpoint)"
            if isinstance(module, dict)
            else ""
        )
        raise TypeError(f"vsr_fast.accelerate: expected {_EXPECTED}, got {type(module).__name__}{hint}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"vsr_fast.accelerate: dtype must be a floating torch.dtype or None, got {dtype!r}")
    name = type(module).__name__
    state = module.state_dict()
    kind = _identify(module, name, state)
    # the module's keys in mmagic naming (the fast models'), in the module's key order
    fast_keys = list(checkpoint.convert_state_dict(state, "mmagic"))
    weights = dict(zip(fast_keys, state.values()))
    device, module_dtype = _placement(module, name, dtype)

    fast_class = IconVSR if kind == "iconvsr" else BasicVSR
    fast = fast_class(**_constructor_arguments(module, name, kind, weights))
    fast.to(device=device, dtype=dtype or module_dtype)
    try:
        checkpoint.load_checkpoint(fast, weights)
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f"vsr_fast.accelerate: the weights of {name} do not fit: {e}") from e
    source_of = dict(zip(fast_keys, state))
    _copy_requires_grad(fast, module, source_of)
    _copy_modes(fast, module, source_of)
    return fast


def _identify(module, name, state):
    """'basicvsr' or 'iconvsr'; TypeError for anything else."""
    if isinstance(module, reference.IconVSR):
        return "iconvsr"
    if isinstance(module, reference.BasicVSR):
        return "basicvsr"
    hint = ""
    for wrapper_attribute in ("generator", "module"):
        if isinstance(getattr(module, wrapper_attribute, None), nn.Module):
            # mmagic's BasicVSR model wraps the network in .generator, (Distributed)DataParallel in .module
            hint = f" (a wrapper? pass its .{wrapper_attribute})"
    try:
        fmt = checkpoint.detect_format(state)
    except checkpoint.CheckpointError as e:
        raise TypeError(f"vsr_fast.accelerate: expected {_EXPECTED}; {name}'s state dict: {e}") from e
    # a bare state dict of a whole model: not a wrapper whose keys carry a prefix
    if fmt.container != "state_dict" or fmt.key is not None or fmt.content not in ("basicvsr", "iconvsr"):
        raise TypeError(
            f"vsr_fast.accelerate: expected {_EXPECTED}, got {name}, whose state dict is not one of "
            f"theirs ({fmt}){hint}"
        )
    return fmt.content


def _placement(module, name, dtype):
    """(device, dtype) of the module's tensors; ValueError when they are spread over several (dtypes:
    unless ``dtype`` chooses)."""
    tensors = list(module.parameters()) + list(module.buffers())
    devices = sorted({str(t.device) for t in tensors})
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point()})
    if len(devices) != 1:
        raise ValueError(f"vsr_fast.accelerate: {name}'s weights are on several devices: {devices}")
    if devices[0] == "meta":
        raise ValueError(
            f"vsr_fast.accelerate: {name}'s weights are on the meta device (they have no values)"
        )
    if len(dtypes) > 1 and dtype is None:
        raise ValueError(
            f"vsr_fast.accelerate: {name}'s weights are in several dtypes {dtypes}: pass dtype= to choose one"
        )
    return tensors[0].device, getattr(torch, dtypes[0])


def _weight(weights, key, name):
    if key not in weights:
        raise ValueError(
            f"vsr_fast.accelerate: {name} has no {key} (in mmagic naming) to read the model's size from"
        )
    return weights[key]


def _constructor_arguments(module, name, kind, weights):
    mid_channels = _weight(weights, "backward_resblocks.main.0.weight", name).shape[0]
    blocks = {}
    for direction in ("backward", "forward"):
        prefix = f"{direction}_resblocks.main.2."
        blocks[direction] = len({k[len(prefix) :].split(".")[0] for k in weights if k.startswith(prefix)})
    if blocks["backward"] != blocks["forward"]:
        raise ValueError(
            f"vsr_fast.accelerate: {name}'s trunks have different numbers of residual blocks "
            f"(backward {blocks['backward']}, forward {blocks['forward']}); the models have one num_blocks"
        )
    arguments = {"mid_channels": mid_channels, "num_blocks": blocks["backward"]}
    if kind == "iconvsr":
        arguments["padding"] = _iconvsr_padding(module, name, weights)
        arguments["keyframe_stride"] = _keyframe_stride(module, name)
    return arguments


def _iconvsr_padding(module, name, weights):
    """From the weights: the refill extractor's TSA fusion reads 2 * padding + 1 frames of EDVR features;
    checked against the attribute the official class keeps it in, when there is one."""
    edvr_channels = _weight(weights, "edvr.conv_first.weight", name).shape[0]
    fused_channels = _weight(weights, "edvr.fusion.feat_fusion.conv.weight", name).shape[1]
    frames, remainder = divmod(fused_channels, edvr_channels)
    if remainder or frames % 2 == 0:
        raise ValueError(
            f"vsr_fast.accelerate: cannot tell {name}'s padding: its EDVR fuses {fused_channels} channels "
            f"of {edvr_channels}-channel features, not an odd number of frames"
        )
    padding = frames // 2
    for attribute in _PADDING_ATTRIBUTES:
        stated = getattr(module, attribute, None)
        if stated is not None and stated != padding:
            raise ValueError(
                f"vsr_fast.accelerate: {name}.{attribute} is {stated!r}, but its EDVR weights fuse {frames} "
                f"frames (padding {padding})"
            )
    return padding


def _keyframe_stride(module, name):
    """Only the module can say: keyframes are a matter of the forward pass, not of the weights."""
    stride = getattr(module, "keyframe_stride", None)
    if stride is None:
        raise ValueError(
            f"vsr_fast.accelerate: cannot tell {name}'s keyframe_stride: the weights do not determine it "
            f"and the module has no keyframe_stride attribute (mmagic's IconVSRNet and BasicSR's IconVSR "
            f"keep it there)"
        )
    if isinstance(stride, bool) or not isinstance(stride, int):
        raise ValueError(f"vsr_fast.accelerate: {name}.keyframe_stride must be an int, got {stride!r}")
    return stride


def _copy_requires_grad(fast, module, source_of):
    source = dict(module.named_parameters(remove_duplicate=False))
    for key, parameter in fast.named_parameters():
        if source_of.get(key) in source:
            parameter.requires_grad_(source[source_of[key]].requires_grad)


def _module_path(keys):
    """The longest module path shared by state-dict keys (each key's last part names a tensor)."""
    paths = [key.split(".")[:-1] for key in keys]
    common = []
    for parts in zip(*paths):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _copy_modes(fast, module, source_of):
    """Each fast submodule gets the training flag of the module's submodule that holds the same tensors
    (BasicSR's names differ from the fast model's); one without tensors (activations, upsampling)
    takes its parent's."""
    source_modules = dict(module.named_modules(remove_duplicate=False))
    modes = {}
    for path, submodule in fast.named_modules(remove_duplicate=False):
        prefix = path + "." if path else ""
        sources = [source for key, source in source_of.items() if key.startswith(prefix)]
        source_path = _module_path(sources) if sources else None
        if source_path in source_modules:
            modes[path] = source_modules[source_path].training
        else:
            modes[path] = modes[path.rpartition(".")[0]] if path else module.training
        submodule.training = modes[path]
