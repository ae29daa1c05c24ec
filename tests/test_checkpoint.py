"""vsr_fast.checkpoint: formats, conversion both ways, component files, all-or-nothing loading."""

import copy
import re
from collections import OrderedDict

import pytest
import torch

from vsr_fast.checkpoint import (
    CheckpointError,
    convert_state_dict,
    detect_format,
    load_checkpoint,
    read_checkpoint,
)
from vsr_fast.reference import BasicVSR, EDVRFeatureExtractor, IconVSR, SPyNet


def _random_sd(rows, seed=0):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (k, torch.randn(s, generator=g) if s else torch.randn((), generator=g)) for k, s in rows
    )


def _small_basicvsr(seed=0):
    torch.manual_seed(seed)
    return BasicVSR(mid_channels=8, num_blocks=1)


def _small_iconvsr(seed=0):
    torch.manual_seed(seed)
    return IconVSR(mid_channels=8, num_blocks=1)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, snapshot):
    return all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())


def _perturbed(sd, seed=1):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (k, v + torch.randn(v.shape, generator=g)) if v.is_floating_point() else (k, v) for k, v in sd.items()
    )


# --- conversion ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mm,bsr",
    [
        ("mmagic_BasicVSRNet_c64b30", "basicsr_BasicVSR_f64b30"),
        ("mmagic_IconVSRNet_c64b30_pad2", "basicsr_IconVSR_f64b30_pad2"),
    ],
)
def test_conversion_matches_official_key_lists_and_round_trips(spec_keys, mm, bsr):
    mm_rows, bsr_rows = spec_keys(mm), spec_keys(bsr)
    sd = _random_sd(mm_rows)
    as_bsr = convert_state_dict(sd, to="basicsr")
    assert {k: tuple(v.shape) for k, v in as_bsr.items()} == dict(bsr_rows)
    back = convert_state_dict(as_bsr, to="mmagic")
    assert list(back) == list(sd)
    assert all(back[k] is sd[k] for k in sd)  # renaming only, tensors untouched
    # and the other way round, from BasicSR's own key order
    bsr_sd = _random_sd(bsr_rows)
    again = convert_state_dict(convert_state_dict(bsr_sd, to="mmagic"), to="basicsr")
    assert list(again) == list(bsr_sd)
    # converting to the naming a dict already has changes nothing
    assert list(convert_state_dict(sd, to="mmagic")) == list(sd)


def test_conversion_of_component_files():
    spynet = SPyNet().state_dict()
    del spynet["mean"], spynet["std"]
    bsr = convert_state_dict(spynet, to="basicsr")
    assert "basic_module.5.basic_module.8.bias" in bsr and "basic_module.0.basic_module.0.weight" in bsr
    assert list(convert_state_dict(bsr, to="mmagic")) == list(spynet)
    edvr = EDVRFeatureExtractor(mid_channels=8, num_frames=5, center_frame_idx=2).state_dict()
    bsr = convert_state_dict(edvr, to="basicsr")
    for key in (
        "conv_l2_1.weight",
        "pcd_align.offset_conv3.l1.bias",
        "pcd_align.cas_dcnpack.conv_offset.weight",
        "fusion.spatial_attn_add1.weight",
        "fusion.spatial_attn5.weight",
        "fusion.temporal_attn1.bias",
    ):
        assert key in bsr, key
    assert not any(".conv." in k for k in bsr)
    assert list(convert_state_dict(bsr, to="mmagic")) == list(edvr)


def test_mixed_naming_is_refused():
    sd = OrderedDict(
        [("backward_resblocks.main.0.weight", torch.zeros(1)), ("upconv1.weight", torch.zeros(1))]
    )
    with pytest.raises(CheckpointError, match="mixes"):
        convert_state_dict(sd, to="basicsr")
    with pytest.raises(ValueError, match="to must be"):
        convert_state_dict(OrderedDict(), to="mmedit")


# --- format detection ---------------------------------------------------------------------------


