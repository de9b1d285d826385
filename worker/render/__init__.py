"""Message rendering: Jinja2 templates with the i18n extension and Babel catalogs.

One template per kind under ``templates/``, each with the blocks ``subject``,
``text`` and ``body`` (the HTML inside the shared email layout). Catalogs are the
``.po`` files under ``locale/``, read at start (no compile step).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import gettext
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from babel import Locale, dates, numbers
from babel.messages.pofile import read_po
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.ext import Extension
from jinja2.lexer import Token, TokenStream
from markupsafe import Markup, escape

try:
    from markupsafe import _escape_inner as _escape_str  # markupsafe 3: escape's C core
except ImportError:  # pragma: no cover (markupsafe 2)
    _escape_str = escape

from worker.domain.sms import segments

HERE = Path(__file__).resolve().parent
CATALOGS = ("en", "zh_CN", "zh_TW")
ZONE = "_zone"  # in a render's context: the zone its times are shown in
_WORD = re.compile(r'\bw\["([^"]*)"\]')  # a fixed string of a page: see _FixedWords
_TRADITIONAL = ("zh-tw", "zh-hk", "zh-mo", "zh-hant")
# Kinds with a template of their own; the others share NOTICE (pages and partials aside),
# which has the words they share (_messages.j2's macros) as `m`.
NOTICE, SHARED_WORDS = "_notice.j2", "_messages.j2"
_OWN_TEMPLATE = frozenset(p.stem for p in (HERE / "templates").glob("[a-z]*.j2") if p.stem.isidentifier())
CARRIER_NAMES = {
    "sf-express": {"en": "SF Express", "zh_CN": "顺丰速运", "zh_TW": "順豐速運"},
    "zto": {"en": "ZTO Express", "zh_CN": "中通快递", "zh_TW": "中通快遞"},
    "yto": {"en": "YTO Express", "zh_CN": "圆通速递", "zh_TW": "圓通速遞"},
    "sto": {"en": "STO Express", "zh_CN": "申通快递", "zh_TW": "申通快遞"},
    "yunda": {"en": "Yunda Express", "zh_CN": "韵达快递", "zh_TW": "韻達快遞"},
    "jd": {"en": "JD Logistics", "zh_CN": "京东物流", "zh_TW": "京東物流"},
    "ems": {"en": "EMS", "zh_CN": "中国邮政 EMS", "zh_TW": "中國郵政 EMS"},
    "ups": {"en": "UPS"}, "fedex": {"en": "FedEx"}, "dhl": {"en": "DHL"}, "usps": {"en": "USPS"},
    "chunghwa-post": {"en": "Chunghwa Post", "zh_TW": "中華郵政", "zh_CN": "中华邮政"},
}


def catalog_locale(tag: str | None, fallback: str = "en") -> str:
    """Map a BCP 47 tag (``zh-CN``, ``zh-Hant-HK``, ``en-GB``…) to one of our catalogs."""
    t = (tag or "").replace("_", "-").lower()
    if t.startswith("zh"):
        return "zh_TW" if t.startswith(_TRADITIONAL) else "zh_CN"
    if t.startswith("en"):
        return "en"
    return catalog_locale(fallback) if fallback and fallback != tag else "en"


@dataclass(frozen=True, slots=True)
class Content:
    subject: str
    text: str
    html: str
    short: str = ""  # the news in a line or two, for SMS, push and the in-app inbox

    def as_dict(self) -> dict[str, str]:
        return {"subject": self.subject, "text": self.text, "html": self.html}


def render(kind: str, locale: str, timezone: str, facts: dict[str, Any], *,
           whole: bool = True) -> Content:
    """Render one notification in the catalog ``locale`` (see :func:`catalog_locale`), times
    in ``timezone``. ``whole=False`` renders the subject and the short line only: all that
    the channels but email carry (:func:`for_channel`), and the HTML page is most of a
    render's cost."""
    name = f"{kind}.j2" if kind in _OWN_TEMPLATE else NOTICE
    plain = _environment(locale, False).get_template(name)
    facts = {"variant": None, **facts, "kind": kind, ZONE: _zone(timezone)}
    context = _context(plain, facts)  # one for the template's blocks: they only read it
    subject = _block(plain, "subject", context)
    short = _one_line(_block(plain, "short", context))
    if not whole:
        return Content(subject=subject, text="", html="", short=short)
    html = _environment(locale, True)
    template = html.get_template(name)
    body = Markup(_block(template, "body", _context(template, facts)))  # already escaped
    page = html.get_template("_layout.html.j2").render(facts, body=body, subject=subject)
    return Content(subject=subject, text=_block(plain, "text", context) + "\n", html=page,
                   short=short)


