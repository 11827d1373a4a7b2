"""CPU feature decisions are functions of the flags, so every CPU family's choice is tested here."""

from __future__ import annotations

import pytest

from llmpress.hardware import BF16_AUTOCAST_FLAGS, bf16_autocast_pays, cpu_flags, cpu_has_bf16


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, True),  # Intel Sapphire Rapids and later
    ({"avx512f", "avx512_bf16", "avx512_vnni"}, "avx512_bf16" in BF16_AUTOCAST_FLAGS),  # AMD EPYC Zen 4
    ({"avx2", "fma"}, False),
    (None, False),  # flags unreadable: the portable fp32 path
])
def test_bf16_autocast_default_per_cpu_family(flags, expected) -> None:
    assert bf16_autocast_pays(flags) is expected


def test_this_machine_follows_the_table() -> None:
    assert cpu_has_bf16() == bf16_autocast_pays(cpu_flags())
