"""Fast tests of llmpress.scale: capacity planning on known curves, vLLM refusals, serve option errors,
metrics merging, the data-parallel launcher's argv handling. (Ray and DDP runs: test_scale_ray.py,
test_scale_ddp.py, both slow.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmpress.errors import ConfigError, DataError
from llmpress.scale.capacity import CapacityConfig, Curve, CurvePoint, curve_from_file, plan_capacity

KNOWN = [{"concurrency": 1, "rps": 2.0, "ttft_p99_ms": 100.0}, {"concurrency": 4, "rps": 6.0, "ttft_p99_ms": 200.0},
         {"concurrency": 8, "rps": 8.0, "ttft_p99_ms": 400.0}]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmpress.cli.main", *args], capture_output=True, text=True,
                          timeout=300)


def known_curve() -> Curve:
    return Curve([CurvePoint(**p) for p in KNOWN], "test")


def test_capacity_interpolates_where_p99_ttft_crosses_the_target() -> None:
    # 300 ms is halfway between the c=4 (200 ms) and c=8 (400 ms) points: 7 req/s, 5.6 after 20 % headroom
    plan = plan_capacity(known_curve(), CapacityConfig(qps=50, p99_ttft_ms=300, headroom=0.2, threads_per_replica=2,
                                                       cores_per_machine=8))
    assert plan.per_replica_rps == pytest.approx(7.0)
    assert plan.planned_rps_per_replica == pytest.approx(5.6)
    assert plan.operating_concurrency == pytest.approx(6.0)
    assert plan.replicas == 9 and plan.replicas_per_machine == 4 and plan.machines == 3
    assert plan.limited_by == "ttft"


def test_capacity_when_every_point_meets_the_target_uses_the_peak() -> None:
    plan = plan_capacity(known_curve(), CapacityConfig(qps=8, p99_ttft_ms=1000, headroom=0.0, cores_per_machine=2))
    assert plan.per_replica_rps == 8.0 and plan.replicas == 1 and plan.limited_by == "throughput"
    assert any("peak" in a for a in plan.assumptions)


def test_capacity_refuses_a_target_no_replica_count_meets() -> None:
    with pytest.raises(ConfigError, match="no number of replicas"):
        plan_capacity(known_curve(), CapacityConfig(qps=1, p99_ttft_ms=50))


def test_capacity_reads_serving_benchmark_results(tmp_path: Path) -> None:
    serving = {"prompt_len": 64, "output_len": 64, "threads": 2, "engine": [
        {"artifact": "other", "label": "fp32", "http": {"1": {"concurrency": 1, "requests": 4, "seconds": 1.0,
                                                               "ttft_p99_ms": 10}}},
        {"artifact": "abc123", "label": "int8", "http": {
            "1": {"concurrency": 1, "requests": 4, "seconds": 2.0, "ttft_p99_ms": 50},
            "8": {"concurrency": 8, "requests": 32, "seconds": 4.0, "ttft_p99_ms": 150}}}]}
    f = tmp_path / "serving.json"
    f.write_text(json.dumps(serving))
    c = curve_from_file(f, "abc123")
    assert [(p.concurrency, p.rps) for p in c.points] == [(1, 2.0), (8, 8.0)]
    with pytest.raises(DataError, match="no serving measurement"):
        curve_from_file(f, "missing")


def test_capacity_cli_with_a_known_curve(tmp_path: Path, tiny: Any) -> None:
    f = tmp_path / "curve.json"
    f.write_text(json.dumps(KNOWN))
    r = cli("capacity", "--artifact", "builtin:tiny-llama", "--qps", "50", "--p99-ttft-ms", "300", "--curve", str(f),
            "--threads-per-replica", "2", "--cores-per-machine", "8", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["replicas"] == 9 and d["machines"] == 3 and d["artifact"] == tiny.id
    assert any("scale linearly" in a for a in d["assumptions"])
    r = cli("plan", "capacity", "--artifact", "builtin:tiny-llama", "--qps", "50", "--p99-ttft-ms", "300", "--curve",
            str(f))
    assert r.returncode == 0 and "replica(s) on" in r.stdout and "assumptions:" in r.stdout
    bad = cli("capacity", "--artifact", "builtin:tiny-llama", "--qps", "5", "--p99-ttft-ms", "20", "--curve", str(f))
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "no number of replicas" in bad.stderr


def test_capacity_measures_a_curve_when_none_is_given(tiny: Any) -> None:
    from llmpress.scale.capacity import measure_curve

    c = measure_curve(tiny, concurrencies=(1, 2), requests_per_level=2, prompt_len=8, output_len=4, kv_cache_mb=8)
    assert [p.concurrency for p in c.points] == [1, 2]
    assert all(p.rps > 0 and p.ttft_p99_ms >= p.ttft_p50_ms for p in c.points)
    plan = plan_capacity(c, CapacityConfig(qps=1000, p99_ttft_ms=1e6))
    assert plan.replicas >= 1


def test_vllm_backend_fails_in_one_line_without_vllm_or_gpu(tiny: Any) -> None:
    r = cli("serve", "builtin:tiny-llama", "--backend", "vllm", "--port", "1")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "vLLM" in lines[0] and ("not installed" in lines[0] or "no" in lines[0])


def test_vllm_refuses_llmpress_quantized_and_adapter_artifacts(tiny: Any) -> None:
    from llmpress.artifact import Artifact, Step
    from llmpress.scale.vllm import VllmConfig, check_artifact, command

    check_artifact(tiny)  # a plain HF directory is fine
    cmd = command(VllmConfig(model="x", tensor_parallel=2, pipeline_parallel=2, port=9000), tiny)
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2" and cmd[cmd.index("--model") + 1] == str(tiny.path)
    q = Artifact(tiny.path, type(tiny.manifest)(id="q1", name="q", parent=tiny.id, loader="quantized",
                                                step=Step("quantize", {"scheme": "int4-weight-only"})))
    with pytest.raises(ConfigError, match="int4-weight-only"):
        check_artifact(q)
    a = Artifact(tiny.path, type(tiny.manifest)(id="a1", name="a", parent=tiny.id, format="adapter", loader="adapter"))
    with pytest.raises(ConfigError):
        check_artifact(a)
    with pytest.raises(ConfigError):
        VllmConfig(model="x", tensor_parallel=0)


@pytest.mark.parametrize("args,needle", [
    (["--replicas", "2", "--tensor-parallel", "2"], "--backend vllm only"),
    (["--min-replicas", "3", "--max-replicas", "1"], "min-replicas"),
    (["--backend", "tgi"], "unknown --backend"),
    (["--backend", "vllm", "--replicas", "2"], "replicas"),
])
def test_serve_scale_options_fail_in_one_line(args: list[str], needle: str, tiny: Any) -> None:
    r = cli("serve", "builtin:tiny-llama", *args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_merged_metrics_label_each_replica_and_keep_families_contiguous() -> None:
    pytest.importorskip("ray")
    from llmpress.scale.ray_serve import merge_metrics

    a = "# HELP x_total X\n# TYPE x_total counter\nx_total{path=\"/a\"} 1.0\n# HELP g G\n# TYPE g gauge\ng 2.0\n"
    b = "# HELP x_total X\n# TYPE x_total counter\nx_total{path=\"/a\"} 3.0\n# HELP g G\n# TYPE g gauge\ng 5.0\n"
    text = merge_metrics({"r1": a, "r2": b})
    lines = text.splitlines()
    assert lines.count("# TYPE x_total counter") == 1
    assert lines[:4] == ["# HELP x_total X", "# TYPE x_total counter", 'x_total{replica="r1",path="/a"} 1.0',
                         'x_total{replica="r2",path="/a"} 3.0']
    assert 'g{replica="r2"} 5.0' in lines


def test_affinity_ranking_is_stable_and_spreads_keys() -> None:
    pytest.importorskip("ray")
    from llmpress.scale.ray_serve import _rank

    class R:
        def __init__(self, uid: str) -> None:
            self.replica_id = type("Id", (), {"unique_id": uid})()

    reps = [R("a"), R("b"), R("c")]
    first = {k: _rank(k, reps)[0].replica_id.unique_id for k in (f"k{i}" for i in range(60))}
    assert first == {k: _rank(k, list(reversed(reps)))[0].replica_id.unique_id for k in first}  # order-free
    assert set(first.values()) == {"a", "b", "c"}
    # removing a replica moves only the keys that were on it
    moved = {k for k, v in first.items() if _rank(k, reps[:2])[0].replica_id.unique_id != v}
    assert all(first[k] == "c" for k in moved)


def test_launcher_strips_processes_and_splits_the_global_batch() -> None:
    from llmpress.scale.launch import per_process_batch, strip_option

    assert strip_option(["tune", "full", "m", "--processes", "2", "--json"], "--processes") == ["tune", "full", "m",
                                                                                                "--json"]
    assert strip_option(["--processes=2", "x"], "--processes") == ["x"]
    assert per_process_batch(8, 2) == 4
    with pytest.raises(ConfigError, match="does not split evenly"):
        per_process_batch(5, 2)
