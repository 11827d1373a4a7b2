"""Reports: markdown tables and plots shared by bench, optimize and the benchmarks."""

from llmpress.report.plots import scatter
from llmpress.report.tables import fmt, markdown_table

__all__ = ["scatter", "markdown_table", "fmt"]
