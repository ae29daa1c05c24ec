"""A seeded, time-bounded fuzz of flow_warp and its backward against the reference (CPU).

Case i of seed s is a pure function of (s, i): shape (empty, 1 x 1, odd sizes), dtype (float32,
float64, float16 / bfloat16 with their own or float32 flows), modes, the layout of x (contiguous,
channels_last, expanded or broadcast along any dimension, transposed, a strided view into a NaN-filled
buffer), of the flow (the same kinds, and BasicVSR's permuted [N, 2, H, W]) and of the incoming
gradient, and flow values mixing normal ones with integers, half-integers, targets exactly on the
borders, tiny, huge and NaN / +-inf values. Each case compares the forward (and, for about half of
them, both gradients) with the float64 reference on the same inputs, and the fake kernel's output
layout with the real one's.

Every case runs in a worker subprocess (this file run as a script), so a crash (SIGFPE, SIGSEGV) or a
hang fails the test with the case that caused it instead of killing pytest; the worker is restarted
after a crash and the run goes on until the time budget is spent. VSR_FAST_FUZZ_SECONDS (default 30)
and VSR_FAST_FUZZ_SEED change the budget and the seed; a failure prints the command that replays it.

Comparisons use the tolerance table. Where the function itself jumps (nearest mode at half-integer
positions; bilinear gradients at integer positions, where a tap switches), two correct
implementations may take different sides of the jump, so pixels whose exact position lies within
1e-4 px of one are left out: of the nearest forward's comparison, of the bilinear forward's when x
holds inf pixels (a tap of weight 0 at an integer position may or may not be read, and 0 * inf is
NaN), and of the gradients' (their incoming gradient is 0). At a NaN/inf position the flow gradient
is 0 (docs/design.md, "flow_warp and non-finite flows"), and torch's grid_sample backward crashes on
NaN positions under border padding, so there the reference's gradients come from the equivalent
clipped finite flow.
"""

import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
SEED = int(os.environ.get("VSR_FAST_FUZZ_SEED", "20261127"))
SECONDS = float(os.environ.get("VSR_FAST_FUZZ_SECONDS", "30"))
NEAR = 1e-4  # px: positions this close to a jump of the function are not compared

DTYPES = [  # (x dtype, flow dtype, weight)
    ("float32", "float32", 8),
    ("float64", "float64", 5),
    ("float16", "float16", 2),
    ("float16", "float32", 2),
    ("bfloat16", "bfloat16", 2),
    ("bfloat16", "float32", 2),
]
X_LAYOUTS = ["contiguous", "channels_last", "expand", "broadcast", "transposed", "sliced", "batch_major"]
FLOW_LAYOUTS = ["contiguous", "sliced", "expand", "channels_first", "transposed"]
GRAD_LAYOUTS = ["contiguous", "channels_last", "expand_c", "sliced"]
SPECIALS = ["integer", "half", "edge", "tiny", "huge", "nan", "inf", "neg_inf", "neg_zero", "near_integer"]
HUGE = {"float16": 6.0e4, "bfloat16": 1e38, "float32": 3e38, "float64": 1e300}


def make_case(seed, index):
    """The parameters of case `index` (JSON-serialisable)."""
    r = random.Random(f"{seed}:{index}")
    x_dtype, flow_dtype = r.choices([d[:2] for d in DTYPES], [d[2] for d in DTYPES])[0]
    dims = [1, 1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 24, 31]
    n = r.choice([0, 1, 1, 1, 2, 3])
    c = r.choice([0, 1, 2, 3, 5, 8, 9, 16, 17])
    h, w = r.choice(dims), r.choice(dims)
    if r.random() < 0.1:
        h, w = r.randint(32, 70), r.randint(32, 70)
    specials = r.sample(SPECIALS, r.randint(0, 4))
    inf_pixels = r.random() < 0.1
    return {
        "index": index,
        "seed": seed,
        "shape": [n, c, h, w],
        "dtype": x_dtype,
        "flow_dtype": flow_dtype,
        "interpolation": r.choice(["bilinear", "bilinear", "nearest"]),
        "padding_mode": r.choice(["zeros", "zeros", "border"]),
        "align_corners": r.choice([True, True, False]),
        "x_layout": r.choice(X_LAYOUTS),
        "expand_dim": r.randrange(4),
        "flow_layout": r.choice(FLOW_LAYOUTS),
        "flow_scale": r.choice([0.3, 2.0, 5.0, 20.0]),
        "specials": specials,
        "special_fraction": r.choice([0.05, 0.3, 1.0]) if specials else 0.0,
        "inf_pixels": inf_pixels,
        "backward": not inf_pixels and r.random() < 0.5,  # inf pixels: NaN slopes, forward only
        "grad_layout": r.choice(GRAD_LAYOUTS),
    }


