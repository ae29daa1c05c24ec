"""vsr_fast.accelerate on stand-ins of the official modules (their key names and attributes, none of
their code), reference and fast models; the oracle is the reference model with the same weights."""

import warnings

import pytest
import torch
from torch import nn

import vsr_fast
from vsr_fast import reference
from vsr_fast.checkpoint import CheckpointError, convert_state_dict

from _helpers import TOLERANCE

SMALL = dict(mid_channels=16, num_blocks=2)
BUFFERS = ("spynet.mean", "spynet.std")  # registered as buffers by both official codebases


def stand_in(class_name, state_dict, **attributes):
    """A module named like an official class whose state dict is exactly ``state_dict`` (parameters,
    SPyNet's two buffers) and which has the given attributes, as the official class sets them."""
    root = type(class_name, (nn.Module,), {})()
    for key, value in state_dict.items():
        *path, tensor_name = key.split(".")
        owner = root
        for part in path:
            if part not in owner._modules:
                owner.add_module(part, nn.Module())
            owner = owner._modules[part]
        if key in BUFFERS:
            owner.register_buffer(tensor_name, value.clone())
        else:
            owner.register_parameter(tensor_name, nn.Parameter(value.clone()))
    for name, value in attributes.items():
        setattr(root, name, value)
    return root


def reference_model(kind, seed=0, padding=2, keyframe_stride=5):
    torch.manual_seed(seed)
    if kind == "basicvsr":
        return reference.BasicVSR(**SMALL).eval()
    return reference.IconVSR(**SMALL, padding=padding, keyframe_stride=keyframe_stride).eval()


# (source, kind) -> the official class's name and attributes, each attribute as {official name: the
# reference model's attribute it holds}
OFFICIAL = {
    ("mmagic", "basicvsr"): ("BasicVSRNet", {"mid_channels": "mid_channels"}),
    ("mmagic", "iconvsr"): (
        "IconVSRNet",
        {"mid_channels": "mid_channels", "padding": "padding", "keyframe_stride": "keyframe_stride"},
    ),
    ("basicsr", "basicvsr"): ("BasicVSR", {"num_feat": "mid_channels"}),
    ("basicsr", "iconvsr"): (
        "IconVSR",
        {"num_feat": "mid_channels", "temporal_padding": "padding", "keyframe_stride": "keyframe_stride"},
    ),
}


def official(source, kind, ref):
    """The stand-in of the official `source` ('mmagic' / 'basicsr') class with `ref`'s weights."""
    class_name, attributes = OFFICIAL[source, kind]
    sd = ref.state_dict()
    if source == "basicsr":
        sd = convert_state_dict(sd, "basicsr")
    return stand_in(class_name, sd, **{name: getattr(ref, ours) for name, ours in attributes.items()})


def outputs(model, lrs):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # inputs below 64x64
        return model(lrs)


def assert_matches_reference(fast, ref, frames):
    lrs = torch.rand(1, frames, 3, 16, 20, generator=torch.Generator().manual_seed(3))
    expected = outputs(ref.double(), lrs.double())
    actual = outputs(fast, lrs.to(next(fast.parameters()).dtype))
    torch.testing.assert_close(actual.double(), expected, atol=TOLERANCE["float32_chain"], rtol=0)


def test_official_stand_ins_have_the_official_keys(spec_keys):
    """The stand-ins are built from a reference model's renamed state dict; at the official size those
    are exactly the official keys and shapes (tests/data/keys; BasicSR's IconVSR lists its EDVR first,
    an order that no lookup by name depends on)."""
    for kind, cls, files in (
        ("basicvsr", reference.BasicVSR, ("mmagic_BasicVSRNet_c64b30", "basicsr_BasicVSR_f64b30")),
        ("iconvsr", reference.IconVSR, ("mmagic_IconVSRNet_c64b30_pad2", "basicsr_IconVSR_f64b30_pad2")),
    ):
        ref = cls()
        for source, file in zip(("mmagic", "basicsr"), files):
            module = official(source, kind, ref)
            assert sorted((k, tuple(v.shape)) for k, v in module.state_dict().items()) == sorted(
                spec_keys(file)
            )
            assert {k for k, _ in module.named_buffers()} == set(BUFFERS)