def test_detect_format():
    mm = BasicVSR(mid_channels=8, num_blocks=1).state_dict()
    bsr = convert_state_dict(mm, "basicsr")
    f = detect_format(mm)
    assert (f.container, f.naming, f.content, f.key) == ("state_dict", "mmagic", "basicvsr", None)
    f = detect_format({"params": bsr, "params_ema": bsr})
    assert (f.container, f.naming, f.content, f.key) == ("basicsr", "basicsr", "basicvsr", "params")
    assert detect_format({"params": bsr, "params_ema": bsr}, key="ema").key == "params_ema"
    runner = {
        "meta": {},
        "state_dict": OrderedDict(
            [(f"generator.{k}", v) for k, v in IconVSR(mid_channels=8, num_blocks=1).state_dict().items()]
            + [("step_counter", torch.zeros(1))]
        ),
    }
    f = detect_format(runner)
    assert (f.container, f.naming, f.content, f.key) == ("mmagic_runner", "mmagic", "iconvsr", "generator")
    assert "mmagic runner checkpoint" in str(f) and "IconVSR" in str(f)
    spy = OrderedDict((k, v) for k, v in SPyNet().state_dict().items() if k not in ("mean", "std"))
    assert detect_format(spy)[1:3] == ("mmagic", "spynet")
    assert detect_format({"params": convert_state_dict(spy, "basicsr")})[1:3] == ("basicsr", "spynet")
    edvr = EDVRFeatureExtractor(mid_channels=8, num_frames=5, center_frame_idx=2).state_dict()
    assert detect_format(convert_state_dict(edvr, "basicsr"))[1:3] == ("basicsr", "edvr")


# --- loading ------------------------------------------------------------------------------------


def test_mmagic_runner_checkpoint_with_prefix_and_step_counter_loads(tmp_path):
    src = _small_basicvsr(1)
    ema = _perturbed(src.state_dict())
    runner = {
        "meta": {"epoch": 1, "iter": 300000},
        "state_dict": OrderedDict(
            [(f"generator.{k}", v) for k, v in src.state_dict().items()]
            + [(f"generator_ema.{k}", v) for k, v in ema.items()]
            + [("step_counter", torch.tensor([300000.0]))]
        ),
    }
    path = tmp_path / "basicvsr_runner.pth"
    torch.save(runner, path)
    dst = _small_basicvsr(2)
    result = load_checkpoint(dst, path)
    assert result.format.container == "mmagic_runner" and result.format.key == "generator"
    assert not result.missing_keys and not result.unexpected_keys
    assert _same(dst, src.state_dict())
    load_checkpoint(dst, runner, key="generator_ema")
    assert _same(dst, ema)
    load_checkpoint(dst, runner, key="generator")
    assert _same(dst, src.state_dict())


def test_basicsr_params_and_ema():
    src = _small_iconvsr(1)
    params = convert_state_dict(src.state_dict(), "basicsr")
    ema = _perturbed(params)
    dst = _small_iconvsr(2)
    assert load_checkpoint(dst, {"params": params, "params_ema": ema}).format.key == "params"
    assert _same(dst, src.state_dict())
    load_checkpoint(dst, {"params": params, "params_ema": ema}, key="params_ema")
    assert _same(dst, convert_state_dict(ema, "mmagic"))
    # only an EMA copy: used, and the format says so
    assert load_checkpoint(dst, {"params_ema": params}).format.key == "params_ema"
    with pytest.raises(CheckpointError, match="params_ema"):
        load_checkpoint(dst, {"params": params}, key="params_ema")


def test_missing_key_raises_and_leaves_the_model_untouched(tmp_path):
    src = _small_basicvsr(1)
    sd = convert_state_dict(src.state_dict(), "basicsr")
    del sd["backward_trunk.main.2.0.conv1.weight"]
    path = tmp_path / "partial.pth"
    torch.save({"params": sd}, path)
    dst = _small_basicvsr(2)
    before = _snapshot(dst)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(dst, path)
    msg = str(info.value)
    assert "missing keys 1: backward_resblocks.main.2.0.conv1.weight" in msg
    assert "BasicSR checkpoint [params], BasicSR key names, BasicVSR" in msg
    assert "not modified" in msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)
    assert _same(dst, before)
    # strict=False loads the rest and reports what was missing
    result = load_checkpoint(dst, path, strict=False)
    assert result.missing_keys == ["backward_resblocks.main.2.0.conv1.weight"]
    assert torch.equal(dst.conv_last.weight, src.conv_last.weight)
    assert torch.equal(
        dst.backward_resblocks.main[2][0].conv1.weight, before["backward_resblocks.main.2.0.conv1.weight"]
    )