# ---- building the inputs ------------------------------------------------------------------------


def _dtype(name):
    return getattr(torch, name)


def _layout_x(base64, case, g):
    """x [N, C, H, W] with the case's layout, from float64 values."""
    dtype = _dtype(case["dtype"])
    n, c, h, w = case["shape"]
    kind = case["x_layout"]
    if kind == "channels_last":
        return base64.to(dtype).contiguous(memory_format=torch.channels_last)
    if kind == "expand":
        d = case["expand_dim"]
        return base64.narrow(d, 0, min(1, base64.size(d))).to(dtype).expand(n, c, h, w)
    if kind == "broadcast" and n > 0:  # lower-rank values broadcast, as torch.broadcast_to makes them
        return torch.broadcast_to(base64[0, :, :1, :].to(dtype), (n, c, h, w))
    if kind == "transposed":  # dense, W before H in memory
        return base64.transpose(2, 3).contiguous().transpose(2, 3).to(dtype)
    if kind == "batch_major":  # C outermost
        return base64.transpose(0, 1).contiguous().transpose(0, 1).to(dtype)
    if kind == "sliced":  # a view into a NaN buffer: a read outside the view shows up as NaN
        big = torch.full((n, 2 * c + 1, h + 2, 3 * w), math.nan, dtype=dtype)
        view = big[:, 1::2, 1 : 1 + h, 2::3]
        view.copy_(base64)
        return view
    return base64.to(dtype)


def _special_values(kind, size, pos, shape, g, huge):
    """Flow values of one special kind for one axis ([N, H, W]); pos: the output index on this axis."""
    if kind == "integer":
        return torch.randint(-size - 2, size + 3, shape, generator=g).double()
    if kind == "half":
        return torch.randint(-size - 2, size + 3, shape, generator=g).double() + 0.5
    if kind == "edge":  # positions exactly on a border or half a pixel from it (align_corners=True)
        targets = torch.tensor([-1.0, -0.5, 0.0, size - 1.0, size - 0.5, float(size)], dtype=torch.float64)
        return targets[torch.randint(0, 6, shape, generator=g)] - pos
    if kind == "tiny":
        return torch.randn(shape, generator=g, dtype=torch.float64) * 1e-30
    if kind == "huge":
        big = torch.full(shape, huge, dtype=torch.float64)
        return torch.where(torch.rand(shape, generator=g) < 0.5, big, -big)
    if kind == "nan":
        return torch.full(shape, math.nan, dtype=torch.float64)
    if kind == "inf":
        return torch.full(shape, math.inf, dtype=torch.float64)
    if kind == "neg_inf":
        return torch.full(shape, -math.inf, dtype=torch.float64)
    if kind == "neg_zero":
        return torch.full(shape, -0.0, dtype=torch.float64)
    # a hair beside an integer: floor() and the fraction must still come out right
    ints = torch.randint(-size - 1, size + 2, shape, generator=g).double()
    return ints + torch.where(torch.rand(shape, generator=g) < 0.5, 1e-6, -1e-6).double()


def _flow_values(case, g):
    n, _, h, w = case["shape"]
    flow = torch.randn(n, h, w, 2, generator=g, dtype=torch.float64) * case["flow_scale"]
    if not case["specials"]:
        return flow
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    huge = HUGE[case["flow_dtype"]]
    for axis, (size, pos) in enumerate(((w, xs), (h, ys))):
        choice = torch.randint(0, len(case["specials"]), (n, h, w), generator=g)
        chosen = torch.rand(n, h, w, generator=g) < case["special_fraction"]
        for k, kind in enumerate(case["specials"]):
            where = chosen & (choice == k)
            values = _special_values(kind, size, pos.expand(n, h, w), (n, h, w), g, huge)
            flow[..., axis] = torch.where(where, values, flow[..., axis])
    return flow