@pytest.mark.parametrize("kind", ["basicvsr", "iconvsr"])
@pytest.mark.parametrize("source", ["mmagic", "basicsr", "reference", "fast"])
def test_each_source_gives_the_fast_model_of_the_same_weights(kind, source):
    """Same constructor arguments and bitwise the reference's state dict: the fast model of the
    reference model, which tests/test_models.py compares with it (and the next test here, once more)."""
    ref = reference_model(kind, padding=3, keyframe_stride=2)
    if source == "reference":
        module = ref
    elif source == "fast":
        module = vsr_fast.accelerate(reference_model(kind, seed=1, padding=3, keyframe_stride=2))
        module.load_state_dict(ref.state_dict())
    else:
        module = official(source, kind, ref)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    fast = vsr_fast.accelerate(module)
    assert type(fast) is (vsr_fast.IconVSR if kind == "iconvsr" else vsr_fast.BasicVSR)
    assert fast is not module
    assert fast.mid_channels == 16 and len(fast.backward_resblocks.main[2]) == 2
    if kind == "iconvsr":
        assert (fast.padding, fast.keyframe_stride) == (3, 2)
    expected = ref.state_dict()
    assert list(fast.state_dict()) == list(expected)
    assert all(torch.equal(v, expected[k]) for k, v in fast.state_dict().items())
    # the module is untouched, and the fast model has weights of its own
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(1)
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


