"""The configuration reference (``docs/configuration.md``, ``docs/zh/configuration.md``),
generated from the schema so that it cannot drift from the code.

Everything comes from :mod:`tlsgate.config.schema`: every key's TOML path, type, default and
``Field(description=...)``, walked from :class:`~tlsgate.config.schema.Config` in declaration
order, and the messages of the cross-key rules (the ``raise ValueError("...")`` lines of the
schema's ``model_validator``s, read from the source with :mod:`ast`, so the reference quotes what
``check-config`` prints). The only prose kept here is what the schema cannot say: a sentence per
table that has no description of its own (:data:`TABLE_DOCS`), the page's head and the labels.

The Chinese page takes its descriptions from :mod:`tlsgate.config.reference_zh`, keyed by the key
path and storing the English text each translation was made from. :func:`render` with
``lang="zh"`` raises :class:`TranslationError` when a key or table has no translation, when the
English description changed since it was translated (stale), or when a translation names a key
that no longer exists -- so a schema change cannot leave the Chinese reference silently behind.

``tlsgate config-reference`` (``tlsgate/cli.py``) prints or writes a page and ``--check`` compares
the committed file; ``tests/docs/test_reference.py`` and ``make docs-check`` run that in CI.
"""

from __future__ import annotations

import ast
import inspect
import json
import socket
import textwrap
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo

from . import schema
from .schema import Config
from .types import Secret, format_duration, parse_cidr, parse_duration, parse_hostport, parse_size

Lang = Literal["en", "zh"]
LANGS: tuple[Lang, ...] = ("en", "zh")

#: Where each page lives in the repository (what ``make docs`` writes).
OUTPUT = {"en": "docs/configuration.md", "zh": "docs/zh/configuration.md"}

#: The whole file (its rules are the cross-table checks).
ROOT_DOC = "Checks across tables, made once the whole file is read."

#: Tables whose model field carries no description of its own.
TABLE_DOCS: dict[str, str] = {
    "node": "This node: its name, where it keeps state, its worker processes, reloads and "
            "shutdown.",
    "log": "Logging: level, format (text or JSON), the per-connection access log, destination.",
    "mqtt": "MQTT handling for every listener (each listener can override these in its own "
            "`mqtt` table): identity mapping into the CONNECT, CONNECT limits.",
    "listeners.ssl.<name>.ssl_options":
        "TLS of a listener: certificate and key, client certificate verification, versions and "
        "suites, CRL checking.",
    "listeners.ssl.<name>.ssl_options.ocsp":
        "OCSP stapling of the listener's certificates, and optional OCSP checks of client "
        "certificates.",
    "listeners.gm.<name>.ssl_options":
        "国密 TLS of a GM listener: the SM2 signing and encryption certificate pairs, client "
        "verification, protocols (TLCP, TLS 1.3 with RFC 8998 suites) and suites.",
    "psk_authentication": "TLS-PSK: clients that authenticate with a pre-shared key instead of "
                          "a certificate, on every TLS listener.",
    "crl_cache": "How CRLs fetched from distribution points are cached and refreshed (for "
                 "listeners with `enable_crl_check = true`).",
    "authentication.ssl": "TLS towards the HTTP authentication server.",
    "cluster": "Several tlsgate nodes as one service.",
    "cluster.static": "Static discovery: the other nodes' cluster channel addresses.",
    "dashboard": "The admin HTTP API, `/metrics` and the dashboard page (served by the node "
                 "process).",
    "dashboard.ssl": "HTTPS for the admin API.",
    "demo_broker": "DEMO ONLY. The embedded broker the no-config demo (`tlsgate serve` without "
                   "`-c`) starts.",
}


# ------------------------------------------------------------------------------------------
# The walk
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TypeInfo:
    """What a key accepts, independent of the page's language."""

    kind: str                      # bool int float str enum duration size hostport cidr secret
    #                                list dict
    choices: tuple[str, ...] = ()  # enum
    low: int | None = None         # int bounds
    high: int | None = None
    item: TypeInfo | None = None   # list items
    comma_ok: bool = False         # a list that also accepts one comma-separated string
    min_items: int = 0


