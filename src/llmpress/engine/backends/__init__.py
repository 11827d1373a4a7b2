"""Runtimes other than llmpress's own engine, behind one interface (`RuntimeLM`).

`ort` runs ONNX exports with ONNX Runtime GenAI (decode) and ONNX Runtime (whole-window
logits); `llamacpp` runs GGUF exports with llama-cpp-python, or reads them with the `gguf`
package into a torch model when that optional extra is absent. Each module registers the
artifact loader of its format, so `artifact.load_model()` returns a `RuntimeLM`.
"""
