"""The report's HTML pages as Jinja2 templates with autoescaping: class names, titles, reasons and
warnings come from user files, so every value is escaped unless it is built here as markup."""

from __future__ import annotations

from typing import Any

import jinja2

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 8px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.better{color:#17692a}.worse{color:#a11}.scroll{overflow-x:auto}
.tiles{display:flex;flex-wrap:wrap;gap:8px;margin-bottom:1em}.pair{display:flex;gap:2px;border:1px dashed #999;padding:2px}
.tile{margin:0;width:112px;font-size:11px;overflow-wrap:anywhere}.tile img{display:block;width:96px;height:auto;image-rendering:pixelated}
.tile span{display:block}.flagged img{outline:3px solid #a11}.noimg{width:96px;padding:8px 0;background:#eee;text-align:center}
h4{margin:.6em 0 .3em;font-weight:normal}"""

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>{{ title }}</title><style>{{ style }}</style></head><body>
{%- macro table(header, rows) -%}
<div class="scroll"><table><tr>{% for cell in header %}<th>{{ cell }}</th>{% endfor %}</tr>
{%- for row in rows %}<tr>{% for cell in row %}<td>{% if cell is mapping %}<span class="{{ cell.tone }}">{{ cell.text }}</span>{% else %}{{ cell }}{% endif %}</td>{% endfor %}</tr>{% endfor %}</table></div>
{%- endmacro -%}
{%- macro tile(t, prefix) -%}
<figure class="tile{% if t.warning %} flagged{% endif %}">{% if t.thumbnail %}<img src="{{ prefix }}{{ t.thumbnail }}" alt="{{ t.lines[0] }}">{% else %}<div class="noimg">no pixels</div>{% endif %}<figcaption>
{%- for line in t.lines if line %}<span>{{ line }}</span>{% endfor %}{% if t.warning %}<span class="worse">{{ t.warning }}</span>{% endif %}</figcaption></figure>
{%- endmacro -%}
{%- macro gallery_classes(classes, prefix) -%}
{% for c in classes %}<section id="{{ c.anchor }}"><h3>{{ c.name }} <small>({{ c.bucket }})</small></h3>
{% for s in c.sections %}<h4>{{ s.kind|capitalize }}: {{ s.tiles|length }} of {{ s.total }} shown, {{ s.note }}</h4>
<div class="tiles">{% for t in s.tiles %}{% if t.beside %}<div class="pair">{{ tile(t, prefix) }}{{ tile(t.beside, prefix) }}</div>{% else %}{{ tile(t, prefix) }}{% endif %}{% endfor %}</div>
{% endfor %}</section>
{% endfor %}
{%- endmacro -%}
{%- macro gallery_section(gallery, prefix) -%}
<h2 id="gallery">Gallery: what was added and removed, per class</h2>
<p>Classes in order of need (rare first, then the least precise retrieval); in each, the least confident rows first, at most {{ gallery.cap }} of a kind. A red frame marks a retrieved image whose pool reference label names another class, or a rare-class test error the baseline got right.
{%- if gallery.more %} {{ gallery.first_page|length }} of {{ gallery.class_count }} classes are on this page: <a href="{{ prefix }}gallery/index.html">every class</a>.{% endif %}</p>
{{ gallery_classes(gallery.first_page, prefix) }}
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
{% if caption_funnel %}<h3>Caption retrieval per class</h3>
<p>{{ caption_funnel.text }} In the gallery, such a row's query is the form its caption matched and its score its T2T.</p>
{{ table(caption_funnel.header, caption_funnel.rows) }}{% endif %}
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
{% if gallery and gallery.class_count %}{{ gallery_section(gallery, "") }}{% endif %}
{%- endblock %}"""

_GALLERY_PAGE = """{% extends "page" %}{% block body -%}
<p><a href="../report.html">report</a> · <a href="index.html">every class</a></p>
<h1>{{ title }}</h1>
{{ gallery_classes(classes, "../") }}
{%- endblock %}"""

_GALLERY_INDEX = """{% extends "page" %}{% block body -%}
<p><a href="../report.html">report</a></p>
<h1>{{ title }}</h1>
<p>Every class with something to show, in order of need; at most {{ cap }} images of a kind per class.</p>
<div class="scroll"><table><tr><th>class</th><th>bucket</th>{% for kind in kinds %}<th>{{ kind }}</th>{% endfor %}</tr>
{%- for row in rows %}<tr><td><a href="{{ row.href }}">{{ row.name }}</a></td><td>{{ row.bucket }}</td>{% for count in row.counts %}<td>{{ count }}</td>{% endfor %}</tr>{% endfor %}</table></div>
{%- endblock %}"""

_PANEL = """{% extends "page" %}{% block body -%}
<h1>{{ title }}</h1>
{% for caption, header, rows in tables %}<h2>{{ caption }}</h2>{{ table(header, rows) }}
{% endfor %}
{% if gallery and gallery.class_count %}{{ gallery_section(gallery, gallery_prefix) }}
<p>From the seed-0 run of <code>{{ gallery_run }}</code>; its <a href="{{ gallery_prefix }}report.html">report</a>.</p>{% endif %}
{%- endblock %}"""

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.DictLoader(
        {
            "page": _PAGE,
            "report": _REPORT,
            "panel": _PANEL,
            "gallery_page": _GALLERY_PAGE,
            "gallery_index": _GALLERY_INDEX,
        }
    ),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def render(template: str, **context: Any) -> str:
    """``template`` ("report", "panel", "gallery_page" or "gallery_index") filled with ``context``,
    every value HTML-escaped."""
    return _ENVIRONMENT.get_template(template).render(style=STYLE, **context)
