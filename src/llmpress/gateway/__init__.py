"""The gateway: one OpenAI-compatible endpoint over local llmpress servers and API providers.

Targets and routes come from a YAML config (`config.py`); provider keys from a vault (`vault.py`);
routing policies from one name -> policy table (`routing.py`); sensitive-data detectors (`privacy.py`);
cost before and after a call (`pricing.py`), forecasts and reports (`forecast.py`, `report.py`); the
FastAPI app (`app.py`).
"""

from llmpress.gateway.config import GatewayConfig, load_config

__all__ = ["GatewayConfig", "load_config", "create_gateway_app"]


def create_gateway_app(config: GatewayConfig, auth: bool = True):  # type: ignore[no-untyped-def]
    """Build the gateway FastAPI app (imports FastAPI and aiohttp only when called)."""
    from llmpress.gateway.app import create_gateway_app as _create

    return _create(config, auth)
