"""TensorRT plans: naming, manifest and mismatch logic everywhere; build and run where a GPU and
TensorRT exist. Also the mixed-precision graphs the plans are built from."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from engines.backends import BackendError, open_backend
from engines.gpu_probe import probe_gpu
from engines.tensorrt_build import uses_strong_typing
from engines.tensorrt_plans import (
    EngineTarget,
    PlanMismatch,
    PlanRecord,
    PlansMissing,
    plan_name,
    read_plan_manifest,
    select_plans,
    source_graphs,
    write_plan_manifest,
)
from engines.bundle import sha256_file

ROOT = Path(__file__).resolve().parents[1]
TARGET = EngineTarget("10.3.0", (8, 7), "fp16")


def _fake_plans(bundle, directory, target=TARGET, **overrides):
    """Plan files with a valid manifest for `target`, as edge-engines build would leave them."""
    directory.mkdir(parents=True, exist_ok=True)
    records = {}
    for graph, onnx_name in source_graphs(target.precision).items():
        name = plan_name(graph, target)
        (directory / name).write_bytes(f"plan bytes of {graph}".encode())
        record = PlanRecord(
            graph=graph, plan=name, plan_sha256=sha256_file(directory / name), onnx=onnx_name,
            onnx_sha256=bundle.manifest.files[onnx_name], tensorrt_version=target.tensorrt_version,
            compute_capability=target.compute_capability, precision=target.precision, typing="strong",
            max_batch=8, gpu="Orin", built="2026-11-26T00:00:00+00:00",
        )
        records[name] = dataclasses.replace(record, **overrides)
    write_plan_manifest(directory, records)
    return records


def test_plan_names_carry_tensorrt_version_gpu_and_precision():
    assert plan_name("encoder", TARGET) == "encoder-trt10.3.0-sm87-fp16.plan"
    assert plan_name("flows", EngineTarget("8.6.2", (7, 2), "fp32")) == "flows-trt8.6.2-sm72-fp32.plan"
    assert source_graphs("fp16") == {"encoder": "encoder_fp16.onnx", "flows": "flows_fp16.onnx"}


@pytest.mark.parametrize("version, strong", [("8.6.2", False), ("8.6.1.6", False), ("10.0.1", True), ("10.3.0", True), ("11.0.0", True)])
def test_strong_typing_is_chosen_by_version(version, strong):
    assert uses_strong_typing(version) is strong


def test_matching_plans_are_selected(small_bundle, tmp_path):
    bundle, _ = small_bundle
    _fake_plans(bundle, tmp_path / "engines")
    plans = select_plans(bundle, TARGET, tmp_path / "engines")
    assert plans == {g: tmp_path / "engines" / plan_name(g, TARGET) for g in ("encoder", "flows")}


def test_plans_for_another_tensorrt_or_gpu_are_not_used(small_bundle, tmp_path):
    bundle, _ = small_bundle
    _fake_plans(bundle, tmp_path / "engines", EngineTarget("8.6.2", (8, 7), "fp16"))
    with pytest.raises(PlansMissing, match=r"TensorRT 10.3.0 on sm_87.*plans here are for: TensorRT 8.6.2 on sm_87"):
        select_plans(bundle, TARGET, tmp_path / "engines")
    with pytest.raises(PlansMissing, match="sm_86"):
        select_plans(bundle, EngineTarget("8.6.2", (8, 6), "fp16"), tmp_path / "engines")


def test_plan_from_another_onnx_is_refused_with_rebuild_command(small_bundle, tmp_path):
    bundle, _ = small_bundle
    _fake_plans(bundle, tmp_path / "engines", onnx_sha256="0" * 64)
    with pytest.raises(PlanMismatch, match=r"different encoder_fp16.onnx.*edge-engines build"):
        select_plans(bundle, TARGET, tmp_path / "engines")


def test_renamed_or_modified_plan_is_refused(small_bundle, tmp_path):
    bundle, _ = small_bundle
    _fake_plans(bundle, tmp_path / "a", tensorrt_version="8.6.2")  # file named for 10.3.0, built by 8.6.2
    with pytest.raises(PlanMismatch, match="built for TensorRT 8.6.2"):
        select_plans(bundle, TARGET, tmp_path / "a")
    _fake_plans(bundle, tmp_path / "b")
    (tmp_path / "b" / plan_name("flows", TARGET)).write_bytes(b"truncated")
    with pytest.raises(PlanMismatch, match="checksum mismatch"):
        select_plans(bundle, TARGET, tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text("{not json")
    with pytest.raises(PlanMismatch, match="unreadable plan manifest"):
        select_plans(bundle, TARGET, tmp_path / "b")


def test_manifest_records_round_trip(small_bundle, tmp_path):
    bundle, _ = small_bundle
    records = _fake_plans(bundle, tmp_path)
    assert read_plan_manifest(tmp_path) == records


def test_check_finds_plans_the_daemon_built_under_its_state_dir(small_bundle, tmp_path):
    """A read-only bundle: the daemon keeps its plans under state_dir; `edge-engines check` must
    look there too, or it reports plans missing that the daemon uses."""
    bundle, _ = small_bundle
    state = tmp_path / "state"
    records = _fake_plans(bundle, state / "engines" / bundle.bundle_id)
    found = subprocess.run(
        [sys.executable, "-m", "engines.cli", "check", str(bundle.path), "--state-dir", str(state)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert str(state / "engines" / bundle.bundle_id) in found.stdout, found.stdout + found.stderr
    assert all(name in found.stdout for name in records), found.stdout
    assert "Traceback" not in found.stderr


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    return types | {i.name: i.data_type for i in inferred.graph.initializer}


def test_half_graphs_reduce_in_float32(small_bundle):
    """The mixed-precision graphs: half features between encoder and flows, float32
    log-likelihoods, part distance and patch distances out, every ReduceSum of the flows fed
    float32, the couplings' matmuls half, and the part appearance's and the nearest patch's one
    matmul each float32."""
    bundle, _ = small_bundle
    encoder = onnx.load(str(bundle.file("encoder_fp16.onnx")))
    flows = onnx.load(str(bundle.file("flows_fp16.onnx")))
    half, single, uint8 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8
    assert [i.type.tensor_type.elem_type for i in encoder.graph.input] == [uint8]
    assert {o.type.tensor_type.elem_type for o in encoder.graph.output} == {half}
    assert {o.type.tensor_type.elem_type for o in flows.graph.output} == {single}
    assert sum(n.op_type == "Conv" for n in encoder.graph.node) > 20
    types = _value_types(flows)
    reductions = [n for n in flows.graph.node if n.op_type == "ReduceSum"]
    assert reductions, "the flows graph has no ReduceSum: the log-likelihood reduction moved"
    assert all(types[n.input[0]] == single for n in reductions), "a reduction runs in half precision"
    matmuls = [n for n in flows.graph.node if n.op_type == "MatMul"]
    single_matmuls = [n for n in matmuls if types[n.input[0]] == single]
    distances = ["part_distance", "patch_distance"] if bundle.manifest.scoring.nearest_patch is not None else ["part_distance"]
    assert [o.name for o in flows.graph.output][-len(distances) :] == distances
    assert len(single_matmuls) == len(distances), "a coupling matmul runs in float32, or the part or patch distance's does not"
    couplings = bundle.manifest.flow.coupling_blocks * len(bundle.manifest.encoder.tap_channels)
    assert len(matmuls) - len(distances) == 2 * couplings, "every coupling's two matmuls run in half precision"


def test_torch_half_path_matches_float32(small_bundle):
    """The arithmetic of the FP16 engines, run by torch on the CPU, against float32."""
    bundle, _ = small_bundle
    from calibration.datasets import open_category
    from engines.backends.torch_backend import TorchBackend
    from engines.preprocess import to_model_input
    from tests.conftest import METAL_PLATE, require
    import cv2

    category = open_category(require(METAL_PLATE))
    items = [i for i in category.test if i.defect_type != "good"][:2] + [i for i in category.test if i.defect_type == "good"][:2]
    images = np.stack([to_model_input(cv2.imread(str(i.path)), tuple(bundle.manifest.input_size), bundle.manifest.colour) for i in items])
    single = TorchBackend(bundle, device="cpu").infer(images)
    half = TorchBackend(bundle, device="cpu", precision="fp16").infer(images)
    assert half.part_distances is not None, "the half graph lost the part appearance distance"
    for a, b in zip(_every_output(single), _every_output(half)):
        assert np.isfinite(b).all()
        assert np.abs(a - b).max() < 0.05 * (np.abs(a).max() + 1), "half precision drifted from float32"


def test_torch_backend_asked_for_cuda_without_one_says_so(small_bundle):
    import torch

    from engines.backends.torch_backend import TorchBackend

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is not observable here")
    with pytest.raises(BackendError, match="no usable CUDA device; use device 'cpu'"):
        TorchBackend(small_bundle[0], device="cuda")


def _cuda_here() -> str | None:
    import torch

    return None if torch.cuda.is_available() else f"no CUDA device for torch {torch.__version__}"


@pytest.mark.skipif(_cuda_here() is not None, reason=f"the CUDA path needs an NVIDIA GPU: {_cuda_here()}")
def test_torch_cuda_graphs_match_eager_and_the_cpu(small_bundle):
    """The replayed graphs compute what eager CUDA does, whatever the batch; FP16 on the GPU
    stays near CPU float32 (bench/gpu.py measures it on every test image)."""
    from engines.backends.torch_backend import TorchBackend

    bundle, _ = small_bundle
    size = tuple(bundle.manifest.input_size)
    images = np.random.default_rng(0).integers(0, 256, (4, *size, 3), dtype=np.uint8)
    cpu = TorchBackend(bundle, device="cpu").infer(images)
    eager = TorchBackend(bundle, device="cuda", cuda_graphs=False).infer(images)
    graphs = TorchBackend(bundle, device="cuda", cuda_graphs=True)
    whole, first = graphs.infer(images), graphs.infer(images[:1])
    assert sorted(graphs.graphs) == [1, 4]
    for a, b, c, d in zip(_every_output(cpu), _every_output(eager), _every_output(whole), _every_output(first)):
        assert np.isfinite(c).all()
        assert np.abs(b - c).max() < 1e-3 * (np.abs(b).max() + 1), "the replayed graph differs from eager CUDA"
        assert np.abs(c[:1] - d).max() < 1e-2 * (np.abs(c).max() + 1), "a frame's result depends on its batch"
        assert np.abs(a - c).max() < 0.05 * (np.abs(a).max() + 1), "CUDA FP16 drifted from CPU float32"


def _every_output(output) -> list[np.ndarray]:
    return [*output.log_likelihoods, *([output.part_distances] if output.part_distances is not None else [])]


def test_auto_backend_without_gpu_is_onnxruntime_and_tensorrt_says_why(small_bundle):
    bundle, _ = small_bundle
    gpu = probe_gpu()
    if gpu.available:
        pytest.skip(f"this machine has a GPU ({gpu.reason}); the no-GPU fallback is not observable here")
    assert "libcuda" in gpu.reason or "cuInit" in gpu.reason or "device" in gpu.reason
    backend = open_backend("auto", bundle, threads=1)
    assert backend.name == "onnxruntime"
    backend.close()
    with pytest.raises(BackendError, match="no usable NVIDIA GPU"):
        open_backend("tensorrt", bundle)


def _tensorrt_here() -> str | None:
    gpu = probe_gpu()
    if not gpu.available:
        return f"no GPU: {gpu.reason}"
    try:
        import tensorrt  # noqa: F401
        from cuda.bindings import runtime  # noqa: F401
    except ImportError as error:
        return f"TensorRT or cuda-python not installed ({error})"
    return None


@pytest.mark.skipif(_tensorrt_here() is not None, reason=f"TensorRT build and run need an NVIDIA GPU with TensorRT: {_tensorrt_here()}")
def test_tensorrt_build_run_and_refuse_stale(small_bundle, tmp_path):
    import shutil

    from engines.backends.tensorrt_backend import TensorRTBackend
    from engines.bundle import open_bundle

    bundle, _ = small_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    bundle = open_bundle(copy)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, *bundle.manifest.input_size, 3), dtype=np.uint8)
    reference = open_backend("onnxruntime", bundle).infer(images)
    gpu = TensorRTBackend(bundle)  # builds the plans at first use
    try:
        output = gpu.infer(images)
    finally:
        gpu.close()
    assert (output.part_distances is None) == (reference.part_distances is None)
    for a, b in zip(_every_output(reference), _every_output(output)):
        assert np.isfinite(b).all() and np.abs(a - b).max() < 0.05 * (np.abs(a).max() + 1)
    manifest = json.loads((copy / "engines" / "manifest.json").read_text())
    manifest["plans"][0]["onnx_sha256"] = "0" * 64
    (copy / "engines" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match="edge-engines build"):
        TensorRTBackend(bundle)