def _layout_flow(flow64, case):
    dtype = _dtype(case["flow_dtype"])
    n, _, h, w = case["shape"]
    kind = case["flow_layout"]
    if kind == "sliced":
        big = torch.full((n, h, w, 5), math.nan, dtype=dtype)
        view = big[..., 1:4:2]
        view.copy_(flow64)
        return view
    if kind == "expand":  # one flow row / column / image for all (what torch.zeros(...).expand gives)
        d = case["expand_dim"] % 3
        return flow64.narrow(d, 0, min(1, flow64.size(d))).to(dtype).expand(n, h, w, 2)
    if kind == "channels_first":  # BasicVSR's flows: [N, 2, H, W] permuted
        return flow64.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1).to(dtype)
    if kind == "transposed":
        return flow64.transpose(1, 2).contiguous().transpose(1, 2).to(dtype)
    return flow64.to(dtype)


def build(case):
    """(x, flow, grad_out or None, mask [N, H, W] of the pixels whose position is near a jump)."""
    g = torch.Generator().manual_seed(case["seed"] * 1_000_003 + case["index"])
    n, c, h, w = case["shape"]
    x64 = torch.rand(n, c, h, w, generator=g, dtype=torch.float64)
    if case["inf_pixels"] and x64.numel():
        idx = torch.randint(0, x64.numel(), (3,), generator=g)
        x64.view(-1)[idx] = torch.tensor([math.inf, -math.inf, math.inf], dtype=torch.float64)
    x = _layout_x(x64, case, g)
    flow = _layout_flow(_flow_values(case, g), case)
    near = near_a_jump(flow, case)
    grad = None
    if case["backward"]:
        grad64 = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
        kind = case["grad_layout"]
        if kind == "expand_c":
            grad64 = grad64[:, :1].expand(n, c, h, w) if c else grad64
        grad64 = grad64 * (~near)[:, None].double()
        grad = grad64.to(_dtype(case["dtype"]))
        if kind == "channels_last":
            grad = grad.contiguous(memory_format=torch.channels_last)
        elif kind == "sliced":
            big = torch.full((n, c, h, 2 * w), math.nan, dtype=grad.dtype)
            view = big[..., ::2]
            view.copy_(grad)
            grad = view
    return x, flow, grad, near


def near_a_jump(flow, case):
    """Pixels whose exact sampling position (float64, from the flow's own values) is within NEAR of a
    position where the output (nearest) or the gradient (bilinear) jumps, on either axis."""
    n, _, h, w = case["shape"]
    f = flow.double()
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    near = torch.zeros(n, h, w, dtype=torch.bool)
    for axis, (size, pos) in enumerate(((w, xs), (h, ys))):
        if case["align_corners"]:
            if size == 1:
                continue  # every position maps to index 0: nothing jumps
            p = pos + f[..., axis]
        else:
            p = (pos + f[..., axis]) * size / max(size - 1, 1) - 0.5
        if case["interpolation"] == "nearest":
            p = p - 0.5
        close = (p - p.round()).abs() < NEAR
        near |= close & (p > -3) & (p < size + 2)  # also false for NaN / inf
    return near


# ---- checking one case --------------------------------------------------------------------------


