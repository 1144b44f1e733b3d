"""The report's HTML pages as Jinja2 templates with autoescaping: class names, titles, reasons and
warnings come from user files, so every value is escaped unless it is built here as markup."""

from __future__ import annotations

from typing import Any

import jinja2

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.better{color:#17692a}.worse{color:#a11}"""

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{{ title }}</title><style>{{ style }}</style></head><body>
{%- macro table(header, rows) -%}
<table><tr>{% for cell in header %}<th>{{ cell }}</th>{% endfor %}</tr>
{%- for row in rows %}<tr>{% for cell in row %}<td>{% if cell is mapping %}<span class="{{ cell.tone }}">{{ cell.text }}</span>{% else %}{{ cell }}{% endif %}</td>{% endfor %}</tr>{% endfor %}</table>
{%- endmacro -%}
{% block body %}{% endblock %}</body></html>
"""

_REPORT = """{% extends "page" %}{% block body -%}
<h1>{{ title }}</h1>
<p>{{ summary }}</p>
<h2>Class distribution, stage by stage</h2>
<img src="plots/class_distribution.png" alt="class distribution per stage">
{{ table(counts.header, counts.rows) }}
<h2>What each stage added and removed</h2>
<img src="plots/stage_changes.png" alt="images added and removed per stage">
{% if changes.rows %}{{ table(changes.header, changes.rows) }}{% else %}<p>No stage added or removed images.</p>{% endif %}
{% if retrieval %}<p>{{ retrieval }}</p>{% endif %}
{% if retrieval_by_class %}<h3>Retrieval precision per class</h3>
<p>Estimated without pool labels; a class keeps its best-ranked candidates while the lower end of the estimate's 90% interval stays at or above <code>min_precision</code>. Reference precision uses the pool's reference labels, which retrieval never read.</p>
{{ table(retrieval_by_class.header, retrieval_by_class.rows) }}{% endif %}
{% if frequency %}<h2>Concept frequency in captions</h2>
<p>{{ frequency.text }}</p>
<img src="plots/concept_frequency.png" alt="concept frequency">
{{ table(frequency.header, frequency.rows) }}{% endif %}
{% if accuracy %}<h2>{{ accuracy.heading }}</h2>
<p>{{ accuracy.text_before }}<code>{{ accuracy.encoders }}</code>{{ accuracy.text_after }}</p>
<img src="plots/bucket_accuracy.png" alt="accuracy per bucket">
{{ table(accuracy.header, accuracy.rows) }}
{% for run in accuracy.runs %}<p><b>{{ run.name }}</b>: loss <code>{{ run.loss }}</code>, sampler <code>{{ run.sampler }}</code>, {{ run.details }}</p>
{% for warning in run.warnings %}<p class="worse">warning: {{ warning }}</p>
{% endfor %}{% endfor %}{% endif %}
{%- endblock %}"""

_PANEL = """{% extends "page" %}{% block body -%}
<h1>{{ title }}</h1>
{% for caption, header, rows in tables %}<h2>{{ caption }}</h2>{{ table(header, rows) }}
{% endfor %}
{%- endblock %}"""

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.DictLoader({"page": _PAGE, "report": _REPORT, "panel": _PANEL}),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def render(template: str, **context: Any) -> str:
    """``template`` ("report" or "panel") filled with ``context``, every value HTML-escaped."""
    return _ENVIRONMENT.get_template(template).render(style=STYLE, **context)
