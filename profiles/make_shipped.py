"""Writes the shipped hardware and model profiles (run: `python -m profiles.make_shipped`).

Every number names its source: the H100 profile is fitted to our own microbenchmark
(`reference/h100-microbench-2026-11-26.json`); the other GPUs use vendor datasheet peaks scaled
by the efficiency shape measured on the H100 (marked as such); `kvpr-paper` holds the constants of
the KVPR paper so its results can be reproduced. Model shapes are those of the published
Hugging Face configs.
"""

from __future__ import annotations

import json
from pathlib import Path

from advisor.documents import (
    GemmCurve, HardwareProfile, ModelSpec, Provenance, RatePoint, write_document,
)
from advisor.fitting import fit_copy_model

HERE = Path(__file__).parent
MIB = 1 << 20
GB = 1e9
REFERENCE = "reference/h100-microbench-2026-11-26.json"


def h100() -> HardwareProfile:
    ref = json.loads((HERE / REFERENCE).read_text())
    pcie = ref["pcie_GBps_by_MiB"]
    points = {
        d: [(int(mib) * MIB, int(mib) * MIB / (row[f"{d}_pinned_GBps"] * GB)) for mib, row in pcie.items()]
        for d in ("h2d", "d2h")
    }
    curves: dict[int, list[RatePoint]] = {}
    for key, tflops in ref["gemm_fp16_TFLOPs_for_M_x_h_times_h_x_2h"].items():
        h, m = key[1:].split("_M")
        curves.setdefault(int(h), []).append(RatePoint(m=int(m), flops=tflops * 1e12))
    return HardwareProfile(
        name="h100-pcie5",
        description="NVIDIA H100 80GB HBM3, PCIe gen 5 x16 (our measurement, 2026-11-26)",
        device_kind="cuda",
        lanes_overlap=True,
        gpu_memory_bytes=int(78 * 1024**3),
        host_memory_bytes=int(125 * GB),
        h2d=fit_copy_model(points["h2d"]),
        d2h=fit_copy_model(points["d2h"]),
        bidirectional_total_Bps=ref["pcie_bidirectional_total_GBps_512MiB_each_way"] * GB,
        pageable_h2d_Bps=pcie["64"]["h2d_pageable_GBps"] * GB,
        gemm=[GemmCurve(n=2 * h, k=h, points=pts) for h, pts in sorted(curves.items())],
        attention_Bps=2.0e12,
        memory_bound_Bps=2.4e12,
        launch_overhead_s=5e-6,
        provenance=Provenance(
            source=REFERENCE,
            date="2026-11-26",
            method=ref["what"],
            sources={
                "h2d, d2h, bidirectional_total_Bps, pageable_h2d_Bps, gemm": REFERENCE,
                "gpu_memory_bytes": "usable memory of the H100 machine (about 78 GiB)",
                "host_memory_bytes": "host memory of the H100 machine (125 GB)",
                "attention_Bps, memory_bound_Bps": "estimate: 60-70% of the 3.35 TB/s HBM3 datasheet "
                "figure, until `advisor profile` measures it",
                "launch_overhead_s": "estimate: typical PyTorch eager kernel launch",
            },
        ),
    )


def scaled(name: str, description: str, *, pcie_GBps: float, latency_s: float, peak_tflops: float,
           hbm_GBps: float, gpu_gib: float, host_gb: float, sources: dict[str, str]) -> HardwareProfile:
    """A profile from datasheet peaks, with the H100's measured efficiency over M applied."""
    ref = h100()
    h100_peak = 989.4e12  # H100 SXM dense fp16 tensor datasheet; our curve tops at ~0.75 of it
    curves = [
        GemmCurve(n=c.n, k=c.k, points=[RatePoint(m=p.m, flops=p.flops / h100_peak * peak_tflops * 1e12)
                                        for p in c.points])
        for c in ref.gemm
    ]
    bw = pcie_GBps * GB
    copy = {"latency_s": latency_s, "bandwidth_Bps": bw, "points": []}
    return HardwareProfile(
        name=name,
        description=description,
        device_kind="cuda",
        lanes_overlap=True,
        gpu_memory_bytes=int(gpu_gib * 1024**3),
        host_memory_bytes=int(host_gb * GB),
        h2d=copy,
        d2h=copy,
        bidirectional_total_Bps=1.64 * bw,
        pageable_h2d_Bps=0.2 * bw,
        gemm=curves,
        attention_Bps=0.6 * hbm_GBps * GB,
        memory_bound_Bps=0.7 * hbm_GBps * GB,
        launch_overhead_s=5e-6,
        provenance=Provenance(
            source="vendor datasheets; efficiency shape from " + REFERENCE,
            date="2026-11-26",
            method="not measured: datasheet peaks scaled by the H100's measured GEMM efficiency over M; "
            "PCIe at ~80% of the link's nominal rate; run `advisor profile` for real figures",
            sources=sources,
        ),
    )


