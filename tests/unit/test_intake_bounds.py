"""Intake refuses out-of-range integers, bad host names, credentials in URLs and oversized
prompts with a ``PayloadInvalid`` naming the field (the API's 422), never a crash."""

from __future__ import annotations

from typing import Any

import pytest

from imagestudio.errors import PayloadInvalid
from imagestudio.jobs.intake import IntakeLimits, build_job_spec, host_problem, parse_payload
from imagestudio.jobs.payload import MAX_JOB_CONCURRENCY
from testkit.payloads import batch_payload

CDN = "https://cdn.example.com"
KEY = "sk-canary-0123456789abcdef"


def seed() -> dict[str, Any]:
    return batch_payload(CDN, "job-1", api_key=KEY)


def refused(raw: dict[str, Any], limits: IntakeLimits | None = None) -> PayloadInvalid:
    with pytest.raises(PayloadInvalid) as caught:
        build_job_spec(parse_payload(raw), user_id="u", limits=limits or IntakeLimits())
    return caught.value


def accepted(raw: dict[str, Any], limits: IntakeLimits | None = None) -> None:
    build_job_spec(parse_payload(raw), user_id="u", limits=limits or IntakeLimits())


@pytest.mark.parametrize("value", [0, -1, MAX_JOB_CONCURRENCY + 1, 2**63, 10**40])
def test_max_concurrency_out_of_range_names_the_field(value: int) -> None:
    raw = seed()
    raw["options"]["max_concurrency"] = value
    assert refused(raw).field == "options.max_concurrency"


@pytest.mark.parametrize("value", [1, 2, MAX_JOB_CONCURRENCY])
def test_max_concurrency_in_range_is_accepted(value: int) -> None:
    raw = seed()
    raw["options"]["max_concurrency"] = value
    accepted(raw)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target_width", 2**63),
        ("target_height", -(2**63)),
        ("quality", 10**30),
    ],
)
def test_huge_integers_elsewhere_name_their_field(field: str, value: int) -> None:
    raw = seed()
    raw["options"][field] = value
    assert refused(raw).field == f"options.{field}"


def test_huge_image_size_string_names_the_settings_field() -> None:
    raw = seed()
    del raw["options"]["target_width"], raw["options"]["target_height"]
    raw["options"]["settings"]["imageSize"] = f"{10**30}x{10**30}"
    assert refused(raw).field == "options.settings.imageSize"


BAD_HOSTS = [
    "http://a..b/v1",
    "http://.a/v1",
    "http://a.-b/x",
    "http://-a.example.com/",
    "http://a-.example.com/",
    f"http://{'a' * 64}.example.com/",
    "http://" + ".".join(["abcdefghi"] * 26) + "/",
    "http://exa mple.com/",
    "http://host:99999/",
    "http://host:0/",
    "http://host:-1/",
    "http://host:port/",
    "http://[::1/",
    "http://\u2024\u2024/",
]


@pytest.mark.parametrize("url", BAD_HOSTS)
def test_bad_provider_hosts_name_api_base(url: str) -> None:
    raw = seed()
    raw["options"]["api_base"] = url
    assert refused(raw).field == "options.api_base"


@pytest.mark.parametrize("url", BAD_HOSTS)
def test_bad_source_hosts_name_the_image_url(url: str) -> None:
    raw = seed()
    raw["options"]["sku_images_map"]["SKU1"][1]["url"] = url
    assert refused(raw).field == "options.sku_images_map.SKU1.1.url"


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1",
        "https://api.example.com:8443/v1",
        "http://127.0.0.1:9/v1",
        "http://[::1]:8080/v1",
        "https://bücher.example/v1",
        "https://my_gateway.internal.example/v1",
        "https://xn--bcher-kva.example/v1",
        "https://example.com./v1",
    ],
)
def test_good_hosts_are_accepted(url: str) -> None:
    raw = seed()
    raw["options"]["api_base"] = url
    raw["options"]["sku_images_map"]["SKU2"][0]["url"] = url + "/img.jpg"
    accepted(raw)


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{KEY}@api.example.com/v1",
        f"https://{KEY}@api.example.com/v1",
        f"https://:{KEY}@api.example.com:443/v1",
        f"ftp://u:{KEY}@api.example.com/v1",
    ],
)
def test_credentials_in_a_url_are_refused_without_echoing_them(url: str) -> None:
    raw = seed()
    raw["options"]["api_base"] = url
    error = refused(raw)
    assert error.field == "options.api_base"
    assert KEY not in error.message
    assert "api.example.com" in error.message


def test_credentials_in_a_source_url_are_refused() -> None:
    raw = seed()
    raw["options"]["sku_images_map"]["SKU3"][0]["url"] = f"https://u:{KEY}@cdn.example.com/a.jpg"
    error = refused(raw)
    assert error.field == "options.sku_images_map.SKU3.0.url"
    assert KEY not in error.message


def test_a_template_over_the_cap_names_its_key() -> None:
    raw = seed()
    raw["options"]["prompt_templates"]["opt_bg_cn"] = "x" * 101
    error = refused(raw, IntakeLimits(max_prompt_chars=100))
    assert error.field == "options.prompt_templates.opt_bg_cn"
    assert "101 characters exceed the maximum of 100" in error.reason


def test_templates_under_the_cap_whose_prompt_is_over_it_name_the_templates() -> None:
    raw = seed()
    raw["options"]["prompt_templates"] = {"common_cn": "a" * 60, "main_cn": "b" * 60}
    error = refused(raw, IntakeLimits(max_prompt_chars=100))
    assert error.field == "options.prompt_templates"


def test_the_default_cap_refuses_a_megabyte_prompt() -> None:
    raw = seed()
    raw["options"]["prompt_templates"]["common_cn"] = "x" * 1_000_000
    assert refused(raw).field == "options.prompt_templates.common_cn"


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("example.com", True),
        ("127.0.0.1", True),
        ("::1", True),
        ("fe80::1%eth0", True),
        ("a..b", False),
        ("", False),
        ("a" * 63 + ".com", True),
        ("a" * 64 + ".com", False),
        ("bücher.de", True),
        ("\u2024", False),
    ],
)
def test_host_problem(host: str, ok: bool) -> None:
    assert (host_problem(host) is None) is ok