def prepare() -> None:
    """Compile every message template of every language now: compiled on first use, they
    made the first notifications after a start wait some 300 ms (30 to 60 ms a template
    and language)."""
    messages = (SHARED_WORDS, NOTICE, *(f"{kind}.j2" for kind in _OWN_TEMPLATE))
    for locale in CATALOGS:
        for html in (False, True):
            env = _environment(locale, html)
            for name in (*messages, "_layout.html.j2") if html else messages:
                env.get_template(name)


def page(template: str, locale: str, timezone: str, context: dict[str, Any]) -> str:
    """A web page (the tracking page) in the catalog ``locale``, times in ``timezone``."""
    page, _, rendering = _page_context(template, locale, timezone, context)
    return "".join(page.root_render_func(rendering))


def page_blocks(template: str, locale: str, timezone: str,
                blocks: Iterable[tuple[str, dict[str, Any]]]) -> list[str]:
    """Blocks of a web page, each as the whole page has it, given its own variables."""
    page, variables, rendering = _page_context(template, locale, timezone, {})
    texts = []
    for block, own in blocks:
        variables.update(own)  # the context's own: it was made with them shared
        texts.append("".join(page.blocks[block](rendering)))
    return texts


def _page_context(template: str, locale: str, timezone: str, context: dict[str, Any]
                  ) -> tuple[jinja2.Template, dict[str, Any], jinja2.runtime.Context]:
    page = _page_template(template, locale)
    # The context as Jinja would build it, without copying its globals through a ChainMap:
    # a tenth of a page's render.
    variables = {**page.environment.globals, **context, ZONE: _zone(timezone)}
    return page, variables, page.new_context(variables, shared=True)


@functools.cache
def _page_template(template: str, locale: str) -> jinja2.Template:
    return _environment(locale, True).get_template(template)


def style_hashes(*templates: str) -> str:
    """The stylesheets of web page templates, as a Content-Security-Policy's hash sources:
    the pages' own styles apply, and no other (no ``'unsafe-inline'``). A stylesheet holds
    no template code, so its text is the page's, byte for byte."""
    styles = [css for name in templates
              for css in re.findall(r"<style>(.*?)</style>", (HERE / "templates" / name).read_text(), re.S)]
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()}'"
                    for css in styles)


def translate(locale: str, message: str) -> str:
    return _translations(locale).gettext(message)


def _one_line(text: str) -> str:
    """Lines joined by a space, except after Chinese punctuation, which needs none."""
    return re.sub(r"(?<=[。！？，：）】]) ", "", " ".join(text.split()))


def _context(template: jinja2.Template, facts: dict[str, Any]) -> jinja2.runtime.Context:
    """A message's context; the shared words' macros (``m``) imported into it once, not
    in each block (an import with context is compiled into a module on every import)."""
    if template.name == NOTICE:
        words = template.environment.get_template(SHARED_WORDS).make_module(facts)
        facts = {**facts, "m": words}
    return template.new_context(facts)


def _block(template: jinja2.Template, block: str, context: jinja2.runtime.Context) -> str:
    return "".join(template.blocks[block](context)).strip()


