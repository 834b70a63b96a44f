# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

"""Write the Markdown reference of every module and role from their own documentation.

The text comes from `ansible-doc --json` (DOCUMENTATION, EXAMPLES, RETURN of modules,
meta/argument_specs.yml of roles), so nothing is written twice by hand; Ansible's
markup (O(), V(), C(), ...) is rendered by antsibull-docs-parser. Markdown, because
the reference is read on the code host, whose RST renderer drops the raw HTML tables
that antsibull-docs' RST output relies on.

Usage: module_reference.py COLLECTION DEST_DIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t

from antsibull_docs_parser import dom
from antsibull_docs_parser.format import LinkProvider
from antsibull_docs_parser.md import to_md
from antsibull_docs_parser.parser import Context, parse

Doc = t.Dict[str, t.Any]


def ansible_doc(*arguments: str) -> Doc:
    command = ["ansible-doc", "--json", *arguments]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def as_list(value: t.Any) -> list[t.Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def page_name(fqcn: str, plugin_type: str) -> str:
    """`<name>.md` for a module, `<name>_role.md` for a role (a role may share a module's name)."""
    name = fqcn.rsplit(".", 1)[1]
    return "%s.md" % name if plugin_type == "module" else "%s_%s.md" % (name, plugin_type)


def anchor(kind: str, path: list[str]) -> str:
    return "%s-%s" % (kind, "--".join(path))


class Links(LinkProvider):
    """Links to this collection's pages and to the options and return values on them."""

    def __init__(self, collection: str):
        self.collection = collection

    def plugin_link(self, plugin: dom.PluginIdentifier) -> str | None:
        if plugin.fqcn.rsplit(".", 1)[0] != self.collection or plugin.type not in ("module", "role"):
            return None
        return page_name(plugin.fqcn, plugin.type)

    def plugin_option_like_link(
        self,
        plugin: dom.PluginIdentifier,
        entrypoint: str | None,
        what: t.Literal["option", "retval"],
        name: list[str],
        current_plugin: bool,
    ) -> str | None:
        kind = "parameter" if what == "option" else "return"
        prefix = [entrypoint] if entrypoint else []
        target = "#" + anchor(kind, prefix + name)
        if current_plugin:
            return target
        page = self.plugin_link(plugin)
        return page + target if page else None


class Renderer:
    """Markdown for one module or role entry point; markup is resolved in its context."""

    def __init__(self, fqcn: str, plugin_type: str, collection: str, entrypoint: str | None = None):
        self.plugin = dom.PluginIdentifier(fqcn=fqcn, type=plugin_type)
        self.context = Context(current_plugin=self.plugin, role_entrypoint=entrypoint)
        self.links = Links(collection)
        self.entrypoint = entrypoint

    def text(self, value: t.Any, separator: str = "\n\n") -> str:
        paragraphs = parse(as_list(value), self.context, errors="exception")
        return to_md(paragraphs, link_provider=self.links, current_plugin=self.plugin, par_sep=separator)

    def cell(self, value: t.Any) -> str:
        """Text for a table cell: one line, paragraphs separated by line breaks."""
        return self.text(value, separator="<br>").replace("\n", " ")

    def bullets(self, value: t.Any) -> list[str]:
        return ["- " + self.text(item).replace("\n", "\n  ") for item in as_list(value)]

    def option_rows(self, options: Doc) -> t.Iterator[str]:
        return self._rows("parameter", options, [], self.option_cell, "suboptions", "options")

    def return_rows(self, values: Doc) -> t.Iterator[str]:
        return self._rows("return", values, [], self.return_cell, "contains")

    def _rows(
        self, kind: str, specs: Doc, parents: list[str], details: t.Callable[[Doc], str], *nested_keys: str
    ) -> t.Iterator[str]:
        """One table row per entry, each followed by the rows of its nested entries."""
        for name in sorted(specs):
            spec = specs[name]
            path = [*parents, name]
            yield "| %s | %s | %s |" % (self.name_cell(kind, path, spec), self.type_cell(spec), details(spec))
            nested = next((spec[key] for key in nested_keys if spec.get(key)), {})
            yield from self._rows(kind, nested, path, details, *nested_keys)

    def name_cell(self, kind: str, path: list[str], spec: Doc) -> str:
        prefix = [self.entrypoint] if self.entrypoint else []
        name = '<a id="%s"></a>`%s`' % (anchor(kind, prefix + path), ".".join(path))
        if spec.get("required"):
            name += " (required)"
        if spec.get("aliases"):
            name += "<br>aliases: " + ", ".join("`%s`" % alias for alias in spec["aliases"])
        return name

    @staticmethod
    def type_cell(spec: Doc) -> str:
        kind = spec.get("type", "str")
        if spec.get("elements"):
            kind += " of %s" % spec["elements"]
        return kind

    def option_cell(self, spec: Doc) -> str:
        parts = [self.cell(spec.get("description"))]
        if spec.get("choices"):
            parts.append("Choices: " + ", ".join(literal(choice) for choice in as_list(spec["choices"])))
        if spec.get("default") is not None:
            parts.append("Default: " + literal(spec["default"]))
        if spec.get("version_added"):
            parts.append("Added in %s." % spec["version_added"])
        return "<br>".join(parts)

    def return_cell(self, spec: Doc) -> str:
        parts = [self.cell(spec.get("description"))]
        if spec.get("returned"):
            parts.append("Returned: " + self.cell(spec["returned"]))
        if spec.get("sample") is not None:
            parts.append("Sample: " + literal(spec["sample"]))
        return "<br>".join(parts)

    def attribute_rows(self, attributes: Doc) -> t.Iterator[str]:
        for name in sorted(attributes):
            spec = attributes[name]
            details = [self.cell(spec.get("description"))]
            if spec.get("details"):
                details.append(self.cell(spec["details"]))
            if spec.get("membership"):
                details.append("Action groups: " + ", ".join("`%s`" % group for group in as_list(spec["membership"])))
            yield "| `%s` | %s | %s |" % (name, spec.get("support", ""), "<br>".join(details))


def literal(value: t.Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return "`%s`" % text.replace("|", "\\|")


def table(header: str, rows: t.Iterable[str]) -> list[str]:
    columns = header.count("|") - 1
    return [header, "|" + "---|" * columns, *rows, ""]


def options_section(renderer: Renderer, options: Doc, title: str = "## Parameters") -> list[str]:
    if not options:
        return []
    return [title, "", *table("| Parameter | Type | Comments |", renderer.option_rows(options))]


def module_page(fqcn: str, collection: str) -> str:
    entry = ansible_doc("-t", "module", fqcn)[fqcn]
    doc, returns = entry["doc"], entry.get("return") or {}
    renderer = Renderer(fqcn, "module", collection)
    lines = ["# %s" % fqcn, "", renderer.text(doc.get("short_description")), ""]
    if doc.get("version_added"):
        lines += ["New in %s %s." % (collection, doc["version_added"]), ""]
    lines += ["## Synopsis", "", *renderer.bullets(doc.get("description")), ""]
    if doc.get("requirements"):
        lines += [
            "## Requirements",
            "",
            "On the host that runs the module:",
            "",
            *renderer.bullets(doc["requirements"]),
            "",
        ]
    lines += options_section(renderer, doc.get("options") or {})
    if doc.get("attributes"):
        lines += [
            "## Attributes",
            "",
            *table("| Attribute | Support | Description |", renderer.attribute_rows(doc["attributes"])),
        ]
    if doc.get("notes"):
        lines += ["## Notes", "", *renderer.bullets(doc["notes"]), ""]
    if entry.get("examples"):
        lines += ["## Examples", "", "```yaml", entry["examples"].strip("\n"), "```", ""]
    if returns:
        lines += ["## Return values", "", *table("| Key | Type | Description |", renderer.return_rows(returns))]
    lines += ["## Authors", "", *("- " + author for author in as_list(doc.get("author")))]
    return "\n".join(lines) + "\n"


def role_page(fqcn: str, collection: str) -> str:
    entry_points = ansible_doc("-t", "role", fqcn)[fqcn]["entry_points"]
    lines = ["# %s" % fqcn, ""]
    for name in sorted(entry_points, key=lambda point: (point != "main", point)):
        doc = entry_points[name]
        renderer = Renderer(fqcn, "role", collection, entrypoint=name)
        lines += ["## Entry point `%s`: %s" % (name, renderer.text(doc.get("short_description"))), ""]
        if doc.get("description"):
            lines += [*renderer.bullets(doc["description"]), ""]
        lines += options_section(renderer, doc.get("options") or {}, title="### Parameters")
    return "\n".join(lines) + "\n"


def index_page(collection: str, listings: dict[str, Doc]) -> str:
    lines = [
        "# %s reference" % collection,
        "",
        "Generated by `make docs` from each module's and role's own documentation; do not edit by hand.",
        "The same text is shown by `ansible-doc %s.<name>` (`ansible-doc -t role ...` for roles)." % collection,
        "",
    ]
    for plugin_type, fqcns in listings.items():
        if fqcns:
            rows = ("| [%s](%s) | %s |" % (fqcn, page_name(fqcn, plugin_type), fqcns[fqcn]) for fqcn in sorted(fqcns))
            lines += ["## %ss" % plugin_type.capitalize(), "", *table("| Name | Description |", rows)]
    return "\n".join(lines).rstrip("\n") + "\n"


def role_summary(listing: Doc) -> str:
    """A role's one-line description: that of its `main` entry point, else of its first."""
    entry_points = listing.get("entry_points") or {}
    return entry_points.get("main") or next(iter(entry_points.values()), "")


def write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(text)


def main(collection: str, destination: str) -> None:
    modules = ansible_doc("--list", "-t", "module", collection)
    roles = {fqcn: role_summary(entry) for fqcn, entry in ansible_doc("--list", "-t", "role", collection).items()}
    os.makedirs(destination, exist_ok=True)
    for fqcn in modules:
        write(os.path.join(destination, page_name(fqcn, "module")), module_page(fqcn, collection))
    for fqcn in roles:
        write(os.path.join(destination, page_name(fqcn, "role")), role_page(fqcn, collection))
    write(os.path.join(destination, "README.md"), index_page(collection, {"module": modules, "role": roles}))


if __name__ == "__main__":
    main(*sys.argv[1:])
