"""`advisor profile`: the CPU mode measured into a valid profile; the fit of known points."""

import pytest

from advisor import timemodel
from advisor.cli import main
from advisor.documents import HardwareProfile, load_document
from advisor.profile import KiB, MiB, Measured, Settings, assemble, measure


def tiny_settings():
    return Settings(copy_sizes=[64 * KiB, 256 * KiB, MiB], gemm_hidden=[64], gemm_m=[1, 64, 1024],
                    repeats=3, warmups=1, attention=(2, 4, 256, 16), elementwise_bytes=MiB, launch_ops=200)


def test_cpu_profile_measures_every_figure_the_time_model_uses():
    hw = measure("cpu", settings=tiny_settings(), name="test-cpu", progress=False)
    assert hw.device_kind == "cpu" and hw.lanes_overlap is False and hw.name == "test-cpu"
    assert [p.bytes for p in hw.h2d.points] == [64 * KiB, 256 * KiB, MiB]
    assert [p.bytes for p in hw.d2h.points] == [64 * KiB, 256 * KiB, MiB]
    assert [(c.n, c.k) for c in hw.gemm] == [(128, 64)]
    assert [p.m for p in hw.gemm[0].points] == [1, 64, 1024]
    for figure in (hw.h2d.bandwidth_Bps, hw.d2h.bandwidth_Bps, hw.attention_Bps, hw.memory_bound_Bps):
        assert 1e8 < figure < 1e13  # bytes per second a CPU can plausibly reach
    assert 0 < hw.launch_overhead_s < 1e-3
    # the CPU mode's device memory is the host's: the two roles share the machine's memory, so that a
    # plan within both fits it (each whole, plans passed that execute then refused)
    from advisor.profile import host_memory_bytes
    assert 0 < hw.gpu_memory_bytes <= hw.host_memory_bytes
    assert hw.gpu_memory_bytes + hw.host_memory_bytes <= host_memory_bytes()
    assert "perf_counter" in hw.provenance.method and "median" in hw.provenance.method
    # the profile works with the time model: one more byte never takes less time
    assert timemodel.copy_time(hw.h2d, 2 * MiB) >= timemodel.copy_time(hw.h2d, MiB)


def test_copy_points_are_fitted_to_latency_plus_bytes_over_bandwidth():
    latency, bandwidth = 9e-6, 25e9
    sizes = [64 * KiB * 4**i for i in range(6)]
    m = Measured(h2d=[(s, latency + s / bandwidth) for s in sizes],
                 d2h=[(s, 2 * latency + s / (2 * bandwidth)) for s in sizes],
                 gemm={4096: [(128, 2e14), (2048, 7e14)]}, attention_Bps=2e12, memory_bound_Bps=2.4e12,
                 launch_overhead_s=5e-6, gpu_memory_bytes=80 << 30, gpu_reserved_bytes=1 << 30)
    hw = assemble("cuda", m, tiny_settings(), "known", 1.0, "test")
    assert hw.h2d.latency_s == pytest.approx(latency, rel=1e-6)
    assert hw.h2d.bandwidth_Bps == pytest.approx(bandwidth, rel=1e-6)
    assert hw.d2h.latency_s == pytest.approx(2 * latency, rel=1e-6)
    assert hw.d2h.bandwidth_Bps == pytest.approx(2 * bandwidth, rel=1e-6)
    assert hw.lanes_overlap and hw.device_kind == "cuda"
    assert [(c.n, c.k, [p.m for p in c.points]) for c in hw.gemm] == [(8192, 4096, [128, 2048])]


def test_cli_quick_cpu_profile_writes_a_named_profile_over_the_quick_sizes(tmp_path, capsys):
    out = tmp_path / "me.json"
    assert main(["profile", "--device", "cpu", "--quick", "-o", str(out), "--name", "me"]) == 0
    hw = load_document(HardwareProfile, out)
    assert hw.name == "me" and hw.device_kind == "cpu"
    assert hw.h2d.points[0].bytes == 64 * KiB and hw.h2d.points[-1].bytes == 64 * MiB
    printed = capsys.readouterr().out
    assert "h2d" in printed and "GEMM" in printed and "method" in printed


def test_cuda_without_a_gpu_is_one_line_exit_2(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["profile", "--device", "cuda", "-o", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no CUDA device" in err
    assert not (tmp_path / "x.json").exists()


def test_cpu_gemms_read_their_weight_from_memory_by_rotating_over_copies(monkeypatch):
    """A CPU's caches keep a small weight between repeats, so a GEMM timed on one weight ran at
    the cache's rate (28 GB/s on this VM) where a decode step's, reading from memory, ran at 7;
    the CPU profile then predicted opt-125m's step 3.8× too fast. Every timed call must use a
    weight the calls before it did not, over copies of at least `cold_bytes` in all."""
    import torch

    settings = Settings(copy_sizes=[64 * KiB], gemm_hidden=[64], gemm_m=[1, 8], repeats=3, warmups=1,
                        attention=(2, 4, 256, 16), elementwise_bytes=MiB, launch_ops=50, cold_bytes=MiB)
    assert settings_for_cpu_has_cold_gemms()
    seen: list[int] = []
    matmul = torch.matmul

    def recording(x, w, out=None):
        seen.append(w.data_ptr())
        return matmul(x, w, out=out)

    monkeypatch.setattr(torch, "matmul", recording)
    measure("cpu", settings=settings, name="cold", progress=False)
    copies = MiB // (2 * 64 * 64 * 4)
    assert len(set(seen)) == copies
    # consecutive calls never reuse a weight until every copy has been read
    assert all(len(set(seen[i:i + copies])) == min(copies, len(seen) - i) for i in range(0, len(seen), copies))


def settings_for_cpu_has_cold_gemms() -> bool:
    from advisor.profile import settings_for

    return all(settings_for("cpu", quick).cold_bytes >= 64 * MiB for quick in (True, False)) and \
        settings_for("cuda", False).cold_bytes == 0