@pytest.mark.parametrize("kind", ["basicvsr", "iconvsr"])
def test_the_fast_model_of_a_basicsr_module_computes_the_reference(kind):
    """BasicSR's names differ most from the fast model's; its keyframe_stride 2 and the reference's
    must agree for the outputs to (keyframes at 0, 2, 4)."""
    ref = reference_model(kind, keyframe_stride=2)
    fast = vsr_fast.accelerate(official("basicsr", kind, ref))
    assert_matches_reference(fast, ref, frames=5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_argument_and_the_modules_own_dtype(dtype):
    ref = reference_model("basicvsr")
    module = official("mmagic", "basicvsr", ref)
    fast = vsr_fast.accelerate(module, dtype=dtype)
    assert {p.dtype for p in fast.parameters()} == {dtype}
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    expected = convert_state_dict(module.state_dict(), "mmagic")
    for k, v in fast.state_dict().items():
        assert torch.equal(v, expected[k].to(dtype)), k
    # without dtype: the module's own
    assert {p.dtype for p in vsr_fast.accelerate(module.double()).parameters()} == {torch.float64}
    if dtype == torch.float64:
        assert_matches_reference(fast, ref, frames=3)


def test_frozen_parameters_and_modes_are_kept():
    """BasicSR trains with SPyNet frozen (requires_grad False) and a module may sit in eval inside a
    training model: per parameter and per submodule, through BasicSR's other names."""
    ref = reference_model("iconvsr")
    module = official("basicsr", "iconvsr", ref).train()
    for p in module.spynet.parameters():
        p.requires_grad_(False)
    module.edvr.eval()
    module.upconv1.eval()  # the fast model's upsample1.upsample_conv
    fast = vsr_fast.accelerate(module)
    assert fast.training and fast.backward_resblocks.training
    assert not any(p.requires_grad for p in fast.spynet.parameters())
    assert all(p.requires_grad for n, p in fast.named_parameters() if not n.startswith("spynet."))
    assert not fast.edvr.training and all(not m.training for m in fast.edvr.modules())
    assert not fast.upsample1.upsample_conv.training
    assert fast.spynet.training and fast.upsample2.training
    # and the whole model in eval
    assert not any(m.training for m in vsr_fast.accelerate(module.eval()).modules())


def test_device_is_kept():
    module = official("mmagic", "basicvsr", reference_model("basicvsr"))
    fast = vsr_fast.accelerate(module)
    assert {p.device for p in fast.parameters()} == {torch.device("cpu")}


@pytest.mark.cuda
def test_cuda_device_is_kept():
    ref = reference_model("basicvsr")
    module = official("basicsr", "basicvsr", ref).cuda()
    fast = vsr_fast.accelerate(module)
    assert {p.device.type for p in fast.parameters()} == {"cuda"}
    lrs = torch.rand(1, 3, 3, 20, 28)
    expected = outputs(ref.double(), lrs.double())
    actual = outputs(fast, lrs.cuda()).double().cpu()
    torch.testing.assert_close(actual, expected, atol=TOLERANCE["float32_chain"], rtol=0)


def test_not_a_vsr_module_is_a_type_error_naming_what_was_expected():
    expected = r"expected an mmagic BasicVSRNet / IconVSRNet, a BasicSR BasicVSR / IconVSR"
    with pytest.raises(TypeError, match=expected + r".*got Conv2d"):
        vsr_fast.accelerate(nn.Conv2d(3, 3, 3))
    with pytest.raises(
        TypeError,
        match=expected
        + r".*got OrderedDict \(weights go into a model with vsr_fast.checkpoint.load_checkpoint\)",
    ):
        vsr_fast.accelerate(reference_model("basicvsr").state_dict())
    with pytest.raises(TypeError, match=r"expected .*SPyNet"):
        vsr_fast.accelerate(reference.SPyNet())
    # a wrapper: mmagic's model around .generator, DataParallel around .module
    wrapper = nn.Module()
    wrapper.generator = official("mmagic", "basicvsr", reference_model("basicvsr"))
    with pytest.raises(TypeError, match=r"pass its \.generator"):
        vsr_fast.accelerate(wrapper)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        vsr_fast.accelerate(reference_model("basicvsr"), dtype=torch.int8)


def test_what_cannot_be_known_is_an_error_naming_it():
    ref = reference_model("iconvsr")
    sd = convert_state_dict(ref.state_dict(), "basicsr")
    with pytest.raises(
        ValueError, match=r"cannot tell IconVSR's keyframe_stride.*no keyframe_stride attribute"
    ):
        vsr_fast.accelerate(stand_in("IconVSR", sd, num_feat=16, temporal_padding=2))
    with pytest.raises(
        ValueError, match=r"IconVSR\.temporal_padding is 3, but its EDVR weights fuse 5 frames"
    ):
        vsr_fast.accelerate(stand_in("IconVSR", sd, temporal_padding=3, keyframe_stride=5))
    with pytest.raises(ValueError, match=r"keyframe_stride must be an int"):
        vsr_fast.accelerate(stand_in("IconVSR", sd, keyframe_stride="5"))
    # without the attribute, padding still comes from the weights
    assert vsr_fast.accelerate(stand_in("IconVSR", sd, keyframe_stride=4)).padding == 2


def test_inconsistent_weights_are_named():
    sd = reference_model("basicvsr").state_dict()
    uneven = {k: v for k, v in sd.items() if not k.startswith("forward_resblocks.main.2.1.")}
    with pytest.raises(ValueError, match=r"different numbers of residual blocks \(backward 2, forward 1\)"):
        vsr_fast.accelerate(stand_in("BasicVSRNet", uneven))
    extra = dict(sd, **{"conv_extra.weight": torch.zeros(1)})
    with pytest.raises(
        CheckpointError, match=r"accelerate: the weights of BasicVSRNet do not fit.*conv_extra"
    ):
        vsr_fast.accelerate(stand_in("BasicVSRNet", extra))
    wrong = dict(sd, **{"conv_hr.weight": torch.zeros(64, 64, 1, 1)})
    with pytest.raises(CheckpointError, match=r"shape mismatches 1: conv_hr\.weight"):
        vsr_fast.accelerate(stand_in("BasicVSRNet", wrong))


def test_weights_spread_over_dtypes_need_the_dtype_argument():
    module = official("mmagic", "basicvsr", reference_model("basicvsr"))
    module.conv_hr.double()
    with pytest.raises(ValueError, match=r"several dtypes \['float32', 'float64'\]: pass dtype="):
        vsr_fast.accelerate(module)
    assert {p.dtype for p in vsr_fast.accelerate(module, dtype=torch.float32).parameters()} == {torch.float32}