class _PoTranslations(gettext.NullTranslations):
    def __init__(self, messages: dict[str, str]) -> None:
        super().__init__()
        self._messages = messages

    def gettext(self, message: str) -> str:
        return self._messages.get(message) or message

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self.gettext(singular if n == 1 else plural)


@functools.cache
def _translations(locale: str) -> gettext.NullTranslations:
    po = HERE / "locale" / locale / "LC_MESSAGES" / "messages.po"
    if not po.is_file():
        return gettext.NullTranslations()
    with po.open("rb") as fp:
        catalog = read_po(fp, locale=locale)
    return _PoTranslations({m.id: m.string for m in catalog if m.id and m.string and not m.fuzzy})


@functools.cache
def _environment(locale: str, html: bool) -> jinja2.Environment:
    """One environment per language and output kind (each compiles its templates once);
    HTML output is autoescaped. The zone times are shown in comes with each render."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        extensions=["jinja2.ext.i18n", _FixedWords, _TranslatedCalls],
        autoescape=html,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        auto_reload=False,  # templates ship with the code; no file check on every render
    )
    env.template_class = _Template
    env.code_generator_class = _Subscripts
    env.install_gettext_translations(_translations(locale), newstyle=True)  # type: ignore[attr-defined]
    clock = _Clock(Locale.parse(locale))
    env.filters["date"] = jinja2.pass_context(lambda context, value: clock.day(_at(value, context[ZONE])))
    env.filters["datetime"] = jinja2.pass_context(lambda context, value: clock.moment(_at(value, context[ZONE])))
    env.filters["money"] = lambda m: numbers.format_currency(
        Decimal(m["amount"]), m["currency"], locale=locale
    )
    env.filters["carrier"] = lambda slug: CARRIER_NAMES.get(slug, {}).get(
        locale, CARRIER_NAMES.get(slug, {}).get("en", slug))
    env.globals["locale"], env.globals["lang"] = locale, locale.replace("_", "-")
    return env


class _Template(jinja2.Template):
    """A compiled template whose ``{{ }}`` escape without wrapping each value in a
    ``Markup``: a compiled template only joins what it escapes into its output (``yield
    escape(...)``, or a buffer joined and wrapped once), and building a ``Markup`` is most
    of an escape's cost (a tracking page escapes some eighty values: a sixth of drawing
    it). The text is markupsafe's, byte for byte."""

    @classmethod
    def from_code(cls, environment: jinja2.Environment, code: Any, globals: Any,
                  uptodate: Any = None) -> jinja2.Template:
        template = super().from_code(environment, code, globals, uptodate)
        template.root_render_func.__globals__["escape"] = _escape_text
        return template


class _Subscripts(CodeGenerator):
    """``x["name"]`` compiled to a subscript instead of a call of ``environment.getitem``,
    which looks for an attribute when the key is missing: the pages read their dicts' keys
    this way, some 120 a tracking page, and the dicts have them all (the messages read
    attributes, ``shop.name``, which stay Jinja's)."""

    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        if not (isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str)):
            return super().visit_Getitem(node, frame)
        self.visit(node.node, frame)
        self.write("[")
        self.visit(node.arg, frame)
        self.write("]")


def _escape_text(value: Any) -> str:
    return _escape_str(value) if type(value) is str else escape(value)


class _Clock:
    """Dates and times as a language writes them: a day (``December 1, 2026``, ``2026年12月1日``)
    and a moment (``Dec 1, 2026, 8:05 PM``). Babel takes some 15 µs a moment and a page
    shows a dozen, most new to the process; days and minutes of the day repeat, so each is
    written by Babel once and a moment is put together from the two."""

    def __init__(self, locale: Locale) -> None:
        self.joined = str(locale.datetime_formats["medium"]).replace("'", "")
        self._long_day = functools.lru_cache(4096)(
            lambda day: dates.format_date(day, "long", locale=locale))
        self._medium_day = functools.lru_cache(4096)(
            lambda day: dates.format_date(day, "medium", locale=locale))
        self._minute = functools.lru_cache(2048)(
            lambda hour, minute: dates.format_time(time(hour, minute), "short", locale=locale))

    def day(self, at: datetime) -> str:
        return self._long_day(at.date())

    def moment(self, at: datetime) -> str:
        return self.joined.format(self._minute(at.hour, at.minute), self._medium_day(at.date()))


