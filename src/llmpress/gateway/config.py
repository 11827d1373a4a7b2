"""The gateway's YAML config as pydantic models: targets (upstream endpoints, prices, key references) and routes.

`load_config(path)` validates the whole file and turns the first problem into one ConfigError that names
the file, the line and the field (`gateway.yaml:7: targets[0].api_key: ...`). Provider keys are never
inline: `api_key` is a reference (`env:NAME`, `file:PATH` or `vault:NAME`), resolved at request time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmpress.errors import ConfigError, NotFoundError

_REF = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+|vault(:[A-Za-z0-9_.-]+)?)$")


class _RefError(ValueError):
    """A cross-reference error that knows where in the file it is (pydantic keeps it in the error's ctx)."""

    def __init__(self, message: str, loc: tuple[Any, ...]) -> None:
        super().__init__(message)
        self.loc = loc


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Price(_Model):
    """USD per million tokens."""

    input_per_mtok: float = Field(default=0.0, ge=0)
    output_per_mtok: float = Field(default=0.0, ge=0)


class TargetConfig(_Model):
    """One upstream OpenAI-compatible endpoint (an `llmpress serve`, vLLM, llama.cpp or a cloud provider)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str = Field(pattern=r"^https?://")
    models: list[str] = Field(min_length=1)
    local: bool = False
    price: Price = Field(default_factory=Price)
    context: int = Field(default=4096, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    api_key: str | None = None
    max_queue: int | None = Field(default=None, ge=0)
    max_kv_usage: float | None = Field(default=None, gt=0, le=1)
    metrics_url: str | None = None
    tokenizer: str | None = None
    retries: int = Field(default=1, ge=0, le=5)

    @field_validator("api_key")
    @classmethod
    def _key_is_a_reference(cls, v: str | None) -> str | None:
        if v is None or _REF.match(v):
            return v
        # Never echo the value: it may be a real key pasted inline.
        raise ValueError("must be a reference (env:NAME, file:PATH or vault[:NAME]), not the key itself; "
                         "store it with `llmpress providers set TARGET` or in an environment variable")

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    @property
    def metrics_endpoint(self) -> str:
        if self.metrics_url:
            return self.metrics_url
        base = self.base_url
        return (base[:-3] if base.endswith("/v1") else base) + "/metrics"

    @property
    def watches_capacity(self) -> bool:
        return self.max_queue is not None or self.max_kv_usage is not None


class RouteConfig(_Model):
    """A model alias clients ask for -> ordered targets and the policy that orders them per request."""

    alias: str = Field(min_length=1)
    targets: list[str] = Field(min_length=1)
    policy: Literal["local-first", "cheapest", "fastest", "weighted"] = "local-first"
    weights: dict[str, float] | None = None

    @model_validator(mode="after")
    def _weights(self) -> RouteConfig:
        if self.policy == "weighted":
            if not self.weights:
                raise ValueError("policy 'weighted' needs weights, e.g. weights: {local: 3, cloud: 1}")
            bad = [k for k in self.weights if k not in self.targets]
            if bad:
                raise ValueError(f"weights name targets not in this route: {', '.join(bad)}")
            if any(w < 0 for w in self.weights.values()) or not any(w > 0 for w in self.weights.values()):
                raise ValueError("weights must be >= 0 with at least one > 0")
        return self


class PrivacyConfig(_Model):
    """Which detectors run on request text; a hit sends the request only to `local: true` targets."""

    enabled: bool = True
    detectors: list[Literal["email", "phone", "card", "iban", "secret"]] = Field(
        default_factory=lambda: ["email", "phone", "card", "iban", "secret"])
    patterns: dict[str, str] = Field(default_factory=dict)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, v: dict[str, str]) -> dict[str, str]:
        for name, rx in v.items():
            try:
                re.compile(rx)
            except re.error as e:
                raise ValueError(f"pattern {name!r} is not a valid regex: {e}") from None
        return v


class BreakerConfig(_Model):
    """Circuit breaker per target: open after `failures` consecutive failures, probe again after `cooldown_s`."""

    failures: int = Field(default=3, ge=1)
    cooldown_s: float = Field(default=5.0, gt=0)


class GatewayConfig(_Model):
    targets: list[TargetConfig] = Field(min_length=1)
    routes: list[RouteConfig] = Field(default_factory=list)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    metrics_interval_s: float = Field(default=0.25, gt=0)
    backoff_s: float = Field(default=0.05, ge=0)
    key_grace_s: float = Field(default=3600.0, ge=0)

    @model_validator(mode="after")
    def _cross_refs(self) -> GatewayConfig:
        names = [t.name for t in self.targets]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise _RefError(f"target names must be unique; {n!r} is repeated", ("targets", i, "name"))
        aliases = [r.alias for r in self.routes]
        for i, a in enumerate(aliases):
            if a in aliases[:i]:
                raise _RefError(f"route aliases must be unique; {a!r} is repeated", ("routes", i, "alias"))
        for i, r in enumerate(self.routes):
            for j, t in enumerate(r.targets):
                if t not in names:
                    raise _RefError(f"unknown target {t!r}; known: {', '.join(names)}", ("routes", i, "targets", j))
        return self

    def target(self, name: str) -> TargetConfig:
        for t in self.targets:
            if t.name == name:
                return t
        raise NotFoundError(f"no target {name!r} in the gateway config",
                            f"use one of {', '.join(t.name for t in self.targets)}")


def _node_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at a pydantic error location (the deepest node that exists)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    nxt = v if not isinstance(v, yaml.ScalarNode) else v
                    line = k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line


def _loc_str(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def parse_config(text: str, source: str = "<config>") -> GatewayConfig:
    """Validate YAML text; the first error becomes one ConfigError naming `source:line: field`."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the gateway config must be a mapping with `targets:` and `routes:`",
                          "see examples/gateway.yaml")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        ref = (err.get("ctx") or {}).get("error")
        if isinstance(ref, _RefError):
            loc = ref.loc
        line = _node_line(root, loc)
        field = _loc_str(loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        more = f" (and {len(e.errors()) - 1} more problem(s))" if len(e.errors()) > 1 else ""
        raise ConfigError(f"{source}:{line}: {field}: {msg}{more}", "fix that field; see examples/gateway.yaml",
                          param=field) from None


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a gateway YAML file (errors name the line and the field)."""
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"no gateway config at {p}", "pass --config PATH (see examples/gateway.yaml)")
    return parse_config(p.read_text(), str(p))