@dataclass(frozen=True)
class Key:
    table: str
    name: str
    type: TypeInfo
    default: str | None            # a TOML value; None = required
    default_note: str = ""         # "hostname" / "inherit" / "unset": rendered per language
    description: str = ""

    @property
    def path(self) -> str:
        return f"{self.table}.{self.name}" if self.table else self.name


@dataclass
class Table:
    path: str
    description: str
    array: bool = False            # [[...]]: an array of tables
    optional: bool = False         # the whole table may be absent (and is, by default)
    aliases: tuple[str, ...] = ()
    present: tuple[str, ...] = ()  # entries of a [x.<name>] table that exist by default
    keys: list[Key] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    model: type[BaseModel] | None = None


def _unwrap_optional(ann: Any) -> tuple[Any, bool]:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(ann)) == 2:
            return args[0], True
    return ann, False


def _validator_funcs(metadata: list[Any]) -> set[Callable[..., Any]]:
    return {m.func for m in metadata if hasattr(m, "func")}


def _type_of(ann: Any, metadata: list[Any]) -> TypeInfo:
    ann, _ = _unwrap_optional(ann)
    funcs = set(_validator_funcs(metadata))
    if typing.get_origin(ann) is typing.Annotated:
        base, *extra = typing.get_args(ann)
        funcs |= _validator_funcs(list(extra))
        metadata = [*metadata, *extra]
        ann = base
    low = next((m.ge for m in metadata if hasattr(m, "ge")), None)
    high = next((m.le for m in metadata if hasattr(m, "le")), None)
    min_items = next((m.min_length for m in metadata if hasattr(m, "min_length")), 0) or 0
    if parse_duration in funcs:
        return TypeInfo("duration")
    if parse_size in funcs:
        return TypeInfo("size", low=low)
    if parse_hostport in funcs:
        return TypeInfo("hostport")
    if parse_cidr in funcs:
        return TypeInfo("cidr")
    if isinstance(ann, type) and issubclass(ann, Secret):
        return TypeInfo("secret")
    if typing.get_origin(ann) is Literal:
        return TypeInfo("enum", choices=tuple(str(a) for a in typing.get_args(ann)))
    if ann is bool:
        return TypeInfo("bool")
    if ann is int:
        return TypeInfo("int", low=low, high=high)
    if ann is float:
        return TypeInfo("float", low=low, high=high)
    if ann is str:
        return TypeInfo("str")
    origin = typing.get_origin(ann)
    if origin is list:
        (item,) = typing.get_args(ann)
        comma_ok = any(getattr(f, "__name__", "") == "_str_or_list" for f in funcs)
        return TypeInfo("list", item=_type_of(item, []), comma_ok=comma_ok,
                        min_items=min_items)
    if origin is dict:
        _k, v = typing.get_args(ann)
        return TypeInfo("dict", item=_type_of(v, []))
    raise TypeError(f"the reference generator does not know how to describe {ann!r}; "
                    "teach tlsgate/config/reference.py:_type_of")


