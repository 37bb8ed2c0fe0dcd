"""The shapes of the GPU check: the paper's (docs/rule.md section 7) on a GPU, tiny ones in the interpreter
(where `cases=1` also keeps only the first case of the timing stages: its timings mean nothing)."""
from __future__ import annotations

# (C_in, C_out, H=W) of the Gesture VGG's 3x3 convolutions (padding 1)
VGG_CONVS = [(2, 64, 32), (64, 128, 32), (128, 256, 16), (256, 256, 16), (256, 512, 8),
             (512, 512, 8), (512, 512, 4), (512, 512, 4)]


def sizes(tiny: bool) -> dict:
    if tiny:
        return dict(
            B=3, K=40, N=35, T=5, D=3, gB=2, gT=4, gD=2, convs=[(2, 8, 8), (8, 16, 4)],
            copy_mib=4, bw_n=2 ** 12, bw_T=4, bw_D=2, gemm_big=(64, 48, 40),
            large_n=2 ** 12 + 3, large_rows=2 ** 10 + 7, large_k=33, large_n_out=5,
            grid_shape=(3, 37), seq_T=5, seq_D=2, lin=(5, 37, 33), conv=(2, 3, 5, 7),
            rec=(4, 3, 7, 33), std_shapes=[(5, 7), (4, 3, 3, 3)],
            e2e_shd=dict(T=6, delay_ls=4, batch=3), e2e_vgg=dict(T=2, delay_ls=1, batch=1), reps=1,
            warm_batches=0, cases=1)
    return dict(
        B=128, K=700, N=450, T=100, D=90, gB=16, gT=20, gD=5, convs=VGG_CONVS,
        copy_mib=1024,
        bw_n=2 ** 26,            # 256 MiB per fp32 tensor (element-wise)
        bw_T=16, bw_D=8,         # sequences at n = bw_n / 4 per step: [16, 2^24] = 1 GiB currents
        gemm_big=(8192, 4096, 4096),
        large_n=2 ** 31 + 2 ** 20 + 3,          # element-wise ops above 2^31 elements (int64 offsets)
        large_rows=2 ** 21 + 7, large_k=1030, large_n_out=8,  # x [rows, K] above 2^31 elements
        grid_shape=(37, 451), seq_T=9, seq_D=4, lin=(67, 451, 333), conv=(3, 7, 13, 11),
        rec=(9, 67, 333, 451),   # (T, B, K, N): the recurrent step's 64x64 tiles, partial ones too
        std_shapes=[(451, 333), (64, 32, 3, 3), (33, 1500)],
        e2e_shd=dict(T=100, delay_ls=90, batch=128), e2e_vgg=dict(T=20, delay_ls=5, batch=16), reps=3,
        warm_batches=1, cases=None)