def check(case):
    """Raises AssertionError (with what differs) when the case fails."""
    import vsr_fast
    from vsr_fast import reference

    from _helpers import assert_close_scaled, assert_lowp_close

    x, flow, grad, near = build(case)
    modes = (case["interpolation"], case["padding_mode"], case["align_corners"])
    lowp = x.dtype in (torch.float16, torch.bfloat16)
    tolerance = {torch.float32: "float32", torch.float64: "float64"}.get(x.dtype)

    out = vsr_fast.flow_warp(x, flow, *modes)
    assert out.shape == x.shape and out.dtype == x.dtype, (out.shape, out.dtype)
    _check_fake_layout(lambda *a: vsr_fast.flow_warp(*a, *modes), (x, flow), out)
    truth = reference.flow_warp(x.double(), flow.double(), *modes)
    compared = torch.ones_like(truth, dtype=torch.bool)
    if case["interpolation"] == "nearest" or case["inf_pixels"]:
        # nearest: which side of a half-integer; bilinear with inf pixels: at an integer position
        # the neighbour of weight 0 is read or not depending on rounding, and 0 * inf is NaN
        compared = ~near[:, None].expand_as(truth)
    _assert_matches(out, truth, compared, tolerance, lowp, "output")

    if grad is None:
        return
    xr, fr = x.detach().clone().requires_grad_(), flow.detach().clone().requires_grad_()
    vsr_fast.flow_warp(xr, fr, *modes).backward(grad)
    gx, gf = torch.ops.vsr_fast._flow_warp_backward(
        grad, x, flow, *_int_modes(modes), [True, True]
    )  # the raw op too: its fake must promise the same layouts
    _check_fake_layout(
        lambda *a: torch.ops.vsr_fast._flow_warp_backward(*a, *_int_modes(modes), [True, True]),
        (grad, x, flow),
        (gx, gf),
    )
    nonfinite = ~flow.double().isfinite().all(-1)
    ref_flow = flow.double()
    if case["padding_mode"] == "border":  # grid_sample's backward crashes on NaN positions there
        far = 4.0 * (max(case["shape"][2:]) + 4)
        ref_flow = torch.where(ref_flow.isnan() | (ref_flow == -math.inf), -far, ref_flow)
        ref_flow = torch.where(ref_flow == math.inf, far, ref_flow)
    x64 = x.double().requires_grad_()
    f64 = ref_flow.clone().requires_grad_()
    reference.flow_warp(x64, f64, *modes).backward(grad.double())
    ref_gf = f64.grad
    if case["padding_mode"] == "zeros":  # a NaN/inf position reads no tap: no flow gradient
        ref_gf = torch.where(nonfinite[..., None], 0.0, ref_gf)
    for name, fast, ref in (("grad_x", xr.grad, x64.grad), ("grad_flow", fr.grad, ref_gf)):
        assert fast.shape == ref.shape, (name, fast.shape)
        assert torch.equal(fast.double().isnan(), ref.isnan()), f"{name}: NaN pattern differs"
        if fast.dtype in (torch.float16, torch.bfloat16):
            assert_lowp_close(fast, ref, ref)
        else:
            assert_close_scaled(fast, ref, {torch.float64: "float64"}.get(fast.dtype, "float32"), msg=name)
    for name, raw, autograd in (("raw grad_x", gx, xr.grad), ("raw grad_flow", gf, fr.grad)):
        assert torch.equal(raw, autograd), name


def _int_modes(modes):
    from vsr_fast.ops.flow_warp import INTERPOLATION, PADDING_MODE

    return INTERPOLATION[modes[0]], PADDING_MODE[modes[1]], modes[2]


def _assert_matches(out, truth, compared, tolerance, lowp, what):
    from _helpers import TOLERANCE, assert_lowp_close

    out64 = out.double()
    both_nan = out64.isnan() & truth.isnan()
    assert torch.equal(out64.isnan() & compared, truth.isnan() & compared), (
        f"{what}: NaN where the reference has none (or not where it has)"
    )
    assert torch.equal(out64.isinf() & compared, truth.isinf() & compared), f"{what}: inf pattern differs"
    same_inf = (out64 == truth) & truth.isinf()
    keep = compared & ~both_nan & ~same_inf
    if lowp:
        assert_lowp_close(out[keep], truth[keep], truth[keep])
    else:
        torch.testing.assert_close(out64[keep], truth[keep], atol=TOLERANCE[tolerance], rtol=0, msg=what)