def kvpr_paper() -> HardwareProfile:
    flat = [RatePoint(m=1, flops=312e12), RatePoint(m=1 << 20, flops=312e12)]
    copy = {"latency_s": 0.0, "bandwidth_Bps": 32 * GB, "points": []}
    return HardwareProfile(
        name="kvpr-paper",
        description="The KVPR paper's constants: A100 40GB, B = 32 GB/s, F = 312 TFLOP/s, flat curves",
        device_kind="cuda",
        lanes_overlap=True,
        gpu_memory_bytes=int(40 * 1024**3),
        host_memory_bytes=int(256 * GB),
        h2d=copy,
        d2h=copy,
        bidirectional_total_Bps=None,
        gemm=[GemmCurve(n=2 * h, k=h, points=flat) for h in (4096, 5120, 7168)],
        attention_Bps=1.555e12,
        memory_bound_Bps=1.555e12,
        launch_overhead_s=0.0,
        gpu_reserved_bytes=0,
        provenance=Provenance(
            source="arXiv 2411.17089 (KVPR), its released code's constants",
            date="2024",
            method="constants, not measurements",
            sources={"h2d, d2h": "paper: PCIe 4.0 x16, 32 GB/s", "gemm": "paper: A100 312 TFLOP/s fp16",
                     "attention_Bps": "A100 40GB datasheet HBM2 1555 GB/s"},
        ),
    )


def cpu_generic() -> HardwareProfile:
    copy = {"latency_s": 2e-6, "bandwidth_Bps": 5 * GB, "points": []}
    flat = [RatePoint(m=1, flops=2e9), RatePoint(m=64, flops=20e9), RatePoint(m=4096, flops=40e9)]
    return HardwareProfile(
        name="cpu-generic",
        description="A small CPU machine running the CPU mode (tests, machines without a GPU)",
        device_kind="cpu",
        lanes_overlap=False,
        gpu_memory_bytes=int(8 * GB),
        host_memory_bytes=int(16 * GB),
        h2d=copy,
        d2h=copy,
        gemm=[GemmCurve(n=128, k=64, points=flat)],
        attention_Bps=5 * GB,
        memory_bound_Bps=5 * GB,
        launch_overhead_s=10e-6,
        gpu_reserved_bytes=0,
        provenance=Provenance(source="rough figures for a 2-core VM", date="2026-11-26",
                              method="estimate; `advisor profile --device cpu` measures the real one"),
    )


def hardware_profiles() -> list[HardwareProfile]:
    pcie4 = "PCIe 4.0 x16: 31.5 GB/s nominal, ~25 GB/s pinned in practice"
    return [
        h100(),
        scaled("a100-40gb-pcie4", "NVIDIA A100 40GB, PCIe 4.0 x16 (datasheet figures)",
               pcie_GBps=25, latency_s=10e-6, peak_tflops=312, hbm_GBps=1555, gpu_gib=39.5, host_gb=256,
               sources={"peak": "A100 datasheet: 312 TFLOP/s fp16 dense", "hbm": "1555 GB/s", "pcie": pcie4}),
        scaled("a100-80gb-pcie4", "NVIDIA A100 80GB PCIe, PCIe 4.0 x16 (datasheet figures)",
               pcie_GBps=25, latency_s=10e-6, peak_tflops=312, hbm_GBps=1935, gpu_gib=79.5, host_gb=512,
               sources={"peak": "A100 datasheet: 312 TFLOP/s fp16 dense", "hbm": "1935 GB/s HBM2e", "pcie": pcie4,
                        "memory": "80 GiB less 0.5 for the driver",
                        "host": "assumed: a 512 GB server"}),
        scaled("l40s-pcie4", "NVIDIA L40S 48GB, PCIe 4.0 x16 (datasheet figures)",
               pcie_GBps=25, latency_s=10e-6, peak_tflops=362, hbm_GBps=864, gpu_gib=44.5, host_gb=256,
               sources={"peak": "L40S datasheet: 362 TFLOP/s fp16 tensor dense (733 with sparsity)",
                        "hbm": "864 GB/s GDDR6", "pcie": pcie4,
                        "memory": "about 45 GiB as the driver reports it, less 0.5", "host": "assumed: a 256 GB server"}),
        scaled("rtx-a6000-pcie4", "NVIDIA RTX A6000 48GB, PCIe 4.0 x16 (datasheet figures)",
               pcie_GBps=25, latency_s=10e-6, peak_tflops=155, hbm_GBps=768, gpu_gib=47.5, host_gb=128,
               sources={"peak": "RTX A6000 datasheet: 309.7 TFLOP/s tensor with sparsity, 155 dense",
                        "hbm": "768 GB/s GDDR6", "pcie": pcie4,
                        "memory": "48 GiB less 0.5 for the driver", "host": "assumed: a 128 GB workstation"}),
        scaled("rtx4090-pcie4", "NVIDIA GeForce RTX 4090 24GB, PCIe 4.0 x16 (datasheet figures)",
               pcie_GBps=25, latency_s=10e-6, peak_tflops=165, hbm_GBps=1008, gpu_gib=23.6, host_gb=64,
               sources={"peak": "Ada whitepaper: 165 TFLOP/s fp16 with fp32 accumulate, dense",
                        "hbm": "1008 GB/s GDDR6X", "pcie": pcie4}),
        scaled("rtx3090-pcie4", "NVIDIA GeForce RTX 3090 24GB, PCIe 4.0 x16 (datasheet figures)",
               pcie_GBps=24, latency_s=10e-6, peak_tflops=71, hbm_GBps=936, gpu_gib=23.6, host_gb=64,
               sources={"peak": "Ampere GA102 whitepaper: 71 TFLOP/s fp16 with fp32 accumulate, dense",
                        "hbm": "936 GB/s GDDR6X", "pcie": pcie4}),
        scaled("l4-pcie4", "NVIDIA L4 24GB, PCIe 4.0 x16 (datasheet figures)",
               pcie_GBps=25, latency_s=10e-6, peak_tflops=121, hbm_GBps=300, gpu_gib=22.5, host_gb=128,
               sources={"peak": "L4 datasheet: 242 TFLOP/s fp16 with sparsity, 121 dense",
                        "hbm": "300 GB/s GDDR6", "pcie": pcie4}),
        scaled("t4-pcie3", "NVIDIA T4 16GB, PCIe 3.0 x16 (datasheet figures)",
               pcie_GBps=12, latency_s=10e-6, peak_tflops=65, hbm_GBps=320, gpu_gib=15.0, host_gb=64,
               sources={"peak": "T4 datasheet: 65 TFLOP/s fp16 mixed precision",
                        "hbm": "320 GB/s GDDR6", "pcie": "PCIe 3.0 x16: 15.75 GB/s nominal, ~12 GB/s pinned"}),
        kvpr_paper(),
        cpu_generic(),
    ]


