"""triton: a Triton Inference Server model repository around the ONNX decoder.

Layout: `<model>/config.pbtxt` + `<model>/1/model.onnx` (+ its external data), served by
Triton's `onnxruntime` backend with dynamic batching; the tokenizer files sit at the
repository root (Triton reads only model directories). The decoder is stateless: a client
sends `input_ids`, `attention_mask` and the previous step's `present.*` as `past_key_values.*`,
so requests of equal shapes batch together. `config.pbtxt` is built as Triton's own
`ModelConfig` protobuf message (tritonclient's `model_config_pb2`) and written in protobuf text
format; verification parses it back with that message, checks every input and output against
the ONNX graph, and runs the model file in ONNX Runtime (a Triton server does not run here).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmpress.artifact import Artifact
from llmpress.errors import ConfigError
from llmpress.export.base import ExportError, ExportFormat, register_format
from llmpress.export.onnx import OnnxConfig, build_onnx
from llmpress.export.verify import compare, manifest_stub

CONFIG = "config.pbtxt"
# ONNX tensor element type -> Triton data type name
_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 7: "TYPE_INT64", 6: "TYPE_INT32", 9: "TYPE_BOOL"}


@dataclass
class TritonConfig(OnnxConfig):
    model_name: str = ""  # default: derived from the source's name
    max_batch_size: int = 8
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [4, 8])
    max_queue_delay_us: int = 1000
    instances: int = 1

    def validate(self) -> None:
        super().validate()
        if self.max_batch_size < 1 or self.instances < 1 or self.max_queue_delay_us < 0:
            raise ConfigError("triton max_batch_size and instances must be >= 1, the queue delay >= 0",
                              "fix the triton options")
        if any(b < 1 or b > self.max_batch_size for b in self.preferred_batch_sizes):
            raise ConfigError(f"preferred batch sizes {self.preferred_batch_sizes} must lie in 1..max_batch_size "
                              f"({self.max_batch_size})", "fix --preferred-batch-sizes")
        if self.model_name and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.model_name):
            raise ConfigError(f"Triton model name {self.model_name!r} has characters Triton does not allow",
                              "use letters, digits, '_', '-', '.'")


_PB2: Any = None


def model_config_pb2() -> Any:
    """Triton's generated `model_config_pb2` from the tritonclient package.

    Loaded from its file: `tritonclient.grpc/__init__` needs grpcio (a RuntimeError without it),
    while the message module needs only protobuf.
    """
    global _PB2
    if _PB2 is not None:
        return _PB2
    import importlib.util

    spec = importlib.util.find_spec("tritonclient")
    path = Path(next(iter(spec.submodule_search_locations or []), "")) / "grpc" / "model_config_pb2.py" \
        if spec else None
    if path is None or not path.is_file():
        raise ConfigError("a Triton export needs Triton's ModelConfig message from the tritonclient package",
                          "pip install 'llmpress[onnx]'")
    mspec = importlib.util.spec_from_file_location("tritonclient.grpc.model_config_pb2", path)
    assert mspec is not None and mspec.loader is not None
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    _PB2 = module
    return module


def _io(graph_values: Any, batched: bool) -> list[dict[str, Any]]:
    out = []
    for v in graph_values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if t.elem_type not in _TYPES:
            raise ExportError(f"ONNX tensor {v.name} has element type {t.elem_type}, which has no Triton type",
                              "export with --precision fp32")
        out.append({"name": v.name, "data_type": _TYPES[t.elem_type], "dims": dims[1:] if batched else dims})
    return out


def make_model_config(onnx_file: Path, config: TritonConfig, name: str) -> Any:
    """Triton's ModelConfig for the decoder file: its inputs/outputs (batch dim implicit), dynamic batching."""
    import onnx

    pb = model_config_pb2()
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    mc = pb.ModelConfig(name=name, backend="onnxruntime", max_batch_size=config.max_batch_size)
    for spec in _io([i for i in graph.input if i.name not in init], True):
        mc.input.add(name=spec["name"], data_type=pb.DataType.Value(spec["data_type"]), dims=spec["dims"])
    for spec in _io(graph.output, True):
        mc.output.add(name=spec["name"], data_type=pb.DataType.Value(spec["data_type"]), dims=spec["dims"])
    mc.dynamic_batching.preferred_batch_size.extend(config.preferred_batch_sizes)
    mc.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
    mc.instance_group.add(count=config.instances, kind=pb.ModelInstanceGroup.Kind.KIND_CPU)
    mc.version_policy.latest.num_versions = 1
    return mc


def write_triton(src: Artifact, config: TritonConfig, dest: Path, progress: Any = None) -> dict[str, Any]:
    from google.protobuf import text_format

    name = config.model_name or re.sub(r"[^A-Za-z0-9_.-]+", "_", src.name)
    build = dest / ".onnx-build"
    facts = build_onnx(src, config, build, progress)
    version = dest / name / "1"
    version.mkdir(parents=True)
    for f in build.iterdir():
        if f.name.startswith("model.onnx"):
            shutil.move(str(f), version / f.name)
        elif f.name != "genai_config.json":
            shutil.move(str(f), dest / f.name)  # tokenizer files at the repository root
    shutil.rmtree(build)
    mc = make_model_config(version / "model.onnx", config, name)
    (dest / name / CONFIG).write_text(text_format.MessageToString(mc))
    facts.update(model_name=name, repository_layout=f"{name}/{CONFIG} + {name}/1/model.onnx",
                 files=sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()))
    return facts


def parse_model_config(path: Path) -> Any:
    """config.pbtxt -> Triton's ModelConfig message (protobuf text format); a malformed file is an error."""
    from google.protobuf import text_format

    pb = model_config_pb2()
    try:
        return text_format.Parse(path.read_text(), pb.ModelConfig())
    except text_format.ParseError as e:
        raise ExportError(f"{path} is not a valid Triton model config: {e}", "re-export the repository") from e


def verify_triton(dest: Path, src: Artifact, config: TritonConfig, facts: dict[str, Any]) -> dict[str, Any]:
    from llmpress.engine.backends.ort import OrtSessionLM

    name = facts["model_name"]
    mc = parse_model_config(dest / name / CONFIG)
    expected = make_model_config(dest / name / "1" / "model.onnx", config, name)
    if mc != expected or mc.backend != "onnxruntime":
        raise ExportError(f"{name}/{CONFIG} does not describe the exported ONNX model", "report this as a bug")
    checks = {"config_parsed": True, "inputs": len(mc.input), "outputs": len(mc.output),
              "dynamic_batching": list(mc.dynamic_batching.preferred_batch_size)}
    runtime = OrtSessionLM(dest / name / "1" / "model.onnx", manifest_stub(facts))
    return {**checks, **compare(runtime, src, exact=config.precision == "fp32")}


register_format(ExportFormat(
    "triton", TritonConfig, write_triton, verify_triton, ("fp32", "int8", "int4"), "triton",
    "Triton model repository: config.pbtxt (onnxruntime backend, dynamic batching) + 1/model.onnx",
    requires=("onnx", "onnxruntime", "onnxruntime_genai", "onnx_ir", "tritonclient"), extra="onnx"))
