"""OpenAI-compatible HTTP server over the engine: FastAPI app, schemas, auth, limits, metrics, JSON logs."""

from llmpress.server.app import create_app
from llmpress.server.context import ServerConfig

__all__ = ["ServerConfig", "create_app", "build_app", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (no-auth serving is allowed only there)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_app(model: object, host: str = "127.0.0.1", auth: bool = True, engine_loop: str = "background",
              **engine_config: object):  # type: ignore[no-untyped-def]
    """Resolve a model spec, load an engine on it and wrap it in the app (used by `llmpress serve` and tests).

    `engine_loop="background"`: the app's lifespan starts the engine thread; `"caller"`: the caller runs
    `app.state.driver.run_here()` itself (one engine loop per process either way, fixed here)."""
    from llmpress.engine import LLMEngine
    from llmpress.errors import ConfigError
    from llmpress.sources import resolve

    if not auth and not is_loopback(host):
        raise ConfigError(f"refusing to serve without API keys on {host}, which other machines can reach",
                          "bind to 127.0.0.1 or drop --no-auth and create keys with `llmpress keys create`",
                          param="host")
    art = resolve(model) if isinstance(model, str) else model
    if art.manifest.format == "onnx":  # an edge export: ONNX Runtime GenAI behind the same API
        from llmpress.engine.backends.ort import OrtGenAIEngine

        engine = OrtGenAIEngine(art, max_batch=int(engine_config.get("max_batch", 8)),  # type: ignore[arg-type]
                                max_waiting=int(engine_config.get("max_waiting", 256)))  # type: ignore[arg-type]
    else:
        engine = LLMEngine.from_artifact(art, **engine_config)
    cfg = ServerConfig(model_name=art.name, model_aliases=[art.id, str(model) if isinstance(model, str) else art.id], auth=auth, parent=art.manifest.parent)
    return create_app(engine, cfg, engine_loop), art  # type: ignore[arg-type]
