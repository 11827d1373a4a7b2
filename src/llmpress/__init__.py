"""llmpress: take a language model from choice to production in one closed loop."""

import logging as _logging

__version__ = "0.1.0"

# torchao (imported by transformers when installed) warns about CUDA-only .so files and
# deprecated pytree registrations on every import: noise for a CPU user, not a problem.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