def opt(name: str, layers: int, hidden: int, heads: int, **kw) -> ModelSpec:
    return ModelSpec(
        name=name, family="opt", num_layers=layers, hidden=hidden, num_heads=heads, num_kv_heads=heads,
        head_dim=hidden // heads, ffn_hidden=4 * hidden, vocab_size=kw.pop("vocab", 50272),
        max_positions=kw.pop("max_positions", 2048), norm="layernorm", activation="relu",
        position="learned", bias=True, tie_embeddings=True, dtype=kw.pop("dtype", "fp16"),
        source=kw.pop("source", f"facebook/{name} config.json"), **kw,
    )


def llama(name: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int,
          max_positions: int, rope_theta: float, source: str, **kw) -> ModelSpec:
    return ModelSpec(
        name=name, family="llama", num_layers=layers, hidden=hidden, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=hidden // heads, ffn_hidden=ffn, vocab_size=vocab,
        max_positions=max_positions, norm="rmsnorm", activation="swiglu", position="rotary",
        bias=False, rope_theta=rope_theta, norm_eps=kw.pop("norm_eps", 1e-5),
        tie_embeddings=kw.pop("tie_embeddings", False), dtype=kw.pop("dtype", "fp16"), source=source, **kw,
    )


def model_specs() -> list[ModelSpec]:
    return [
        opt("opt-125m", 12, 768, 12),
        opt("opt-350m", 24, 1024, 16),
        opt("opt-1.3b", 24, 2048, 32),
        opt("opt-2.7b", 32, 2560, 32),
        opt("opt-6.7b", 32, 4096, 32),
        opt("opt-6.7b-8k", 32, 4096, 32, max_positions=8192,
            source="OPT-6.7B shapes with 8192 learned positions: for shape studies and benchmarks of long "
                   "contexts; no published checkpoint has them"),
        opt("opt-13b", 40, 5120, 40),
        opt("opt-30b", 48, 7168, 56),
        opt("opt-66b", 64, 9216, 72),
        opt("opt-175b", 96, 12288, 96, source="OPT paper (arXiv 2205.01068), table 1"),
        llama("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096, 10000.0, "meta-llama/Llama-2-7b-hf config.json"),
        llama("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096, 10000.0, "meta-llama/Llama-2-13b-hf config.json"),
        llama("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096, 10000.0, "meta-llama/Llama-2-70b-hf config.json"),
        llama("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, 500000.0, "meta-llama/Meta-Llama-3-8B config.json"),
        llama("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192, 500000.0, "meta-llama/Meta-Llama-3-70B config.json"),
        llama("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768, 10000.0, "mistralai/Mistral-7B-v0.1 config.json"),
        opt("tiny-opt", 2, 64, 4, vocab=1000, max_positions=256, dtype="fp32", source="test model"),
        llama("tiny-llama", 2, 64, 4, 4, 176, 1000, 256, 10000.0, "test model", dtype="fp32"),
        llama("tiny-llama-gqa", 2, 64, 4, 2, 176, 1000, 256, 10000.0, "test model (GQA, 2 query heads per KV head)",
              dtype="fp32"),
    ]


def main() -> None:
    for profile in hardware_profiles():
        write_document(HERE / "hardware" / f"{profile.name}.json", profile)
    for spec in model_specs():
        write_document(HERE / "models" / f"{spec.name}.json", spec)
    print(f"wrote {len(hardware_profiles())} hardware and {len(model_specs())} model profiles")


if __name__ == "__main__":
    main()
