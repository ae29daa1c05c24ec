"""Load and convert BasicVSR / IconVSR / SPyNet / EDVR checkpoints from mmagic and BasicSR.

Formats understood:

* containers: mmagic/mmediting runner checkpoints ``{'meta', 'state_dict': {'generator.*',
  'generator_ema.*', 'step_counter', ...}, 'optimizer', ...}``; BasicSR files ``{'params': ...,
  'params_ema': ...}``; bare state dicts (in either naming, possibly with a ``generator.`` or DDP
  ``module.`` prefix); ``.safetensors`` files (flat, when the safetensors package is installed).
* key names: mmagic (``*_resblocks``, ``upsample1.upsample_conv``, mmcv ConvModule ``.conv.`` levels,
  ``pcd_alignment``, ``feat_l2_conv1``) or BasicSR (``*_trunk``, ``upconv1``, SPyNet conv index 2j,
  ``pcd_align``, ``conv_l2_1``); converted in both directions by `convert_state_dict`.
* contents: a whole BasicVSR or IconVSR, or a standalone SPyNet / EDVR feature-extractor file. A
  component file loads into ``model.spynet`` / ``model.edvr`` (the rest of the model is left as it
  is) or into a bare SPyNet / EDVRFeatureExtractor; a whole-model file loaded into a bare SPyNet or
  EDVR extractor gives it the model's (fine-tuned) component weights.

Which weights by default: the non-EMA ones (``params`` in BasicSR files, ``generator.`` in mmagic
runner checkpoints), which is what BasicSR's own loader (``param_key_g: params``) and mmagic's
``generator`` module read; every published BasicVSR/IconVSR checkpoint has only those. Pass
``key='params_ema'`` / ``'generator_ema'`` (or ``key='ema'`` for whichever exists) for the EMA copy.
If only the EMA copy exists it is used and the detected format says so.

Loading is all-or-nothing: the checkpoint is read, converted and checked against the model (missing
and unexpected keys, shapes) before a single tensor is copied, so a failed load leaves the model as
it was. Nothing is ever downloaded.
"""

import os
import pickle
import re
from collections import OrderedDict
from typing import NamedTuple, Optional

import torch

__all__ = [
    "CheckpointError",
    "CheckpointFormat",
    "LoadResult",
    "load_checkpoint",
    "convert_state_dict",
    "detect_format",
    "read_checkpoint",
]

