"""The POST forms of a rendered page, as a browser would submit them: action, field names, default values."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

UNSENT_INPUTS = {"submit", "button", "reset", "image", "file"}


@dataclass
class HtmlForm:
    """A <form method="post">: where it posts, what it sends by default, and the names a user can fill in."""

    action: str
    defaults: dict[str, list[str]] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)  # fillable fields, in page order
    kinds: dict[str, str] = field(default_factory=dict)  # name -> input type, "select" or "textarea"
    buttons: dict[str, str] = field(default_factory=dict)  # named submit buttons (e.g. "delete")

    def add(self, name: str, value: str | None, kind: str) -> None:
        if name not in self.fields:
            self.fields.append(name)
            self.defaults[name] = []
            self.kinds[name] = kind
        if value is not None:
            self.defaults[name].append(value)


class _Collector(HTMLParser):
    def __init__(self, page_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.page_url = page_url
        self.forms: list[HtmlForm] = []
        self.form: HtmlForm | None = None
        self.select: str | None = None
        self.first_option: str | None = None
        self.selected = False
        self.textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {key: value or "" for key, value in attrs}
        if tag == "form":
            if a.get("method", "get").lower() == "post":
                self.form = HtmlForm(action=urljoin(self.page_url, a.get("action") or self.page_url))
                self.forms.append(self.form)
            return
        if self.form is None or "name" not in a:
            if tag == "option" and self.select:
                self._option(a)
            return
        name, kind = a["name"], a.get("type", "text").lower()
        if (tag == "input" and kind in UNSENT_INPUTS) or tag == "button":
            if kind in {"submit", "image"} or tag == "button":
                self.form.buttons[name] = a.get("value", "")
            return
        if tag == "input":
            checked = kind not in {"checkbox", "radio"} or "checked" in a
            self.form.add(name, a.get("value", "on" if kind == "checkbox" else "") if checked else None, kind)
        elif tag == "select":
            self.form.add(name, None, tag)
            self.select, self.first_option, self.selected = name, None, False
        elif tag == "textarea":
            self.form.add(name, None, tag)
            self.textarea = name
            self.form.defaults[name].append("")

    def _option(self, a: dict[str, str]) -> None:
        value = a.get("value", "")
        if self.first_option is None:
            self.first_option = value
        if "selected" in a:
            self.form.defaults[self.select].append(value)
            self.selected = True

    def handle_data(self, data: str) -> None:
        if self.form is not None and self.textarea:
            self.form.defaults[self.textarea][-1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.form = None
        elif tag == "select" and self.select:
            if not self.selected and self.first_option is not None and self.form is not None:
                self.form.defaults[self.select].append(self.first_option)  # a browser sends the first option
            self.select = None
        elif tag == "textarea":
            self.textarea = None


def post_forms(html: str, page_url: str) -> list[HtmlForm]:
    """Every <form method="post"> of the page."""
    collector = _Collector(page_url)
    collector.feed(html)
    return collector.forms
