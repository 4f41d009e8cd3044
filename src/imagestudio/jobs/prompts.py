"""Build the prompt for one image from ``prompt_templates``.

The rule (docs/payload.md):

1. The language suffix is ``_en`` when ``use_english`` is true, else ``_cn``.
2. The parts, in this order, each followed by a blank line:
   ``common_<lang>``; ``main_<lang>`` only for a SKU's main image (its first image in
   ``sku_images_map``); then every ``opt_*_<lang>`` key present, in the order the payload
   lists them.
3. A part missing in the chosen language falls back to the other language's key of the
   same name, so a payload with only ``_cn`` templates still works with ``use_english``.
4. Empty parts are skipped. A payload whose rule yields no text for an image is refused at
   intake (``options.prompt_templates``).
"""

from __future__ import annotations

from collections.abc import Mapping

_LANGS = ("en", "cn")


def _stems(templates: Mapping[str, str]) -> list[str]:
    """Template names without their language suffix, in first-seen order."""
    seen: dict[str, None] = {}
    for key in templates:
        stem, _, lang = key.rpartition("_")
        if stem and lang in _LANGS:
            seen.setdefault(stem, None)
    return list(seen)


def _pick(templates: Mapping[str, str], stem: str, lang: str) -> str:
    other = "cn" if lang == "en" else "en"
    for candidate in (f"{stem}_{lang}", f"{stem}_{other}"):
        text = (templates.get(candidate) or "").strip()
        if text:
            return text
    return ""


def build_prompt(templates: Mapping[str, str], *, use_english: bool, is_main: bool) -> str:
    """The exact prompt sent to the provider for one image."""
    lang = "en" if use_english else "cn"
    stems = _stems(templates)
    order = ["common"] + (["main"] if is_main else [])
    order += [s for s in stems if s.startswith("opt_")]
    parts = [_pick(templates, stem, lang) for stem in order]
    return "\n\n".join(p for p in parts if p)