_MAX_LISTED = 10  # keys listed per category in error messages


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint that cannot be read, recognised or loaded into the given model.

    Derives from both ValueError and RuntimeError so callers written against either (torch's
    ``load_state_dict`` raises RuntimeError) catch it.
    """


class CheckpointFormat(NamedTuple):
    container: str  # 'mmagic_runner' | 'basicsr' | 'state_dict' | 'safetensors'
    naming: str  # 'mmagic' | 'basicsr' | 'neutral' (no key tells the namings apart)
    content: str  # 'basicvsr' | 'iconvsr' | 'spynet' | 'edvr' | 'unknown'
    key: Optional[str] = None  # the sub-dict used: 'params', 'params_ema', 'generator', ...

    def __str__(self):
        container = {
            "mmagic_runner": "mmagic runner checkpoint",
            "basicsr": "BasicSR checkpoint",
            "state_dict": "bare state dict",
            "safetensors": "safetensors file",
        }.get(self.container, self.container)
        if self.key:
            container += f" [{self.key}]"
        naming = {
            "mmagic": "mmagic key names",
            "basicsr": "BasicSR key names",
            "neutral": "key names common to mmagic and BasicSR",
        }.get(self.naming, self.naming)
        content = {
            "basicvsr": "BasicVSR",
            "iconvsr": "IconVSR",
            "spynet": "SPyNet",
            "edvr": "EDVR feature extractor",
        }.get(self.content, "unrecognised contents")
        return f"{container}, {naming}, {content}"


class LoadResult(NamedTuple):
    format: CheckpointFormat
    missing_keys: list
    unexpected_keys: list


# --------------------------------------------------------------------------------------------------
# key-name conversion
#
# Each rule is (mmagic regex, BasicSR template, BasicSR regex, mmagic template). Prefixes are optional
# so the same rules serve whole models (``spynet.``/``edvr.``) and standalone component files. Keys
# matching no rule are spelt the same in both namings and pass through.

_P = r"(?P<p>(?:spynet\.)?)"
_E = r"(?P<p>(?:edvr\.)?)"
_WB = r"(?P<wb>weight|bias)"
# ConvModule-wrapped convs inside EDVR (TSA names with an activation, PCD offset/feature convs)
_TSA_CONVMODULE = r"feat_fusion|spatial_attn[1-4]|spatial_attn_l[1-3]|spatial_attn_add1"
_PCD_CONVMODULE = r"offset_conv[1-3]\.l[1-3]|feat_conv\.l[1-3]|cas_offset_conv[12]"

_RULES = [
    (
        r"^(?P<d>backward|forward)_resblocks\.(?P<r>.+)$",
        "{d}_trunk.{r}",
        r"^(?P<d>backward|forward)_trunk\.(?P<r>.+)$",
        "{d}_resblocks.{r}",
    ),
    (
        rf"^upsample(?P<i>[12])\.upsample_conv\.{_WB}$",
        "upconv{i}.{wb}",
        rf"^upconv(?P<i>[12])\.{_WB}$",
        "upsample{i}.upsample_conv.{wb}",
    ),
    (
        rf"^{_P}basic_module\.(?P<L>\d+)\.basic_module\.(?P<j>\d+)\.conv\.{_WB}$",
        "{p}basic_module.{L}.basic_module.{j2}.{wb}",
        rf"^{_P}basic_module\.(?P<L>\d+)\.basic_module\.(?P<j2>\d*[02468])\.{_WB}$",
        "{p}basic_module.{L}.basic_module.{j}.conv.{wb}",
    ),
    (
        rf"^{_E}feat_l(?P<l>[23])_conv(?P<k>[12])\.conv\.{_WB}$",
        "{p}conv_l{l}_{k}.{wb}",
        rf"^{_E}conv_l(?P<l>[23])_(?P<k>[12])\.{_WB}$",
        "{p}feat_l{l}_conv{k}.conv.{wb}",
    ),
    (
        rf"^{_E}pcd_alignment\.(?P<n>{_PCD_CONVMODULE})\.conv\.{_WB}$",
        "{p}pcd_align.{n}.{wb}",
        rf"^{_E}pcd_align\.(?P<n>{_PCD_CONVMODULE})\.{_WB}$",
        "{p}pcd_alignment.{n}.conv.{wb}",
    ),
    (
        rf"^{_E}pcd_alignment\.(?P<r>(?:dcn_pack\.l[1-3]|cas_dcnpack)\..+)$",
        "{p}pcd_align.{r}",
        rf"^{_E}pcd_align\.(?P<r>(?:dcn_pack\.l[1-3]|cas_dcnpack)\..+)$",
        "{p}pcd_alignment.{r}",
    ),
    (
        rf"^{_E}fusion\.(?P<n>{_TSA_CONVMODULE})\.conv\.{_WB}$",
        "{p}fusion.{n}.{wb}",
        rf"^{_E}fusion\.(?P<n>{_TSA_CONVMODULE})\.{_WB}$",
        "{p}fusion.{n}.conv.{wb}",
    ),
]
_RULES = [(re.compile(a), b, re.compile(c), d) for a, b, c, d in _RULES]


def _convert_key(key, to):
    for mm_re, bsr_tpl, bsr_re, mm_tpl in _RULES:
        src_re, tpl = (mm_re, bsr_tpl) if to == "basicsr" else (bsr_re, mm_tpl)
        m = src_re.match(key)
        if m:
            fields = m.groupdict()
            if "j" in fields:  # mmagic SPyNet conv j <-> BasicSR Sequential index 2j (ReLUs between)
                fields["j2"] = str(2 * int(fields["j"]))
            elif "j2" in fields:
                fields["j"] = str(int(fields["j2"]) // 2)
            return tpl.format(**fields)
    return key


def _key_naming(key):
    """'mmagic' / 'basicsr' if this key is spelt differently in the other naming, else None."""
    for mm_re, _, bsr_re, _ in _RULES:
        if mm_re.match(key):
            return "mmagic"
        if bsr_re.match(key):
            return "basicsr"
    return None


def _detect_naming(keys):
    namings = {_key_naming(k) for k in keys} - {None}
    if len(namings) == 2:
        mm = [k for k in keys if _key_naming(k) == "mmagic"][:3]
        bsr = [k for k in keys if _key_naming(k) == "basicsr"][:3]
        raise CheckpointError(
            f"vsr_fast.checkpoint: the state dict mixes mmagic key names (e.g. {mm}) "
            f"and BasicSR key names (e.g. {bsr})"
        )
    return namings.pop() if namings else "neutral"


def _detect_content(keys):
    keys = list(keys)
    if not keys:
        return "unknown"
    if any(k.startswith("edvr.") for k in keys) and any(k.startswith("spynet.") for k in keys):
        return "iconvsr"
    if any(k.startswith("spynet.") for k in keys) and any(
        k.startswith(("backward_", "forward_")) for k in keys
    ):
        return "basicvsr"
    if all(k.startswith("basic_module.") or k in ("mean", "std") for k in keys):
        return "spynet"
    if any(k.startswith("conv_first.") for k in keys) and any(
        k.startswith(("pcd_alignment.", "pcd_align.")) for k in keys
    ):
        return "edvr"
    return "unknown"


def convert_state_dict(state_dict, to):
    """Rename keys to ``to='mmagic'`` or ``to='basicsr'`` naming; tensors are shared, not copied.

    Accepts a flat state dict in either naming (already-converted keys pass through, so converting
    twice is harmless) or a checkpoint container, which is unwrapped as `load_checkpoint` would.
    Returns a flat OrderedDict in the same key order. ``convert(convert(sd, 'basicsr'), 'mmagic')``
    is ``sd``.
    """
    if to not in ("mmagic", "basicsr"):
        raise ValueError(f"convert_state_dict: to must be 'mmagic' or 'basicsr', got {to!r}")
    flat, _ = _unwrap(state_dict, None, "state_dict")
    _detect_naming(flat.keys())  # refuse mixed dicts: renaming them could silently collide
    out = OrderedDict()
    for k, v in flat.items():
        nk = _convert_key(k, to)
        if nk in out:
            raise CheckpointError(f"convert_state_dict: keys collide after conversion: {k!r} -> {nk!r}")
        out[nk] = v
    return out


# --------------------------------------------------------------------------------------------------
# reading and unwrapping

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def read_checkpoint(path):
    """Read a checkpoint file safely (``weights_only=True``); ``.safetensors`` needs safetensors."""
    if isinstance(path, bytes):
        path = path.decode()
    path = os.fspath(path)
    if _URL_RE.match(path):
        raise CheckpointError(
            f"vsr_fast.checkpoint: {path!r} is a URL; vsr_fast never downloads anything. Download the "
            f"file yourself and pass its local path."
        )
    if os.path.isdir(path):
        raise IsADirectoryError(f"vsr_fast.checkpoint: {path!r} is a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vsr_fast.checkpoint: no such checkpoint file: {path!r}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"vsr_fast.checkpoint: {path!r} is empty (0 bytes), not a checkpoint")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise CheckpointError(
                f"vsr_fast.checkpoint: {path!r} is a .safetensors file but the "
                f"safetensors package is not installed (pip install safetensors)"
            ) from e
        try:
            return load_file(path, device="cpu")
        except Exception as e:  # noqa: BLE001 - SafetensorError and friends, re-raised with the path
            raise CheckpointError(
                f"vsr_fast.checkpoint: cannot read {path!r} as a safetensors file: {_reason(e)}"
            ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the reason and what to do
        # torch's own message suggests weights_only=False for any unpickling failure, also of a
        # damaged file; only a refused global means the file really holds other objects
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            hint = (
                " The file holds objects other than tensors (e.g. an mmagic runner checkpoint with config "
                "objects in 'meta'): if you trust it, load it yourself with weights_only=False and pass "
                "the dict."
            )
        else:
            hint = " It is not a checkpoint torch.load can read, or it is damaged (truncated?)."
        raise CheckpointError(
            f"vsr_fast.checkpoint: cannot read {path!r} with torch.load(weights_only=True): "
            f"{_reason(e).rstrip('.')}.{hint}"
        ) from e


def _reason(exc):
    """An exception's message, or its type when it has none (torch.load of an empty stream)."""
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _strip_prefix(sd, prefix):
    return OrderedDict((k[len(prefix) :], v) for k, v in sd.items() if k.startswith(prefix))


