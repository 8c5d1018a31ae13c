"""Build TensorRT plans from a bundle's ONNX graphs, on the machine that will run them.

Precision policy: the FP16 plans are built from the bundle's mixed-precision graphs (half
convolutions, float32 input normalisation and log-likelihood reductions, explicit casts).
TensorRT >= 10 builds them strongly typed, which takes those types as they are; TensorRT 11
has no other mode. JetPack's TensorRT 8.6 has no strong typing, so there the FP16 builder flag
is set and every layer is constrained to the type the graph declares for it, which gives the
same arithmetic. The choice is made from the version number, never by trying one and
falling back.

Written against NVIDIA's documented Python API (tensorrt.Builder, OnnxParser, IBuilderConfig);
tested where TensorRT and a GPU exist (tests/test_tensorrt.py says why it skips elsewhere).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from engines.atomic_file import write_atomically
from engines.backends.base import BackendError
from engines.bundle import Bundle, sha256_file
from engines.gpu_probe import probe_gpu
from engines.tensorrt_plans import (
    GRAPHS,
    EngineTarget,
    PlanRecord,
    engines_directory,
    plan_name,
    read_plan_manifest,
    source_graphs,
    timing_cache_name,
    write_plan_manifest,
)

DEFAULT_MAX_BATCH = 8
DEFAULT_WORKSPACE_MB = 1024


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError("TensorRT is not installed: on a Jetson it comes with JetPack; on a PC install the NVIDIA 'tensorrt' wheel (pip install 'edge-inspect[gpu]')") from None
    return trt


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def uses_strong_typing(version: str) -> bool:
    """Strongly typed networks exist from TensorRT 10 on (JetPack 6.1+); 8.6 needs the FP16 flag."""
    return version_tuple(version) >= (10, 0)


def current_target(precision: str) -> tuple[EngineTarget, str]:
    """This machine's target and GPU name; raises BackendError when there is no GPU or TensorRT."""
    gpu = probe_gpu()
    if not gpu.available:
        raise BackendError(f"no usable NVIDIA GPU: {gpu.reason}")
    trt = import_tensorrt()
    return EngineTarget(trt.__version__, gpu.compute_capability, precision), gpu.name


def build_plans(
    bundle: Bundle,
    precision: str = "fp16",
    max_batch: int = DEFAULT_MAX_BATCH,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    directory: Path | None = None,
    log=print,
) -> dict[str, Path]:
    """Build the encoder and flow plans for this machine; returns graph -> plan path."""
    target, gpu_name = current_target(precision)
    trt = import_tensorrt()
    directory = directory or engines_directory(bundle)
    directory.mkdir(parents=True, exist_ok=True)
    cache_path = directory / timing_cache_name(target)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    records = read_plan_manifest(directory)
    strong = uses_strong_typing(target.tensorrt_version)
    built: dict[str, Path] = {}
    for graph in GRAPHS:
        onnx = source_graphs(precision)[graph]
        if onnx not in bundle.manifest.files:
            raise BackendError(f"{bundle.path}: no {onnx} in this bundle; re-calibrate with this version's edge-calibrate to get it")
        started = time.monotonic()
        log(f"building {graph} plan for {target.describe()} ({'strongly typed' if strong else 'FP16 flag + layer type constraints'}) from {onnx} ...")
        plan, cache_bytes = _build_one(trt, bundle.file(onnx), cache_bytes, strong, precision, max_batch, workspace_mb)
        name = plan_name(graph, target)
        write_atomically(directory / name, plan)
        records[name] = PlanRecord(
            graph=graph,
            plan=name,
            plan_sha256=sha256_file(directory / name),
            onnx=onnx,
            onnx_sha256=bundle.manifest.files[onnx],
            tensorrt_version=target.tensorrt_version,
            compute_capability=target.compute_capability,
            precision=precision,
            typing="strong" if strong else "weak",
            max_batch=max_batch,
            gpu=gpu_name,
            built=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        built[graph] = directory / name
        log(f"  {name} in {time.monotonic() - started:.0f} s")
    write_atomically(cache_path, cache_bytes)
    write_plan_manifest(directory, records)
    return built


def _build_one(trt, onnx_path: Path, cache_bytes: bytes, strong: bool, precision: str, max_batch: int, workspace_mb: int) -> tuple[bytes, bytes]:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strong:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # required before 10
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"{onnx_path}: TensorRT's ONNX parser refused it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    if not strong and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        _constrain_to_declared_types(trt, network)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        item = tuple(tensor.shape)[1:]  # the batch axis is the only dynamic one
        profile.set_shape(tensor.name, (1, *item), (1, *item), (max_batch, *item))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"{onnx_path}: TensorRT could not build a plan (see the TensorRT messages above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def _constrain_to_declared_types(trt, network) -> None:
    """Weak typing: pin each float layer to the type its output has in the mixed graph, so the
    float32 reductions stay float32 although the FP16 flag is set."""
    floats = (trt.float32, trt.float16)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            dtype = layer.get_output(j).dtype
            if dtype in floats:
                layer.precision = dtype
                layer.set_output_type(j, dtype)
