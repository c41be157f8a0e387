"""Prompt templates: the sentences each query name is put in before the text tower encodes it.

Plain data, with no torch: settings, identities and job files carry them, and
a worker never needs the file they were read from. `{}` stands for the name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from .errors import UserError
from .vocabulary import read_small_text, spans_lines

# The authors' list: the 80 OpenAI ImageNet templates (open_clip's OPENAI_IMAGENET_TEMPLATES), in their order.
REFERENCE_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

NAMED_TEMPLATES: dict[str, tuple[str, ...]] = {
    "reference": REFERENCE_TEMPLATES,
    "single": ("a photo of a {}.",),
}

# A templates file is a few kB of sentences; like a vocabulary file, anything larger is a mistake.
MAX_TEMPLATES_FILE_BYTES = 1 << 20


class TemplatesError(UserError, ValueError):
    """Templates that cannot be used: none, a template without exactly one `{}`, or an unreadable file."""


def template_problem(template: str) -> str | None:
    """Why `template` cannot hold a name, or None: it needs exactly one `{}` and must be one line."""
    if spans_lines(template):
        return f"{template!r} has a line break or control character"
    count = template.count("{}")
    if count != 1:
        return f"{template!r} has {count} {{}} (it needs exactly one, where the name goes)"
    return None


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """The template strings of a named set ("reference", "single") or of a list given as is."""
    return NAMED_TEMPLATES[templates] if isinstance(templates, str) else tuple(templates)


def templates_fingerprint(templates: str | Sequence[str]) -> str:
    """Short sha256 of the templates, one per line: equal templates, equal fingerprint, however named."""
    return hashlib.sha256("\n".join(resolve_templates(templates)).encode()).hexdigest()[:16]


def read_templates(path: str | Path) -> tuple[str, ...]:
    """One template per line (spaces around it stripped, blank lines skipped); a UTF-8 file of at most 1 MiB."""
    text = read_small_text(Path(path), MAX_TEMPLATES_FILE_BYTES, "templates file", TemplatesError)
    templates = []
    for number, line in enumerate(text.splitlines(), start=1):
        template = line.strip()
        if not template:
            continue
        problem = template_problem(template)
        if problem:
            raise TemplatesError(f"templates file {path} line {number}: {problem}")
        templates.append(template)
    if not templates:
        raise TemplatesError(f"templates file {path} is empty: it needs at least one template")
    return tuple(templates)