def _model_of(ann: Any) -> type[BaseModel] | None:
    ann, _ = _unwrap_optional(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return None


def _toml(value: Any, t: TypeInfo) -> str:
    """A default value written as it would be in the TOML file."""
    if t.kind == "duration":
        return json.dumps(format_duration(float(value)) if value else "0s")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else f"{value}"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        item = t.item or TypeInfo("str")
        return "[" + ", ".join(_toml(v, item) for v in value) + "]"
    if isinstance(value, dict):
        item = t.item or TypeInfo("str")
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {_toml(v, item)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _default(f: FieldInfo, t: TypeInfo) -> tuple[str | None, str]:
    if f.is_required():
        return None, ""
    if f.default_factory is not None:
        if f.default_factory is socket.gethostname:
            return "", "hostname"
        value = f.default_factory()  # type: ignore[call-arg]
    else:
        value = f.default
    if value is None:
        return "", "unset"
    if t.kind == "size" and isinstance(value, int) and value % 1024 == 0 and value >= 1024:
        return f"{value}", f"size:{value // 1024}"
    return _toml(value, t), ""


def _rules(model: type[BaseModel]) -> list[str]:
    """The messages of ``raise ValueError(...)`` in the model's validators, as written in the
    source (f-string fields shown as ``…``)."""
    out: list[str] = []
    for dec in model.__pydantic_decorators__.model_validators.values():
        try:
            src = textwrap.dedent(inspect.getsource(dec.func))
        except (OSError, TypeError):  # pragma: no cover - source always shipped
            continue
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and \
                    getattr(node.exc.func, "id", "") == "ValueError" and node.exc.args:
                text = _literal_text(node.exc.args[0])
                if text:
                    out.append(text)
    return out


def _literal_text(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str)
                       else "…" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _literal_text(node.left) + _literal_text(node.right)
    return ""


def _walk(model: type[BaseModel], path: str, description: str, *, array: bool = False,
          optional: bool = False, aliases: tuple[str, ...] = (),
          present: tuple[str, ...] = ()) -> Iterator[Table]:
    table = Table(path, description, array=array, optional=optional, aliases=aliases,
                  present=present, model=model, rules=_rules(model))
    subs: list[tuple[type[BaseModel], str, str, bool, bool, tuple[str, ...],
                     tuple[str, ...]]] = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        sub = _model_of(ann)
        child = f"{path}.{name}" if path else name
        desc = f.description or ""
        alias = f.validation_alias
        alias_names = tuple(a for a in alias.choices if isinstance(a, str) and a != name) \
            if isinstance(alias, AliasChoices) else ()
        if sub is not None:
            subs.append((sub, child, desc, False, _unwrap_optional(ann)[1] and
                         f.default is None, alias_names, ()))
            continue
        origin = typing.get_origin(ann)
        if origin in (dict, list):
            (*_, inner) = typing.get_args(ann)
            inner_model = _model_of(inner)
            if inner_model is not None:
                sub_path = f"{child}.<name>" if origin is dict else child
                there: tuple[str, ...] = ()
                if origin is dict and f.default_factory is not None:
                    there = tuple(f"{child}.{n}"
                                  for n in f.default_factory())  # type: ignore[call-arg]
                subs.append((inner_model, sub_path, desc, origin is list, False, alias_names,
                             there))
                continue
        t = _type_of(ann, list(f.metadata))
        default, note = _default(f, t)
        if model is schema.MqttOverride and not desc:
            base = schema.MqttConfig.model_fields[name]
            desc = base.description or ""
            note = "inherit"
        table.keys.append(Key(path, name, t, default, note, desc))
    if table.keys or table.rules:
        yield table
    for sub, child, desc, is_array, opt, alias_names, present in subs:
        if not sub.model_fields:
            continue
        if all(_model_of(f.annotation) is not None or
               typing.get_origin(f.annotation) is dict for f in sub.model_fields.values()) \
                and not _rules(sub):
            # a table holding only tables (e.g. [listeners]): describe its children directly
            for name, f in sub.model_fields.items():
                inner = _model_of(f.annotation)
                if inner is None:
                    inner = _model_of(typing.get_args(f.annotation)[-1])
                    if inner is None:
                        continue
                    yield from _walk(inner, f"{child}.{name}.<name>", f.description or "")
                else:
                    yield from _walk(inner, f"{child}.{name}", f.description or "")
            continue
        yield from _walk(sub, child, desc or TABLE_DOCS.get(child, ""), array=is_array,
                         optional=opt, aliases=alias_names, present=present)


def tables() -> list[Table]:
    """Every table of the config file with its keys, in schema order."""
    out = list(_walk(Config, "", ROOT_DOC))
    root = [t for t in out if not t.path]
    return [t for t in out if t.path] + root


class ReferenceError(Exception):
    """The schema cannot be documented as it is (a key or table without a description)."""


def check_descriptions(ts: list[Table]) -> list[str]:
    problems = []
    for t in ts:
        if not t.description:
            problems.append(f"[{t.path}] has no description: give its Field a description= in "
                            f"schema.py or add it to TABLE_DOCS in reference.py")
        for k in t.keys:
            if not k.description:
                problems.append(f"{k.path} has no description: add description= to its Field "
                                "in tlsgate/config/schema.py")
    return problems


# ------------------------------------------------------------------------------------------
# Translations
# ------------------------------------------------------------------------------------------
class TranslationError(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def texts(ts: list[Table]) -> dict[str, str]:
    """Every English text a translation is needed for, by id: a table's path in brackets
    (``[node]``) or a key's path."""
    out: dict[str, str] = {}
    for t in ts:
        out[f"[{t.path}]"] = t.description
        for k in t.keys:
            out[k.path] = k.description
    return out


def translation_problems(ts: list[Table], table: dict[str, tuple[str, str]]) -> list[str]:
    """Missing, stale (English changed since translated) and orphaned translations."""
    need = texts(ts)
    problems = []
    for tid, en in need.items():
        if tid not in table:
            problems.append(f"{tid}: no Chinese translation (add it to "
                            "tlsgate/config/reference_zh.py)")
        elif table[tid][0] != en:
            problems.append(f"{tid}: the English description changed since it was translated; "
                            f"update the entry in tlsgate/config/reference_zh.py (now: {en!r})")
        elif not table[tid][1].strip():
            problems.append(f"{tid}: empty Chinese translation")
    for tid in table:
        if tid not in need:
            problems.append(f"{tid}: translated, but the schema has no such key or table "
                            "any more; remove it from tlsgate/config/reference_zh.py")
    return problems


def todo(ts: list[Table], table: dict[str, tuple[str, str]]) -> str:
    """Python entries to paste into reference_zh.py for every missing or stale translation."""
    lines = []
    for tid, en in texts(ts).items():
        if tid in table and table[tid][0] == en:
            continue
        old = table[tid][1] if tid in table else ""
        lines.append(f"    {tid!r}: (\n        {en!r},\n        {old!r}),")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------
_LABELS: dict[str, dict[str, str]] = {
    "en": {
        "bool": "boolean", "int": "integer", "float": "number", "str": "string",
        "enum": "one of", "duration": "duration", "size": "size", "hostport": "host:port",
        "cidr": "CIDR", "secret": "secret string", "list": "list of", "dict": "table of",
        "comma": "(or one comma-separated string)", "required": "**required**",
        "hostname": "the host name", "unset": "not set", "inherit": "inherits `[mqtt]`",
        "key": "Key", "type": "Type", "default": "Default", "description": "Description",
        "rules": "Checked when the file is loaded (the message `check-config` prints):",
        "array": "An array of tables: repeat `[[{path}]]` once per entry.",
        "optional": "Optional table: absent by default.",
        "aliases": "Also accepted as `[{aliases}]`.",
        "at_least": "at least {n}", "size_note": "({n} KiB)",
        "strs": "strings", "cidrs": "CIDRs", "hostports": "host:port addresses",
        "contents": "Tables", "whole": "Whole file",
        "present": "Present by default: {tables} (with the defaults below); naming other "
                   "tables replaces it.",
    },
    "zh": {
        "bool": "布尔值", "int": "整数", "float": "数值", "str": "字符串",
        "enum": "取值之一", "duration": "时长", "size": "大小", "hostport": "host:port",
        "cidr": "CIDR", "secret": "保密字符串", "list": "列表，元素为", "dict": "表，值为",
        "comma": "（也可写成一个逗号分隔的字符串）", "required": "**必填**",
        "hostname": "主机名", "unset": "不设置", "inherit": "继承 `[mqtt]`",
        "key": "键", "type": "类型", "default": "默认值", "description": "说明",
        "rules": "加载配置文件时检查（`check-config` 输出的原文）：",
        "array": "表数组：每一项写一个 `[[{path}]]`。",
        "optional": "可选的表：默认不存在。",
        "aliases": "也可以写成 `[{aliases}]`。",
        "at_least": "至少 {n} 项", "size_note": "（{n} KiB）",
        "contents": "目录", "whole": "整个文件",
        "present": "默认存在：{tables}（取下列默认值）；写了其他表时以你写的为准。",
    },
}

_HEAD = {
    "en": """\
# Configuration reference

<!-- GENERATED by `tlsgate config-reference` from tlsgate/config/schema.py. Do not edit:
     change the schema (or TABLE_DOCS in tlsgate/config/reference.py) and run `make docs`.
     CI fails when this file differs from what the generator writes. -->

Every key tlsgate reads, with its type, default and meaning, generated from the schema in the
code (`tlsgate/config/schema.py`). The file is TOML; key names follow EMQX's
(`listeners.ssl.<name>`, `ssl_options`, `psk_authentication`, `crl_cache`,
`peer_cert_as_username`...). Check a file with
`tlsgate check-config -c FILE`: it loads everything a start would and prints each problem as
`FILE: key.path: what is wrong`.

Value formats:

- **duration**: a string with a unit, `"500ms"`, `"15s"`, `"5m"`, `"1h"`, `"2d"`, or a number of
  seconds.
- **size**: bytes, `65536`, or a string with a unit, `"64KB"`, `"1MB"` (KB and KiB both mean
  1024, as in EMQX).
- **host:port**: `"0.0.0.0:8883"`, `"[::]:8883"`, `"127.0.0.1:1883"`, or just a port
  (`8883` = `"0.0.0.0:8883"`). Port 0 asks the OS for a free port.
- **secret string**: the value itself, or `"file:///path"` to read it from the first line of a
  file (keep that file `chmod 600`). Secrets never appear in logs or in the admin API.
- **paths** are used as written: a relative path is relative to the directory tlsgate is started
  from (systemd: `WorkingDirectory=`), not to the config file.
- `<name>` in a table name is yours to choose: `[listeners.ssl.default]`, `[upstreams.emqx]`.

An unknown key is an error (`unknown key (check its spelling and the table it is in)`), so a typo
cannot silently fall back to a default.
""",
    "zh": """\
# 配置参考

<!-- 由 `tlsgate config-reference --lang zh` 根据 tlsgate/config/schema.py 与
     tlsgate/config/reference_zh.py 生成，请勿手工修改：修改 schema 或译文后运行 `make docs`。
     此文件与生成结果不一致时 CI 失败。 -->

tlsgate 读取的每一个配置键，包括类型、默认值和含义，均由代码中的 schema
（`tlsgate/config/schema.py`）生成。配置文件格式为 TOML；键名沿用 EMQX 的命名
（`listeners.ssl.<name>`、`ssl_options`、`psk_authentication`、`crl_cache`、
`peer_cert_as_username` 等）。用 `tlsgate check-config -c FILE` 检查配置文件：它会加载启动时要加载的
全部内容，并以 `FILE: 键路径: 问题` 的形式逐条列出问题（错误信息为英文）。

取值格式：

- **时长**：带单位的字符串，如 `"500ms"`、`"15s"`、`"5m"`、`"1h"`、`"2d"`，或以秒为单位的数字。
- **大小**：字节数，如 `65536`，或带单位的字符串 `"64KB"`、`"1MB"`（KB 与 KiB 都表示 1024，与 EMQX
  相同）。
- **host:port**：`"0.0.0.0:8883"`、`"[::]:8883"`、`"127.0.0.1:1883"`，或只写端口（`8883` 即
  `"0.0.0.0:8883"`）。端口 0 表示由操作系统分配空闲端口。
- **保密字符串**：直接写值，或写 `"file:///path"` 从文件第一行读取（该文件应 `chmod 600`）。保密值
  不会出现在日志和管理 API 中。
- **路径**按原样使用：相对路径相对于 tlsgate 启动时的工作目录（systemd 中为 `WorkingDirectory=`），
  而不是相对于配置文件。
- 表名中的 `<name>` 由你命名，例如 `[listeners.ssl.default]`、`[upstreams.emqx]`。

未知的键会报错（`unknown key (check its spelling and the table it is in)`），拼写错误不会悄悄退回
默认值。
""",
}


def _type_text(t: TypeInfo, lang: Lang) -> str:
    L = _LABELS[lang]
    if t.kind == "enum":
        return f"{L['enum']} " + (", " if lang == "en" else "、").join(f"`{c}`"
                                                                       for c in t.choices)
    if t.kind in ("int", "float"):
        base = L[t.kind]
        if t.low is not None and t.high is not None:
            return f"{base} {t.low}–{t.high}"
        if t.low is not None:
            return f"{base} ≥ {t.low}"
        return base
    if t.kind in ("list", "dict"):
        assert t.item is not None
        item = t.item
        if item.kind == "enum":
            inner = ", ".join(f"`{c}`" for c in item.choices) if lang == "en" \
                else "、".join(f"`{c}`" for c in item.choices)
        else:
            inner = L.get(f"{item.kind}s", L[item.kind]) if lang == "en" else L[item.kind]
        text = f"{L[t.kind]} {inner}"
        if t.min_items:
            text += (", " if lang == "en" else "，") + L["at_least"].format(n=t.min_items)
        if t.comma_ok:
            text += " " + L["comma"] if lang == "en" else L["comma"]
        return text
    if t.kind == "size" and t.low:
        return f"{L['size']} ≥ {t.low}"
    return L[t.kind]


def _default_text(k: Key, lang: Lang) -> str:
    L = _LABELS[lang]
    if k.default is None:
        return L["required"]
    if k.default_note.startswith("size:"):
        return f"`{k.default}` " + L["size_note"].format(n=k.default_note[5:])
    if k.default_note:
        return L[k.default_note]
    return f"`{k.default}`"


def anchor(path: str) -> str:
    """The HTML anchor of a table: ``listeners.ssl.<name>.ssl_options`` ->
    ``listeners-ssl-name-ssl_options`` (the whole-file rules: ``whole-file``)."""
    return path.replace("<name>", "name").replace(".", "-") if path else "whole-file"


def _title(t: Table, lang: Lang) -> str:
    if not t.path:
        return _LABELS[lang]["whole"]
    return f"`[[{t.path}]]`" if t.array else f"`[{t.path}]`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(lang: Lang = "en", translations: dict[str, tuple[str, str]] | None = None) -> str:
    """The whole page. Raises :class:`ReferenceError` for undocumented keys and, for ``zh``,
    :class:`TranslationError` for missing or stale translations."""
    ts = tables()
    problems = check_descriptions(ts)
    if problems:
        raise ReferenceError("\n".join(problems))
    zh: dict[str, tuple[str, str]] = {}
    if lang == "zh":
        if translations is None:
            from .reference_zh import ZH

            translations = ZH
        bad = translation_problems(ts, translations)
        if bad:
            raise TranslationError(bad)
        zh = translations

    def tr(tid: str, en: str) -> str:
        return zh[tid][1] if lang == "zh" else en

    L = _LABELS[lang]
    out = [_HEAD[lang], f"## {L['contents']}\n"]
    for t in ts:
        out.append(f"- [{_title(t, lang)}](#{anchor(t.path)})")
    out.append("")
    for t in ts:
        out.append(f'<a id="{anchor(t.path)}"></a>\n')
        out.append(f"## {_title(t, lang)}\n")
        out.append(tr(f"[{t.path}]", t.description))
        notes = []
        if t.array:
            notes.append(L["array"].format(path=t.path))
        if t.optional:
            notes.append(L["optional"])
        if t.aliases:
            notes.append(L["aliases"].format(aliases="], [".join(t.aliases)))
        if t.present:
            notes.append(L["present"].format(tables=", ".join(f"`[{p}]`" for p in t.present)))
        if notes:
            out.append("\n" + " ".join(notes))
        out.append("")
        if t.keys:
            out.append(f"| {L['key']} | {L['type']} | {L['default']} | {L['description']} |")
            out.append("|---|---|---|---|")
            for k in t.keys:
                out.append(f"| `{k.name}` | {_cell(_type_text(k.type, lang))} | "
                           f"{_cell(_default_text(k, lang))} | "
                           f"{_cell(tr(k.path, k.description))} |")
            out.append("")
        if t.rules:
            out.append(L["rules"] + "\n")
            out.extend(f"- `{r}`" for r in t.rules)
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def all_keys() -> list[str]:
    """Every key path (for tests and tools)."""
    return [k.path for t in tables() for k in t.keys]