def _check_fake_layout(call, args, real):
    """The fake kernel, run on fake copies of the same inputs, promises the real outputs' sizes,
    strides (along dimensions longer than 1), dtypes and devices."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = call(*(mode.from_tensor(a) for a in args))
    fakes = fake if isinstance(fake, tuple) else (fake,)
    reals = real if isinstance(real, tuple) else (real,)
    for f, r in zip(fakes, reals):
        assert f.shape == r.shape and f.dtype == r.dtype and f.device == r.device, (f.shape, r.shape)
        if r.numel() == 0:
            continue  # an empty tensor's strides address nothing
        long = [d for d in range(r.dim()) if r.shape[d] > 1]
        assert [f.stride(d) for d in long] == [r.stride(d) for d in long], (f.stride(), r.stride())


# ---- the worker (this file run as a script) and its driver ---------------------------------------


def worker(spec):
    """Runs cases, one line per event on stdout: START / PASS / FAIL."""
    sys.path.insert(0, str(TESTS))
    import vsr_fast  # noqa: F401  (loaded before the first START, so a failed import is no case's)

    if "cases" in spec:
        cases = iter(spec["cases"])
    else:
        cases = (make_case(spec["seed"], i) for i in range(spec["start"], 10**9))
    for case in cases:
        if time.time() > spec["deadline"]:
            break
        print("START", json.dumps(case), flush=True)
        try:
            check(case)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which fails the test
            print(
                "FAIL",
                json.dumps({"index": case["index"], "error": f"{type(exc).__name__}: {exc}"}),
                flush=True,
            )
        else:
            print("PASS", case["index"], flush=True)


def run_cases(seconds, seed=SEED, cases=None):
    """Runs the seed's cases from index 0 (or the given cases) in worker subprocesses until done or
    `seconds` have passed. Returns (cases run, failures, crashes): a crash or a hang is reported with
    the case that was running, and the next worker starts after it."""
    import vsr_fast

    env = dict(os.environ)
    # the worker imports the very vsr_fast this process imported (installed, or built in place)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(vsr_fast.__file__).parents[1]), env.get("PYTHONPATH", "")])
    deadline = time.time() + seconds
    done, failures, crashes, start = 0, [], [], 0
    pending = list(cases) if cases is not None else None
    while time.time() < deadline and (pending is None or pending):
        spec = {"seed": seed, "start": start, "deadline": deadline}
        if pending is not None:
            spec["cases"] = pending
        try:
            proc = subprocess.run(
                [sys.executable, __file__],
                input=json.dumps(spec),  # on stdin: a list of cases can outgrow a command line
                env=env,
                capture_output=True,
                text=True,
                timeout=deadline - time.time() + 60.0,
            )
            stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            stderr, rc = "", None
        running = None
        for line in stdout.splitlines():
            event, _, rest = line.partition(" ")
            if event == "START":
                running = json.loads(rest)
            elif event in ("PASS", "FAIL"):
                done, running = done + 1, None
                if event == "FAIL":
                    failures.append(json.loads(rest))
        if rc == 0:
            break  # every case run, or the time is up
        if running is None:
            raise AssertionError(f"the fuzz worker failed outside any case (status {rc}):\n{stderr[-3000:]}")
        done += 1
        how = "hang (killed at the time limit)" if rc is None else f"exit status {rc} (negative: the signal)"
        crashes.append({"case": running, "how": how, "stderr": stderr[-2000:]})
        if rc is None:
            break
        if pending is not None:
            pending = pending[[c["index"] for c in pending].index(running["index"]) + 1 :]
        else:
            start = running["index"] + 1
    return done, failures, crashes


def _report(done, failures, crashes, seed):
    lines = [f"{done} cases, {len(failures)} failed, {len(crashes)} crashed or hung (seed {seed})"]
    for c in crashes[:5]:
        lines.append(f"CRASH {c['how']}: {json.dumps(c['case'])}\n{c['stderr']}")
    for f in failures[:10]:
        lines.append(f"FAIL case {f['index']}: {f['error'][:1500]}")
    index = (
        (crashes[0]["case"] or {}).get("index") if crashes else (failures[0]["index"] if failures else None)
    )
    if index is not None:
        lines.append(
            f"replay: echo '{json.dumps({'cases': [make_case(seed, index)], 'deadline': 1e18})}' | "
            f"python {__file__}"
        )
    return "\n".join(lines)


def test_random_cases_match_the_reference_and_never_crash():
    done, failures, crashes = run_cases(SECONDS)
    report = _report(done, failures, crashes, SEED)
    print(report)
    assert not failures and not crashes, report
    assert done >= 100, f"only {done} cases ran in {SECONDS} s: " + report


if __name__ == "__main__":
    worker(json.loads(sys.stdin.read()))
