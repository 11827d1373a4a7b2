"""llmpress: take a language model from choice to production in one closed loop."""

__version__ = "0.1.0"
