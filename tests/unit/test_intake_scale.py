"""Intake of big payloads: the per-image work is the same as before, done cheaper (a URL
fast path that agrees with ``urlsplit``, the two prompts built once)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from imagestudio.errors import PayloadInvalid
from imagestudio.jobs.intake import IntakeLimits, build_job_spec, host_problem, parse_payload
from imagestudio.jobs.prompts import build_prompt
from testkit.payloads import batch_payload

URLS = [
    "https://cdn.example.com/a.jpg",
    "http://127.0.0.1:9/samples/1.jpg",
    "HTTPS://CDN.example.com/x?y=1#z",
    "  https://cdn.example.com/padded.jpg  ",
    "https://user:pw@cdn.example.com/a.jpg",
    "https://[2001:db8::1]:8443/a.jpg",
    "https://cdn.example.com:notaport/a.jpg",
    "https://cdn-.example.com",
    "https://-cdn.example.com/a",
    "https://cdn.example.com",
    "https://cdn.example.com?q",
    "https://",
    "https:///path",
    "https://:80/a",
    "ftp://cdn.example.com/a.jpg",
    "cdn.example.com/a.jpg",
    "javascript:alert(1)",
    "https://cdn.example.com\n/a.jpg",
    "https://a..b/a.jpg",
    "https://cdn.example.com:99999/a.jpg",
    "https://cdn.example.com:65535/a.jpg",
    "https://" + "a" * 64 + ".example.com/a.jpg",
    "https://bücher.example/a.jpg",
    "",
]


def _accepted(url: str) -> bool:
    """The rule without the fast path: ``urlsplit`` parses every URL, which needs an http(s)
    scheme, a valid host name and port, and no credentials."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and "@" not in parts.netloc
        and port != 0
        and host_problem(parts.hostname or "") is None
    )


@pytest.mark.parametrize("url", URLS)
def test_a_source_url_is_judged_as_urlsplit_judges_it(url: str) -> None:
    raw = batch_payload("https://api.example.com", "j", images_per_sku=(1,))
    raw["options"]["sku_images_map"]["SKU1"][0]["url"] = url
    if _accepted(url):
        spec = build_job_spec(parse_payload(raw), user_id="u", limits=IntakeLimits())
        assert spec.images[0].source_url == url.strip()
    else:
        with pytest.raises(PayloadInvalid) as caught:
            build_job_spec(parse_payload(raw), user_id="u", limits=IntakeLimits())
        assert caught.value.field == "options.sku_images_map.SKU1.0.url"


def test_every_image_gets_its_sku_s_main_or_other_prompt() -> None:
    raw = batch_payload("https://api.example.com", "j", images_per_sku=(3, 1, 2))
    spec = build_job_spec(parse_payload(raw), user_id="u", limits=IntakeLimits())
    templates = raw["options"]["prompt_templates"]
    for image in spec.images:
        expected = build_prompt(templates, use_english=False, is_main=image.sku_index == 0)
        assert image.prompt == expected
    assert len({image.prompt for image in spec.images}) == 2


def test_only_main_images_need_only_a_main_prompt() -> None:
    raw = batch_payload("https://api.example.com", "j", images_per_sku=(1, 1))
    raw["options"]["prompt_templates"] = {"main_cn": "主图"}
    spec = build_job_spec(parse_payload(raw), user_id="u", limits=IntakeLimits())
    assert [i.prompt for i in spec.images] == ["主图", "主图"]
    raw = batch_payload("https://api.example.com", "j", images_per_sku=(2,))
    raw["options"]["prompt_templates"] = {"main_cn": "主图"}
    with pytest.raises(PayloadInvalid) as caught:
        build_job_spec(parse_payload(raw), user_id="u", limits=IntakeLimits())
    assert caught.value.field == "options.prompt_templates"
