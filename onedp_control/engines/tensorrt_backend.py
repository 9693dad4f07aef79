"""The TensorRT backend: exported ONNX graphs -> serialized engines (FP16, fixed batch-1 shapes,
a workspace limit), run with pre-allocated device buffers on one CUDA stream.

FP16: TensorRT 11 removed the FP16 builder flag; precision now comes from the ONNX graph
(strongly typed networks). `to_fp16_onnx` converts the float32 graph to float16 with float32
inputs and outputs, keeping in float32 what loses accuracy in half precision (the diffusion-step
sinusoid, normalisation, softmax); the same converted graph serves TensorRT 10 and 11, and runs
in ONNX Runtime on the CPU, so its accuracy is checked without a GPU.

`<engine>.json` stores the TensorRT version and GPU the engine was built with: an engine only
runs on the TensorRT version and GPU model that built it, and a mismatch is refused with a
message instead of failing inside `deserialize_cuda_engine`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx

from onedp_control.engines.base import (
    Engine,
    EngineError,
    draw_renoise,
    manifest_path,
    read_manifest,
)
from onedp_control.engines.export import graph_path
from onedp_control.files import write_json_atomic

DEFAULT_WORKSPACE_MB = 1024
FP16_KEEP_FLOAT32_OPS = ("InstanceNormalization", "Softmax", "Sin", "Cos")
SINUSOID_NODES = ("step_encoder.0", "second_time/mlp/mlp.0")


def keeps_float32(node: onnx.NodeProto) -> bool:
    """The time sinusoids (the U-Net's, and the second time's of cp and ofp) see angles up to
    ~100 rad: float16 would lose the phase. The graph's own casts to float32 (of the time
    levels cp computes in the graph) stay too: the converter would retype their outputs to
    float16 and leave them saying float32, which the checker refuses."""
    if any(sinusoid in node.name for sinusoid in SINUSOID_NODES):
        return True
    if node.op_type != "Cast":
        return False
    to = next(attribute.i for attribute in node.attribute if attribute.name == "to")
    return to == onnx.TensorProto.FLOAT


def to_fp16_onnx(source: Path, destination: Path) -> None:
    from onnxconverter_common import float16

    model = onnx.load(str(source))
    keep = [node.name for node in model.graph.node if keeps_float32(node)]
    with warnings.catch_warnings():
        # It warns for every weight below float16's range that it flushes: expected, and many.
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            node_block_list=keep,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FLOAT32_OPS),
        )
    onnx.save(half, str(destination))
    onnx.checker.check_model(str(destination), full_check=True)


def check_static_inputs(path: Path, manifest_graph: dict) -> None:
    """Every input has the fixed batch-1 shape and float32 dtype the engine is built for."""
    model = onnx.load(str(path), load_external_data=False)
    declared = {item["name"]: item["shape"] for item in manifest_graph["inputs"]}
    for graph_input in model.graph.input:
        tensor = graph_input.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim]
        if graph_input.name not in declared:
            raise EngineError(f"{path}: input '{graph_input.name}' is not in the manifest")
        if shape != declared[graph_input.name] or shape[0] != 1:
            raise EngineError(
                f"{path}: input '{graph_input.name}' has shape {shape}, expected fixed batch-1 "
                f"shape {declared[graph_input.name]}"
            )
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            raise EngineError(f"{path}: input '{graph_input.name}' is not float32")


def engine_graphs(onnx_path: Path) -> dict[str, Path]:
    """The ONNX graphs an engine is built from: the split graphs the run-time uses (encoder and
    head, or encoder and denoiser) and, for one-step models, the whole pipeline."""
    manifest, _ = read_manifest(onnx_path)
    graphs = {}
    for role, entry in manifest["graphs"].items():
        path = graph_path(onnx_path, role)
        check_static_inputs(path, entry)
        graphs[role] = path
    return graphs


def prepare_build(onnx_path: Path, work_dir: Path, fp16: bool) -> dict[str, Path]:
    """Everything before the builder call: checked graphs, converted to FP16 if asked."""
    graphs = engine_graphs(onnx_path)
    if not fp16:
        return graphs
    work_dir.mkdir(parents=True, exist_ok=True)
    converted = {}
    for role, path in graphs.items():
        converted[role] = work_dir / path.name.replace(".onnx", ".fp16.onnx")
        to_fp16_onnx(path, converted[role])
    return converted


def _tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise EngineError(
            "TensorRT is not installed (on a machine with an NVIDIA GPU: ./setup.sh --gpu)"
        ) from None
    return tensorrt


def _cudart():
    try:
        from cuda.bindings import runtime
    except ImportError:
        raise EngineError(
            "cuda-python is not installed (on a machine with an NVIDIA GPU: ./setup.sh --gpu)"
        ) from None
    return runtime


def _check(result, what: str):
    """cuda-python calls return (error, *values)."""
    cudart = _cudart()
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        raise EngineError(f"CUDA: {what} failed ({error})")
    return values[0] if len(values) == 1 else values


def gpu_name() -> str:
    cudart = _cudart()
    count = _check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if count < 1:
        raise EngineError("TensorRT needs an NVIDIA GPU; none is visible")
    properties = _check(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    return properties.name.decode().rstrip("\x00")


def engine_file(engine_path: Path, role: str) -> Path:
    return graph_path(engine_path.with_suffix(".onnx"), role).with_suffix(".engine")


def build_engine(
    onnx_path: Path, engine_path: Path, fp16: bool = True, workspace_mb: int = DEFAULT_WORKSPACE_MB
) -> dict:
    """Builds one engine per graph of an export; returns the metadata written beside them."""
    if engine_path.suffix != ".engine":
        raise EngineError(f"--engine: {engine_path} must end in .engine")
    trt = _tensorrt()
    device = gpu_name()
    manifest, _ = read_manifest(onnx_path)
    graphs = prepare_build(onnx_path, engine_path.parent / (engine_path.stem + ".build"), fp16)
    logger = trt.Logger(trt.Logger.WARNING)
    files = {}
    for role, path in graphs.items():
        builder = trt.Builder(logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"{path}: TensorRT cannot parse it: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineError(f"{path}: TensorRT could not build an engine (see its log above)")
        destination = engine_file(engine_path, role)
        destination.write_bytes(bytes(serialized))
        files[role] = destination.name
    metadata = {
        **manifest,
        "graphs": {role: {**manifest["graphs"][role], "file": files[role]} for role in files},
        "tensorrt": {
            "version": trt.__version__,
            "gpu": device,
            "fp16": fp16,
            "workspace_mb": workspace_mb,
            "onnx": str(onnx_path),
        },
    }
    write_json_atomic(manifest_path(engine_path), metadata)
    return metadata


class TensorRTEngine(Engine):
    """Engines deserialised once; inputs and outputs in device buffers allocated once and bound
    to the execution contexts, so a call is copies in, one enqueue per stage, a copy out."""

    backend = "tensorrt"

    def __init__(self, path: Path) -> None:
        manifest, spec = read_manifest(path)
        super().__init__(spec, path)
        built = manifest.get("tensorrt")
        if not isinstance(built, dict):
            raise EngineError(f"{manifest_path(path)}: not a TensorRT engine manifest")
        trt = _tensorrt()
        if built.get("version") != trt.__version__:
            raise EngineError(
                f"{path}: built with TensorRT {built.get('version')}, this is TensorRT "
                f"{trt.__version__}; rebuild it with `onedp export --engine`"
            )
        device = gpu_name()
        if built.get("gpu") != device:
            raise EngineError(
                f"{path}: built for GPU '{built.get('gpu')}', this GPU is '{device}'; rebuild "
                "it with `onedp export --engine`"
            )
        if "head" not in manifest["graphs"]:
            raise EngineError(f"{path}: TensorRT engines run one-step models only")
        cudart = _cudart()
        self._cudart = cudart
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._stages = {}
        for role in ("encoder", "head"):
            file = path.parent / manifest["graphs"][role]["file"]
            if not file.is_file():
                raise EngineError(f"{file}: missing")
            engine = runtime.deserialize_cuda_engine(file.read_bytes())
            if engine is None:
                raise EngineError(f"{file}: TensorRT cannot deserialise it (truncated?)")
            self._stages[role] = self._bind(engine, trt)

    def _bind(self, engine, trt) -> dict:
        context = engine.create_execution_context()
        buffers = {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            shape = tuple(engine.get_tensor_shape(name))
            host = np.zeros(shape, dtype=trt.nptype(engine.get_tensor_dtype(name)))
            device = _check(self._cudart.cudaMalloc(host.nbytes), "cudaMalloc")
            context.set_tensor_address(name, int(device))
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            buffers[name] = (host, device, is_input)
        return {"engine": engine, "context": context, "buffers": buffers}

    def _copy(self, destination, source, nbytes: int, kind) -> None:
        _check(
            self._cudart.cudaMemcpyAsync(destination, source, nbytes, kind, self._stream),
            "cudaMemcpyAsync",
        )

    def _run(self, role: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        cudart = self._cudart
        stage = self._stages[role]
        copy_in = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        copy_out = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, (host, device, is_input) in stage["buffers"].items():
            if is_input:
                np.copyto(host, feeds[name])
                self._copy(device, host.ctypes.data, host.nbytes, copy_in)
        if not stage["context"].execute_async_v3(int(self._stream)):
            raise EngineError(f"{self.source}: TensorRT {role} execution failed")
        outputs = []
        for host, device, is_input in stage["buffers"].values():
            if not is_input:
                self._copy(host.ctypes.data, device, host.nbytes, copy_out)
                outputs.append(host)
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return outputs[0].copy()

    def close(self) -> None:
        for stage in self._stages.values():
            for _, device, _ in stage["buffers"].values():
                self._cudart.cudaFree(device)
        self._stages.clear()
        self._cudart.cudaStreamDestroy(self._stream)

    def _encode(self, images: dict[str, np.ndarray], low_dim: np.ndarray) -> np.ndarray:
        feeds = {f"{camera}_rgb": images[camera] for camera in self.spec.cameras}
        return self._run("encoder", {**feeds, "low_dim": low_dim})

    def _generate(self, obs_features: np.ndarray, noise: np.ndarray, rng) -> np.ndarray:
        feeds = {"obs_features": obs_features, "noise": noise}
        renoise = draw_renoise(self.spec, rng)
        if renoise is not None:  # a cpN head (the chain unrolled in the engine)
            feeds["renoise"] = renoise
        return self._run("head", feeds)
