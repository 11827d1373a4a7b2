"""Beyond one process: the server as Ray Serve replicas, data-parallel training, vLLM on GPUs, capacity.

Each module imports its heavy dependency (ray, accelerate's launcher, vllm) only when called, so
`import llmpress.scale` works on a machine without them and fails in one line when a feature is used.
"""