class _FixedWords(Extension):
    """``w["Tracking history"]`` in a page's template: a fixed string, translated when the
    template is compiled, once per language. The compiled page then holds the words as
    text, already escaped, instead of looking each up and escaping it on every render (a
    page renders thousands of times; the i18n extension's ``_()`` costs a call each time)."""

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        words = _translations(self.environment.globals["locale"])
        return _WORD.sub(lambda m: json.dumps(words.gettext(m.group(1)), ensure_ascii=False), source)


class _TranslatedCalls(Extension):
    """``_("Hi %(name)s,", name=customer.name)`` in a message's template, translated once,
    when the template is compiled, into ``("Hi %(name)s,"|safe) % {"name": customer.name}``
    in HTML (the words as written, the values escaped) and ``("Hi %(name)s," % {...})`` in
    plain text: what the i18n extension's ``_()`` gives, without its two context calls on
    every render (a third of rendering a message)."""

    def filter_stream(self, stream: TokenStream) -> Iterator[Token]:
        words = _translations(self.environment.globals["locale"])
        tokens = list(stream)
        i = 0
        while i < len(tokens):
            if not (tokens[i].test("name:_") and i + 2 < len(tokens)
                    and tokens[i + 1].type == "lparen" and tokens[i + 2].type == "string"):
                yield tokens[i]
                i += 1
                continue
            line, i = tokens[i].lineno, i + 2
            message = ""
            while tokens[i].type == "string":  # adjacent literals make one string, as in Jinja
                message += tokens[i].value
                i += 1
            yield from self._formatted(line, words.gettext(message))
            depth, first = 0, True
            while depth or tokens[i].type != "rparen":  # keyword arguments become a dict's items
                kind = tokens[i].type
                if not depth and kind == "comma" and tokens[i + 2].type == "assign":
                    if not first:
                        yield tokens[i]
                    first = False
                    yield Token(line, "string", tokens[i + 1].value)
                    yield Token(line, "colon", ":")
                    i += 3
                    continue
                depth += kind in ("lparen", "lbracket", "lbrace")
                depth -= kind in ("rparen", "rbracket", "rbrace")
                yield tokens[i]
                i += 1
            yield Token(line, "rbrace", "}")
            yield Token(line, "rparen", ")")
            i += 1

    def _formatted(self, line: int, text: str) -> Iterator[Token]:
        """``(Markup(text) % {`` in HTML, ``(text % {`` in plain text."""
        yield Token(line, "lparen", "(")
        yield Token(line, "string", text)
        if self.environment.autoescape:
            yield Token(line, "pipe", "|")
            yield Token(line, "name", "safe")
        yield Token(line, "mod", "%")
        yield Token(line, "lbrace", "{")


@functools.lru_cache(1024)  # names come with the customers: bounded
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


def _at(value: str | datetime, zone: ZoneInfo) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment.astimezone(zone)


def for_channel(channel: str, content: Content, order_id: str, tracking_url: str,
                wechat_template_id: str) -> dict[str, Any]:
    """What each channel carries: email the whole message; SMS the news and the link, in
    two segments where it can; WeChat its template's fields; the rest a title and a line."""
    if channel == "email":
        return content.as_dict()
    if channel == "sms":
        text = f"{content.short} {tracking_url}"
        if segments(text).count > 2:
            text = f"{content.subject} {tracking_url}"
        return {"text": text}
    if channel == "wechat":
        return {"template_id": wechat_template_id, "text": content.short, "data": {
            "first": {"value": content.subject}, "keyword1": {"value": order_id},
            "keyword2": {"value": content.short}}}
    return {"subject": content.subject, "text": content.short}
