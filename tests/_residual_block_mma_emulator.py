"""Lane-level numpy emulation of the fused residual-block CUDA kernel
(csrc/cuda/residual_block_mma.cuh), for machines without a GPU; tests/test_residual_trunk.py runs it.

It replays the kernel's index maths one lane at a time: x-tile and weight loads into a byte-addressed
shared-memory image (pre-filled with NaN, so reading a byte nobody wrote shows up), the XOR swizzle,
the ldmatrix.x4 row addresses and the fragment layouts of mma.m16n8k16 as the PTX ISA defines them,
the weight ring slots, and both epilogues, then compares with a direct convolution. It checks the
kernel's indexing, not the hardware or the compiler; keep it in step with the kernel when the kernel
changes.
"""

import numpy as np

C = 64
TH, TW = 8, 16
MH, MW = TH + 2, TW + 2
IH, IW = TH + 4, TW + 4
MP = MH * MW
IP = IH * IW
TAPE = C * C
WSLOTS = 3
STAGES = 18
IN_BYTES = IP * 128
MID_BYTES = MP * 128
SMEM = IN_BYTES + MID_BYTES + WSLOTS * TAPE * 2


def swz(pixel, chunk):
    return pixel * 128 + ((chunk ^ (pixel & 7)) << 4)


def ldmatrix_x4(smem, addrs):
    # addrs[lane] -> byte address of a 16-byte row; matrix j rows come from lanes 8j..8j+7
    regs = np.zeros((32, 4, 2), np.float32)
    for j in range(4):
        rows = [smem[addrs[8 * j + r] // 2 : addrs[8 * j + r] // 2 + 8] for r in range(8)]
        for T in range(32):
            regs[T, j] = rows[T // 4][2 * (T % 4) : 2 * (T % 4) + 2]
    return regs


def mma(acc, a, b0, b1):
    # acc[lane,4], a[lane,4,2], b0/b1[lane,2]
    A = np.zeros((16, 16), np.float32)
    B = np.zeros((16, 8), np.float32)
    Cm = np.zeros((16, 8), np.float32)
    for L in range(32):
        g, t = L // 4, L % 4
        A[g, 2 * t : 2 * t + 2] = a[L, 0]
        A[g + 8, 2 * t : 2 * t + 2] = a[L, 1]
        A[g, 2 * t + 8 : 2 * t + 10] = a[L, 2]
        A[g + 8, 2 * t + 8 : 2 * t + 10] = a[L, 3]
        B[2 * t : 2 * t + 2, g] = b0[L]
        B[2 * t + 8 : 2 * t + 10, g] = b1[L]
        Cm[g, 2 * t : 2 * t + 2] = acc[L, 0:2]
        Cm[g + 8, 2 * t : 2 * t + 2] = acc[L, 2:4]
    D = A.astype(np.float64) @ B.astype(np.float64) + Cm
    for L in range(32):
        g, t = L // 4, L % 4
        acc[L, 0:2] = D[g, 2 * t : 2 * t + 2]
        acc[L, 2:4] = D[g + 8, 2 * t : 2 * t + 2]


def run_cta(x, w, b, out, H, W, tile, tiles_x, tiles_y, dt):
    tx = tile % tiles_x
    ty = (tile // tiles_x) % tiles_y
    img = tile // (tiles_x * tiles_y)
    y0, x0 = ty * TH, tx * TW
    smem = np.full(SMEM // 2, np.nan, np.float32)  # NaN: reading anything never written shows up
    in0, mid0, w0 = 0, IN_BYTES, IN_BYTES + MID_BYTES
    for i in range(IP * 8):
        pixel, chunk = i >> 3, i & 7
        gy, gx = y0 - 2 + pixel // IW, x0 - 2 + pixel % IW
        a = (in0 + swz(pixel, chunk)) // 2
        smem[a : a + 8] = x[img, gy, gx, chunk * 8 : chunk * 8 + 8] if (0 <= gy < H and 0 <= gx < W) else 0

    def issue(s):
        if s < STAGES:
            slot = w0 + (s % WSLOTS) * TAPE * 2
            for i in range(512):
                n, chunk = i >> 3, i & 7
                a = (slot + swz(n, chunk)) // 2
                smem[a : a + 8] = w[s, n, chunk * 8 : chunk * 8 + 8]

    for s in range(WSLOTS - 1):
        issue(s)
    lanes = np.arange(32)
    # conv1
    acc1 = np.zeros((8, 3, 4, 32, 4))
    for s in range(9):
        issue(s + WSLOTS - 1)
        for warp in range(8):
            mgroup, nhalf = warp & 3, warp >> 2
            a_pixel = []
            for i in range(3):
                m = np.minimum((mgroup * 3 + i) * 16 + (lanes & 15), MP - 1)
                a_pixel.append((m // MW) * IW + m % MW)
            slot = w0 + (s % WSLOTS) * TAPE * 2
            shift = (s // 3) * IW + s % 3
            b_row = nhalf * 32 + (lanes & 7) + ((lanes >> 4) << 3)
            b_half = (lanes >> 3) & 1
            a_half = lanes >> 4
            for kk in range(4):
                a = [
                    ldmatrix_x4(
                        smem, [in0 + swz(a_pixel[i][L] + shift, kk * 2 + a_half[L]) for L in range(32)]
                    )
                    for i in range(3)
                ]
                bf = [
                    ldmatrix_x4(smem, [slot + swz(b_row[L] + 16 * j, kk * 2 + b_half[L]) for L in range(32)])
                    for j in range(2)
                ]
                for i in range(3):
                    for nt in range(4):
                        mma(
                            acc1[warp, i, nt],
                            a[i],
                            bf[nt >> 1][:, (nt & 1) * 2],
                            bf[nt >> 1][:, (nt & 1) * 2 + 1],
                        )
    # the last slot (s=9's weights) was issued at s=7 — conv2 continues the ring
    for warp in range(8):
        mgroup, nhalf = warp & 3, warp >> 2
        for L in range(32):
            g, t = L >> 2, L & 3
            for i in range(3):
                for h in range(2):
                    m = (mgroup * 3 + i) * 16 + g + 8 * h
                    if m < MP:
                        gy, gx = y0 - 1 + m // MW, x0 - 1 + m % MW
                        inside = 0 <= gy < H and 0 <= gx < W
                        for nt in range(4):
                            n = nhalf * 32 + nt * 8 + 2 * t
                            v = [
                                acc1[warp, i, nt, L, 2 * h] + b[0, n],
                                acc1[warp, i, nt, L, 2 * h + 1] + b[0, n + 1],
                            ]
                            v = [(0.0 if vv < 0 else vv) if inside else 0.0 for vv in v]
                            a = (mid0 + swz(m, n >> 3) + (n & 7) * 2) // 2
                            smem[a : a + 2] = np.array(v, np.float32).astype(dt)
    acc2 = np.zeros((8, 2, 4, 32, 4))
    for s in range(9, 18):
        issue(s + WSLOTS - 1)
        for warp in range(8):
            row0, nhalf = 2 * (warp & 3), warp >> 2
            a_pixel = [(row0 + i) * MW + (lanes & 15) for i in range(2)]
            slot = w0 + (s % WSLOTS) * TAPE * 2
            tap = s - 9
            shift = (tap // 3) * MW + tap % 3
            b_row = nhalf * 32 + (lanes & 7) + ((lanes >> 4) << 3)
            b_half = (lanes >> 3) & 1
            a_half = lanes >> 4
            for kk in range(4):
                a = [
                    ldmatrix_x4(
                        smem, [mid0 + swz(a_pixel[i][L] + shift, kk * 2 + a_half[L]) for L in range(32)]
                    )
                    for i in range(2)
                ]
                bf = [
                    ldmatrix_x4(smem, [slot + swz(b_row[L] + 16 * j, kk * 2 + b_half[L]) for L in range(32)])
                    for j in range(2)
                ]
                for i in range(2):
                    for nt in range(4):
                        mma(
                            acc2[warp, i, nt],
                            a[i],
                            bf[nt >> 1][:, (nt & 1) * 2],
                            bf[nt >> 1][:, (nt & 1) * 2 + 1],
                        )
    for warp in range(8):
        row0, nhalf = 2 * (warp & 3), warp >> 2
        for L in range(32):
            g, t = L >> 2, L & 3
            for i in range(2):
                gy = y0 + row0 + i
                for h in range(2):
                    col = g + 8 * h
                    gx = x0 + col
                    if gy < H and gx < W:
                        res = (row0 + i + 2) * IW + col + 2
                        for nt in range(4):
                            n = nhalf * 32 + nt * 8 + 2 * t
                            a = (in0 + swz(res, n >> 3) + (n & 7) * 2) // 2
                            r = smem[a : a + 2]
                            out[img, gy, gx, n] = r[0] + acc2[warp, i, nt, L, 2 * h] + b[1, n]
                            out[img, gy, gx, n + 1] = r[1] + acc2[warp, i, nt, L, 2 * h + 1] + b[1, n + 1]


def emulate_block(x, w1, w2, b, dt):
    """The kernel's output for one block: x [N, H, W, 64] (values of dtype dt), w1 / w2 [64, 64, 3, 3],
    b [2, 64] (conv1, conv2 biases). Returns [N, H, W, 64] float64 values of dtype dt; an output pixel
    no CTA wrote stays NaN."""
    n, h, w, _ = x.shape
    # packed [conv][ky][kx][n][k] -> stage s = conv*9 + tap, as pack_for_fused lays the weights out
    wpk = np.stack([w1, w2]).transpose(0, 3, 4, 1, 2).reshape(18, C, C)
    tiles_x, tiles_y = (w + TW - 1) // TW, (h + TH - 1) // TH
    out = np.full((n, h, w, C), np.nan)
    for tile in range(n * tiles_x * tiles_y):
        run_cta(x, wpk, b, out, h, w, tile, tiles_x, tiles_y, dt)
    # the kernel rounds x + conv2 + b2 once, to the storage dtype
    return out.astype(dt).astype(np.float64)