def test_unexpected_and_mismatched_keys_are_named():
    src = _small_basicvsr(1).state_dict()
    dst = _small_basicvsr(2)
    before = _snapshot(dst)
    extra = OrderedDict(src)
    extra["reconstruction.0.conv1.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected keys 1: reconstruction\.0\.conv1\.weight"):
        load_checkpoint(dst, extra)
    assert _same(dst, before)
    assert load_checkpoint(dst, extra, strict=False).unexpected_keys == ["reconstruction.0.conv1.weight"]
    dst = _small_basicvsr(2)
    wrong = OrderedDict(src)
    wrong["fusion.weight"] = torch.zeros(8, 16, 3, 3)
    with pytest.raises(
        CheckpointError, match=r"fusion\.weight: checkpoint \(8, 16, 3, 3\) vs model \(8, 16, 1, 1\)"
    ):
        load_checkpoint(dst, wrong, strict=False)  # shapes are checked even when not strict
    assert _same(dst, before)


def test_long_key_lists_are_truncated_with_counts():
    dst = _small_basicvsr()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(dst, OrderedDict([("conv_hr.weight", dst.conv_hr.weight.detach())]))
    msg = str(info.value)
    n_missing = len(dst.state_dict()) - 1 - 2  # spynet mean/std are optional
    assert f"missing keys {n_missing}: " in msg
    assert f"(+{n_missing - 10} more)" in msg


def test_whole_model_into_a_wrong_model_is_refused():
    with pytest.raises(CheckpointError, match="detected format: bare state dict, mmagic key names, IconVSR"):
        load_checkpoint(_small_basicvsr(), _small_iconvsr().state_dict())


def test_spynet_component_files_in_both_namings(tmp_path):
    torch.manual_seed(5)
    spy = SPyNet().state_dict()
    mm_file = OrderedDict((k, v) for k, v in spy.items() if k not in ("mean", "std"))
    bsr_file = {"params": convert_state_dict(mm_file, "basicsr")}
    for file in (mm_file, bsr_file):
        model = _small_basicvsr(1)
        before = _snapshot(model)
        result = load_checkpoint(model, file)
        assert result.format.content == "spynet"
        for k, v in model.state_dict().items():
            if k.startswith("spynet."):
                assert torch.equal(v, spy[k[len("spynet.") :]]), k
            else:
                assert torch.equal(v, before[k]), k  # the rest of the model is left alone
        bare = SPyNet()
        load_checkpoint(bare, file)
        assert _same(bare, spy)
    # the constructor argument goes through the same loader
    path = tmp_path / "spynet_20210409.pth"
    torch.save(mm_file, path)
    assert _same(BasicVSR(mid_channels=8, num_blocks=1, spynet_pretrained=str(path)).spynet, spy)


def test_edvr_component_files_in_both_namings(tmp_path):
    torch.manual_seed(6)
    edvr = EDVRFeatureExtractor(mid_channels=8, num_frames=5, center_frame_idx=2).state_dict()
    for file in (edvr, {"params": convert_state_dict(edvr, "basicsr")}):
        model = _small_iconvsr(1)
        before = _snapshot(model)
        assert load_checkpoint(model, file).format.content == "edvr"
        for k, v in model.state_dict().items():
            expected = edvr[k[len("edvr.") :]] if k.startswith("edvr.") else before[k]
            assert torch.equal(v, expected), k
        bare = EDVRFeatureExtractor(mid_channels=8, num_frames=5, center_frame_idx=2)
        load_checkpoint(bare, file)
        assert _same(bare, edvr)
    path = tmp_path / "edvrm.pth"
    torch.save({"params": convert_state_dict(edvr, "basicsr")}, path)
    assert _same(IconVSR(mid_channels=8, num_blocks=1, edvr_pretrained=path).edvr, edvr)
    # an EDVR file for the other temporal padding has different TSA shapes
    with pytest.raises(CheckpointError, match="feat_fusion"):
        load_checkpoint(IconVSR(mid_channels=8, num_blocks=1, padding=3), edvr)