def _unwrap(obj, key, container):
    """Return (flat state dict of tensors, CheckpointFormat-without-naming/content as (container, key))."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"vsr_fast.checkpoint: expected a dict, got {type(obj).__name__}")
    aliases = {"ema": ("params_ema", "generator_ema")}
    wanted = aliases.get(key, (key,)) if key is not None else None

    # BasicSR: {'params': ..., 'params_ema': ...}
    if any(k in obj and isinstance(obj[k], dict) for k in ("params", "params_ema")):
        options = [k for k in ("params", "params_ema") if isinstance(obj.get(k), dict)]
        chosen = _choose(options, wanted, "params", "BasicSR checkpoint")
        return _as_tensors(obj[chosen]), ("basicsr" if container == "state_dict" else container, chosen)

    # mmagic runner: {'state_dict': {...}}
    if isinstance(obj.get("state_dict"), dict):
        inner = obj["state_dict"]
        container = "mmagic_runner"
    else:
        inner = obj
    _check_keys(inner)
    inner = OrderedDict(inner)
    # DDP wrapper prefix, as mmcv strips it
    if inner and all(k.startswith("module.") for k in inner):
        inner = _strip_prefix(inner, "module.")
    prefixes = [p for p in ("generator", "generator_ema") if any(k.startswith(p + ".") for k in inner)]
    if prefixes:
        chosen = _choose(prefixes, wanted, "generator", "mmagic checkpoint")
        # everything else (step_counter, discriminator, ...) belongs to the training wrapper
        return _as_tensors(_strip_prefix(inner, chosen + ".")), (container, chosen)
    if wanted is not None:
        raise CheckpointError(
            f"vsr_fast.checkpoint: key={key!r} was requested but the checkpoint has "
            f"no params/params_ema entries and no generator./generator_ema. prefixes"
        )
    inner.pop("step_counter", None)
    return _as_tensors(inner), (container, None)


def _choose(options, wanted, default, what):
    if wanted is not None:
        for w in wanted:
            if w in options:
                return w
        raise CheckpointError(
            f"vsr_fast.checkpoint: {what} has no {'/'.join(wanted)} weights; it has {options}"
        )
    # fall back to the EMA copy only when it is all there is
    return default if default in options else options[0]


def _check_keys(sd):
    bad = [k for k in sd if not isinstance(k, str)]
    if bad:
        raise CheckpointError(
            f"vsr_fast.checkpoint: state-dict keys must be strings, got {len(bad)} that are not: "
            + ", ".join(repr(k) for k in bad[:_MAX_LISTED])
        )


def _as_tensors(sd):
    _check_keys(sd)
    bad = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"vsr_fast.checkpoint: entries that are not tensors: {_listing(bad)}")
    return OrderedDict(sd)


def detect_format(state_dict, key=None):
    """Describe a loaded checkpoint object (container, key naming, contents) as a CheckpointFormat."""
    flat, (container, used_key) = _unwrap(state_dict, key, "state_dict")
    return CheckpointFormat(container, _detect_naming(flat.keys()), _detect_content(flat.keys()), used_key)


# --------------------------------------------------------------------------------------------------
# loading into a model

# constants the official code registers after loading, hence absent from component files
_OPTIONAL_BUFFERS = ("mean", "std")


def _listing(keys):
    keys = list(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)}: {shown}{more}"


def load_checkpoint(model, path_or_state_dict, strict=True, key=None):
    """Load mmagic or BasicSR weights (any container, either naming) into ``model``.

    ``model`` is any module whose state-dict keys use mmagic or BasicSR names: a whole BasicVSR or
    IconVSR, or a SPyNet / EDVRFeatureExtractor. ``path_or_state_dict`` is a local path (``.pth``,
    ``.safetensors``) or an already loaded dict. ``key`` picks the sub-dict (see the module doc).

    With ``strict=True`` every model key must be in the checkpoint (SPyNet's constant mean/std may
    be absent) and the checkpoint must have no other keys; shapes must always match. On failure a
    `CheckpointError` names the detected format and the offending keys, and the model is unchanged.
    Returns a `LoadResult` (format, missing keys, unexpected keys).
    """
    if isinstance(path_or_state_dict, dict):
        obj, source = path_or_state_dict, "the given state dict"
        base_container = "state_dict"
    else:
        obj, source = read_checkpoint(path_or_state_dict), repr(os.fspath(path_or_state_dict))
        base_container = "safetensors" if source.endswith(".safetensors'") else "state_dict"
    flat, (container, used_key) = _unwrap(obj, key, base_container)
    fmt = CheckpointFormat(container, _detect_naming(flat.keys()), _detect_content(flat.keys()), used_key)

    target = model.state_dict()
    target_naming = _detect_naming(target.keys())
    target_content = _detect_content(target.keys())
    sd = convert_state_dict(flat, "basicsr" if target_naming == "basicsr" else "mmagic")

    # which model keys this checkpoint is meant to fill
    scope = list(target.keys())
    whole = ("basicvsr", "iconvsr")
    if target_content in whole and fmt.content in ("spynet", "edvr"):
        prefix = fmt.content + "."
        sd = OrderedDict((prefix + k, v) for k, v in sd.items())
        scope = [k for k in scope if k.startswith(prefix)]
    elif target_content in ("spynet", "edvr") and fmt.content in whole:
        sd = _strip_prefix(sd, target_content + ".")

    scope_set = set(scope)
    optional = {
        k for k in scope if k.rsplit(".", 1)[-1] in _OPTIONAL_BUFFERS and _is_spynet_buffer(k, target_content)
    }
    missing = [k for k in scope if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in scope_set]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in sd.items()
        if k in scope_set and v.shape != target[k].shape
    ]
    if mismatched or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"missing keys {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_listing(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches {_listing(mismatched)}")
        raise CheckpointError(
            f"vsr_fast.checkpoint: cannot load {source} into {type(model).__name__} "
            f"(detected format: {fmt}; model expects {target_naming} names, "
            f"{target_content} contents); the model was not modified. " + "; ".join(parts)
        )

    # through load_state_dict (not copy_ into state_dict() views), so that modules with their own
    # _load_from_state_dict or load hooks get the checkpoint the way torch hands it to them
    model.load_state_dict(OrderedDict((k, v) for k, v in sd.items() if k in scope_set), strict=False)
    return LoadResult(fmt, missing, unexpected)


def _is_spynet_buffer(key, target_content):
    if target_content == "spynet":
        return key in _OPTIONAL_BUFFERS
    return key in ("spynet.mean", "spynet.std")
