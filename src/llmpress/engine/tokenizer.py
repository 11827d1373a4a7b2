"""The served tokenizer without transformers: the artifact's `tokenizer.json` in the Rust `tokenizers` library,
plus its chat template rendered the way transformers renders it.

Why: transformers' tokenizer class costs a serving process ~50 MB of RSS (its import ~24 MB, the Python-side
vocabularies, and a second copy for the engine thread because its `encode` may reconfigure the Rust object,
which fails while another thread decodes). This wrapper only reads the Rust object (`encode`, `decode` take
`&self`), so the server's event loop and the engine thread share one instance.

It stands in only where it is exactly what transformers 5 would build: tokenizer_config.json names the
generic `TokenizersBackend` (every tokenizer transformers 5 saves from a tokenizer.json), brings no code,
sets no option this file does not implement, and its named special tokens are special tokens of the
tokenizer.json. Otherwise `load_for_engine` falls back to `artifact.load_tokenizer()` with one log line.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("llmpress.engine")

SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# tokenizer_config.json keys that change nothing this wrapper does (metadata, padding / truncation settings
# the engine never uses) or that it implements (the special tokens, the chat template)
KNOWN = {"backend", "tokenizer_class", "is_local", "local_files_only", "model_max_length", "padding_side",
         "truncation_side", "model_input_names", "chat_template", "errors", "name_or_path", "added_tokens_decoder",
         "use_default_system_prompt", *SPECIAL}
FALSE_OK = ("clean_up_tokenization_spaces", "split_special_tokens")  # allowed when false


class Unsupported(Exception):
    """Why the lite tokenizer cannot stand in for transformers' (becomes the one log line)."""


def _content(v: Any) -> str | None:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _compile_template(source: str) -> Any:
    """transformers' chat-template environment (utils/chat_template_utils.py): sandboxed, trim_blocks and
    lstrip_blocks, loop controls, its `tojson` (no HTML escaping), `raise_exception`, `strftime_now`."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


class LiteTokenizer:
    """encode / decode / apply_chat_template over one Rust tokenizer, shared by the server and the engine."""

    thread_safe = True  # only &self methods of the Rust object are called: no per-thread copy needed

    def __init__(self, path: Path) -> None:
        import tokenizers

        tc = self._config(path)
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 - any parse failure: transformers gets to say what is wrong
            raise Unsupported(f"tokenizer.json does not load in tokenizers ({type(e).__name__})") from e
        specials = {t.content for t in self._tok.get_added_tokens_decoder().values() if t.special}
        self.special_tokens_map: dict[str, str] = {}
        for key in SPECIAL:
            tok = _content(tc.get(key))
            if tok is None:
                continue
            if tok not in specials:
                raise Unsupported(f"{key} {tok!r} is not a special token of tokenizer.json")
            self.special_tokens_map[key] = tok
        for key in SPECIAL:
            tok = self.special_tokens_map.get(key)
            setattr(self, key, tok)
            setattr(self, key + "_id", None if tok is None else self._tok.token_to_id(tok))
        if self.pad_token is None:  # as sources/hf.load_tokenizer does
            self.pad_token, self.pad_token_id = self.eos_token, self.eos_token_id  # type: ignore[attr-defined]
            if self.eos_token is not None:  # type: ignore[attr-defined]
                self.special_tokens_map["pad_token"] = self.eos_token  # type: ignore[attr-defined]
        self.chat_template = self._template(path, tc)
        self._compiled: Any = None

    @staticmethod
    def _config(path: Path) -> dict[str, Any]:
        if not (path / "tokenizer.json").is_file():
            raise Unsupported("no tokenizer.json")
        try:
            tc = json.loads((path / "tokenizer_config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise Unsupported(f"tokenizer_config.json cannot be read ({type(e).__name__})") from e
        if not isinstance(tc, dict) or tc.get("tokenizer_class") != "TokenizersBackend":
            raise Unsupported(f"tokenizer class {tc.get('tokenizer_class') if isinstance(tc, dict) else None!r}")
        unknown = sorted(k for k in tc if k not in KNOWN and not (k in FALSE_OK and tc[k] is False))
        if unknown:
            raise Unsupported(f"tokenizer_config.json sets {', '.join(unknown[:3])}")
        return tc

    @staticmethod
    def _template(path: Path, tc: dict[str, Any]) -> str | None:
        jinja = path / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text()
        t = tc.get("chat_template")
        if t is None or isinstance(t, str):
            return t
        raise Unsupported("named chat templates")

    # -- the surface the server and the engine use ----------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, int):
            ids = [ids]
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [self._tok.id_to_token(i) for i in ids]

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
                            tokenize: bool = True, **kwargs: Any) -> Any:
        """transformers' apply_chat_template for one conversation of plain messages (None values dropped, as
        it does); the template sees the special tokens by name, then `kwargs`."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        if self._compiled is None:
            self._compiled = _compile_template(self.chat_template)
        msgs = [{k: v for k, v in m.items() if v is not None} for m in messages]
        text = self._compiled.render(messages=msgs, tools=kwargs.pop("tools", None),
                                     documents=kwargs.pop("documents", None),
                                     add_generation_prompt=add_generation_prompt,
                                     **{**self.special_tokens_map, **kwargs})
        return self.encode(text, add_special_tokens=False) if tokenize else text


def load_for_engine(artifact: Any) -> Any:
    """What the engine tokenizes with: the lite tokenizer when it is exactly transformers', else
    `artifact.load_tokenizer()`, with one log line saying why."""
    from llmpress.engine.lite import disabled

    if disabled():  # LLMPRESS_LITE=0: transformers' model and tokenizer
        return artifact.load_tokenizer()
    base = Path(artifact.path)
    if artifact.manifest.format == "adapter" and not (base / "tokenizer_config.json").exists():
        return artifact.load_tokenizer()  # the base model's, found through the registry
    try:
        return LiteTokenizer(base)
    except Unsupported as e:
        log.info("lite tokenizer does not apply (%s): loading transformers' tokenizer", e)
        return artifact.load_tokenizer()