def test_whole_model_into_a_bare_component():
    src = _small_iconvsr(3)
    spy, edvr = SPyNet(), EDVRFeatureExtractor(mid_channels=8, num_frames=5, center_frame_idx=2)
    load_checkpoint(spy, {"params": convert_state_dict(src.state_dict(), "basicsr")})
    load_checkpoint(edvr, src.state_dict())
    assert _same(spy, src.spynet.state_dict()) and _same(edvr, src.edvr.state_dict())


def test_nothing_is_downloaded():
    url = "https://download.openmmlab.com/mmediting/restorers/basicvsr/spynet_20210409-c6c1bd09.pth"
    with pytest.raises(CheckpointError, match="never downloads"):
        load_checkpoint(SPyNet(), url)
    with pytest.raises(CheckpointError, match="never downloads"):
        BasicVSR(mid_channels=8, num_blocks=1, spynet_pretrained=url)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(SPyNet(), "/nonexistent/spynet.pth")
    with pytest.raises(TypeError):
        SPyNet(pretrained=123)


class _NotATensor:
    pass


def test_unsafe_pickles_are_refused_with_advice(tmp_path):
    path = tmp_path / "runner.pth"
    torch.save({"meta": _NotATensor(), "state_dict": _small_basicvsr().state_dict()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(path)


def test_safetensors(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    src = _small_basicvsr(1)
    path = tmp_path / "basicvsr.safetensors"
    safetensors_torch.save_file(dict(convert_state_dict(src.state_dict(), "basicsr")), str(path))
    dst = _small_basicvsr(2)
    assert load_checkpoint(dst, path).format.container == "safetensors"
    assert _same(dst, src.state_dict())


def test_loads_into_other_dtypes():
    src = _small_basicvsr(1)
    dst = copy.deepcopy(_small_basicvsr(2)).double()
    load_checkpoint(dst, src.state_dict())
    assert dst.conv_last.weight.dtype == torch.float64
    assert torch.equal(dst.conv_last.weight.float(), src.conv_last.weight)


def test_error_message_names_model_and_source(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({"params": {}}, path)
    with pytest.raises(CheckpointError, match=re.escape(f"cannot load '{path}' into SPyNet")):
        load_checkpoint(SPyNet(), path)


# ---- regressions of issue 8: every bad file gets the package's error, with the path -------------


def test_a_directory_is_named_as_one(tmp_path):
    with pytest.raises(IsADirectoryError, match=re.escape(f"{str(tmp_path)!r} is a directory")):
        read_checkpoint(tmp_path)


def test_an_empty_file_says_so(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=re.escape(f"{str(path)!r} is empty (0 bytes)")):
        read_checkpoint(path)


def test_a_damaged_pth_gives_a_reason_and_no_misleading_hint(tmp_path):
    path = tmp_path / "truncated.pth"
    good = tmp_path / "good.pth"
    torch.save(_small_basicvsr().state_dict(), good)
    path.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=re.escape(repr(str(path)))) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "damaged" in message and "weights_only=False" not in message, message
    assert ": ." not in message and not message.rstrip().endswith(":"), message  # a reason is given


def test_a_damaged_safetensors_file_gives_the_checkpoint_error_with_the_path(tmp_path):
    pytest.importorskip("safetensors.torch")
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match=re.escape(f"cannot read {str(path)!r} as a safetensors file")):
        read_checkpoint(path)


def test_non_string_state_dict_keys_are_refused_by_name(tmp_path):
    sd = dict(_small_basicvsr().state_dict())
    sd[3] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"state-dict keys must be strings, got 1 that are not: 3"):
        load_checkpoint(_small_basicvsr(), sd)
    path = tmp_path / "int_keys.pth"
    torch.save({"params": sd}, path)
    with pytest.raises(CheckpointError, match=r"state-dict keys must be strings"):
        load_checkpoint(_small_basicvsr(), path)
