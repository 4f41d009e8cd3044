"""Intake: every refused payload names its field; accepted payloads normalize as documented."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from imagestudio.domain import JobSpec
from imagestudio.errors import PayloadInvalid
from imagestudio.jobs.intake import IntakeLimits, build_job_spec, parse_payload
from imagestudio.jobs.payload import SUPPORTED_MODES
from testkit.payloads import batch_payload

CDN = "https://cdn.example.com"
KEY = "sk-test-key-0123456789"

Payload = dict[str, Any]


def seed(**kwargs: Any) -> Payload:
    """The seed's example batch: SKU1 with 3 images, SKU2 and SKU3 with one each."""
    return batch_payload(CDN, "job-1", api_key=KEY, **kwargs)


def spec_of(raw: Any, *, user_id: str = "user-123", max_images: int = 5000) -> JobSpec:
    payload = parse_payload(raw)
    return build_job_spec(payload, user_id=user_id, limits=IntakeLimits(max_images=max_images))


def opts(raw: Payload) -> dict[str, Any]:
    options: dict[str, Any] = raw["options"]
    return options


def set_option(**values: Any) -> Callable[[Payload], None]:
    def mutate(raw: Payload) -> None:
        opts(raw).update(values)

    return mutate


def drop_option(*names: str) -> Callable[[Payload], None]:
    def mutate(raw: Payload) -> None:
        for name in names:
            opts(raw).pop(name, None)

    return mutate


def image_url(url: str) -> Callable[[Payload], None]:
    def mutate(raw: Payload) -> None:
        opts(raw)["sku_images_map"]["SKU1"][1]["url"] = url

    return mutate


def image_size(size: str) -> Callable[[Payload], None]:
    def mutate(raw: Payload) -> None:
        drop_option("target_width", "target_height")(raw)
        opts(raw)["settings"]["imageSize"] = size

    return mutate


def sku_without_images(raw: Payload) -> None:
    opts(raw)["skus"].append("SKU4")


def sku_with_empty_list(raw: Payload) -> None:
    opts(raw)["sku_images_map"]["SKU2"] = []


def images_for_unlisted_sku(raw: Payload) -> None:
    opts(raw)["sku_images_map"]["SKU9"] = [{"url": f"{CDN}/x.jpg", "name": "x.jpg", "stem": "x"}]


def duplicate_sku(raw: Payload) -> None:
    opts(raw)["skus"].append("SKU1")


def unknown_mode(raw: Payload) -> None:
    raw["mode"] = "batch_everything"


BAD_PAYLOADS: list[Any] = [
    pytest.param(unknown_mode, "mode", id="unknown-mode"),
    pytest.param(sku_without_images, "options.sku_images_map.SKU4", id="sku-without-images"),
    pytest.param(sku_with_empty_list, "options.sku_images_map.SKU2", id="sku-with-empty-list"),
    pytest.param(images_for_unlisted_sku, "options.sku_images_map.SKU9", id="images-unlisted"),
    pytest.param(
        image_url("ftp://cdn.example.com/a.jpg"), "options.sku_images_map.SKU1.1.url", id="ftp"
    ),
    pytest.param(image_url("file:///etc/passwd"), "options.sku_images_map.SKU1.1.url", id="file"),
    pytest.param(
        image_url("javascript:alert(1)"), "options.sku_images_map.SKU1.1.url", id="javascript"
    ),
    pytest.param(image_url("https:///no-host"), "options.sku_images_map.SKU1.1.url", id="no-host"),
    pytest.param(set_option(api_base="ftp://api.example.com/v1"), "options.api_base", id="base"),
    pytest.param(set_option(target_width=10), "options.target_width", id="width-10"),
    pytest.param(set_option(target_width=99999), "options.target_width", id="width-99999"),
    pytest.param(set_option(target_height=10), "options.target_height", id="height-10"),
    pytest.param(image_size("abc"), "options.settings.imageSize", id="image-size-abc"),
    # The size came from settings.imageSize, so that is the field to name.
    pytest.param(image_size("8x8"), "options.settings.imageSize", id="image-size-too-small"),
    pytest.param(image_size("1024x9000"), "options.settings.imageSize", id="image-size-too-tall"),
    pytest.param(set_option(quality=0), "options.quality", id="quality-0"),
    pytest.param(set_option(quality=101), "options.quality", id="quality-101"),
    pytest.param(set_option(output_format="gif"), "options.output_format", id="format-gif"),
    pytest.param(drop_option("api_key"), "options.api_key", id="no-api-key"),
    pytest.param(set_option(api_key="   "), "options.api_key", id="blank-api-key"),
    pytest.param(drop_option("model"), "options.model", id="no-model"),
    pytest.param(duplicate_sku, "options.skus", id="duplicate-sku"),
    pytest.param(set_option(prompt_templates={}), "options.prompt_templates", id="no-templates"),
    pytest.param(
        set_option(prompt_templates={"common_cn": "  ", "main_en": ""}),
        "options.prompt_templates",
        id="blank-templates",
    ),
    pytest.param(set_option(skus=[], sku_images_map={}), "options.skus", id="no-skus"),
]


@pytest.mark.parametrize(("mutate", "field"), BAD_PAYLOADS)
def test_bad_payload_names_the_field(mutate: Callable[[Payload], None], field: str) -> None:
    raw = seed()
    mutate(raw)
    with pytest.raises(PayloadInvalid) as caught:
        spec_of(raw)
    assert caught.value.field == field
    assert caught.value.reason
    assert str(caught.value).startswith(f"{field}: ")


def test_unknown_mode_lists_the_supported_modes() -> None:
    raw = seed()
    unknown_mode(raw)
    with pytest.raises(PayloadInvalid) as caught:
        spec_of(raw)
    for mode in SUPPORTED_MODES:
        assert mode in caught.value.reason


def test_unknown_format_lists_the_supported_formats() -> None:
    raw = seed(options={"output_format": "gif"})
    with pytest.raises(PayloadInvalid) as caught:
        spec_of(raw)
    assert all(fmt in caught.value.reason for fmt in ("png", "jpeg", "webp"))


def test_bad_image_format_in_settings_names_settings_field() -> None:
    raw = seed()
    drop_option("output_format")(raw)
    opts(raw)["settings"]["imageFormat"] = "bmp"
    with pytest.raises(PayloadInvalid) as caught:
        spec_of(raw)
    assert caught.value.field == "options.settings.imageFormat"


def test_bad_quality_in_settings_names_settings_field() -> None:
    raw = seed()
    opts(raw)["settings"]["quality"] = 0
    with pytest.raises(PayloadInvalid) as caught:
        spec_of(raw)
    assert caught.value.field == "options.settings.quality"


@pytest.mark.parametrize(("limit", "ok"), [(4, False), (5, True)])
def test_more_images_than_the_maximum(limit: int, ok: bool) -> None:
    raw = seed()  # 5 images
    if ok:
        assert len(spec_of(raw, max_images=limit).images) == 5
        return
    with pytest.raises(PayloadInvalid) as caught:
        spec_of(raw, max_images=limit)
    assert caught.value.field == "options.sku_images_map"
    assert "5" in caught.value.reason
    assert str(limit) in caught.value.reason


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param([], "body", id="not-an-object"),
        pytest.param({"mode": "batch_series_generate"}, "options", id="no-options"),
        pytest.param({"options": {}}, "mode", id="no-mode"),
        pytest.param(
            {"mode": "batch_series_generate", "options": {"skus": "SKU1"}},
            "options.skus",
            id="skus-not-a-list",
        ),
        pytest.param(
            {"mode": "batch_series_generate", "options": {"target_width": "wide"}},
            "options.target_width",
            id="width-not-a-number",
        ),
    ],
)
def test_malformed_json_names_the_field(raw: Any, field: str) -> None:
    with pytest.raises(PayloadInvalid) as caught:
        parse_payload(raw)
    assert caught.value.field == field


def test_seed_payload_becomes_five_images_in_payload_order() -> None:
    spec = spec_of(seed())
    assert [(i.position, i.sku, i.sku_index, i.stem) for i in spec.images] == [
        (0, "SKU1", 0, "stem1"),
        (1, "SKU1", 1, "stem2"),
        (2, "SKU1", 2, "stem3"),
        (3, "SKU2", 0, "stem4"),
        (4, "SKU3", 0, "stem5"),
    ]
    assert spec.images[0].source_url == f"{CDN}/samples/1.jpg"
    assert spec.images[0].name == "img1.jpg"
    assert spec.user_id == "user-123"
    assert spec.job_id == "job-1"
    assert spec.api_key == KEY
    assert spec.provider.api_base == f"{CDN}/v1"
    assert spec.provider.model == "gpt-image-1"
    assert (spec.output.width, spec.output.height, spec.output.format) == (1536, 1536, "png")
    assert spec.output.quality == 90


def test_missing_stem_and_name_fall_back_to_url_then_position() -> None:
    raw = seed()
    sku1 = opts(raw)["sku_images_map"]["SKU1"]
    sku1[0] = {"url": f"{CDN}/photos/front.view.jpg"}
    sku1[1] = {"url": f"{CDN}/photos/"}
    images = spec_of(raw).images
    assert (images[0].stem, images[0].name) == ("front.view", "front.view")
    assert images[1].stem == "photos"


def test_unknown_extra_fields_are_kept_in_config() -> None:
    raw = seed()
    raw["trace_id"] = "abc-123"
    opts(raw)["frontend_version"] = "2.3.1"
    opts(raw)["settings"]["background"] = "white"
    opts(raw)["sku_images_map"]["SKU2"][0]["crop"] = {"x": 1, "y": 2}
    config = spec_of(raw).config
    assert config["trace_id"] == "abc-123"
    assert config["options"]["frontend_version"] == "2.3.1"
    assert config["options"]["settings"]["background"] == "white"
    assert config["options"]["sku_images_map"]["SKU2"][0]["crop"] == {"x": 1, "y": 2}
    # What the seed's monitoring SQL reads is there as sent.
    assert config["options"]["sku_images_map"]["SKU1"][2]["url"] == f"{CDN}/samples/3.jpg"
    assert config["options"]["settings"]["imageSize"] == "1536x1536"


def test_api_key_is_not_in_config() -> None:
    spec = spec_of(seed())
    assert "api_key" not in spec.config["options"]
    assert KEY not in json.dumps(spec.config, ensure_ascii=False)
    assert spec.api_key == KEY


def test_api_key_is_stripped() -> None:
    assert spec_of(seed(options={"api_key": f"  {KEY}\n"})).api_key == KEY


@pytest.mark.parametrize(
    ("options", "settings", "expected"),
    [
        pytest.param(
            {"target_width": 800, "target_height": 600},
            {"imageSize": "1536x1536"},
            (800, 600),
            id="target-wins",
        ),
        pytest.param(
            {"target_width": 800, "target_height": None},
            {"imageSize": "1536x1024"},
            (800, 1024),
            id="target-width-only",
        ),
        pytest.param(
            {"target_width": None, "target_height": None},
            {"imageSize": "1536 x 1024"},
            (1536, 1024),
            id="settings-size",
        ),
        pytest.param(
            {"target_width": None, "target_height": None},
            {"imageSize": None},
            (1024, 1024),
            id="default-size",
        ),
    ],
)
def test_size_precedence(
    options: dict[str, Any], settings: dict[str, Any], expected: tuple[int, int]
) -> None:
    raw = seed(options=options)
    opts(raw)["settings"].update(settings)
    output = spec_of(raw).output
    assert (output.width, output.height) == expected


@pytest.mark.parametrize(
    ("output_format", "image_format", "expected"),
    [
        pytest.param("webp", "png", "webp", id="output-format-wins"),
        pytest.param(None, "webp", "webp", id="settings-format"),
        pytest.param("jpg", "png", "jpeg", id="jpg-alias"),
        pytest.param(None, "JPG", "jpeg", id="jpg-alias-in-settings"),
        pytest.param(" PNG ", None, "png", id="case-and-space"),
        pytest.param(None, None, "png", id="default-png"),
    ],
)
def test_format_precedence(
    output_format: str | None, image_format: str | None, expected: str
) -> None:
    raw = seed(options={"output_format": output_format})
    opts(raw)["settings"]["imageFormat"] = image_format
    assert spec_of(raw).output.format == expected


@pytest.mark.parametrize(
    ("quality", "settings_quality", "expected"),
    [(75, 90, 75), (None, 60, 60), (None, None, 90), (1, None, 1), (100, 5, 100)],
)
def test_quality_precedence(
    quality: int | None, settings_quality: int | None, expected: int
) -> None:
    raw = seed(options={"quality": quality})
    opts(raw)["settings"]["quality"] = settings_quality
    assert spec_of(raw).output.quality == expected


def test_single_image_form_keeps_only_that_image() -> None:
    raw = seed()
    raw["sku"], raw["stem"] = "SKU1", "stem2"
    spec = spec_of(raw)
    assert [(i.position, i.sku, i.sku_index, i.stem) for i in spec.images] == [
        (0, "SKU1", 1, "stem2")
    ]
    # stem2 is not SKU1's first image, so it gets no main-image prompt.
    assert "主图" not in spec.images[0].prompt


def test_single_image_form_of_a_main_image_gets_the_main_prompt() -> None:
    raw = seed()
    raw["sku"], raw["stem"] = "SKU1", "stem1"
    (image,) = spec_of(raw).images
    assert "主图" in image.prompt


def test_single_image_form_with_unknown_stem_names_stem() -> None:
    raw = seed()
    raw["sku"], raw["stem"] = "SKU2", "stem1"  # stem1 is SKU1's
    with pytest.raises(PayloadInvalid) as caught:
        spec_of(raw)
    assert caught.value.field == "stem"


def test_single_generate_of_a_sku_without_skus_list() -> None:
    raw = {
        "mode": "single_generate",
        "sku": "SKU7",
        "stem": "front",
        "options": {
            "sku_images_map": {"SKU7": [{"url": f"{CDN}/a.jpg", "stem": "front"}]},
            "api_key": KEY,
            "api_base": f"{CDN}/v1",
            "model": "gpt-image-1",
            "prompt_templates": {"common_en": "studio shot"},
            "use_english": True,
        },
    }
    (image,) = spec_of(raw).images
    assert (image.sku, image.stem, image.prompt) == ("SKU7", "front", "studio shot")


def test_batch_sku_with_a_stem_is_still_a_batch() -> None:
    raw = seed()
    raw["stem"] = "stem2"  # sku stays "__batch__"
    assert len(spec_of(raw).images) == 5


def test_job_without_job_id() -> None:
    raw = batch_payload(CDN, None, api_key=KEY)
    assert "job_id" not in raw
    spec = spec_of(raw)
    assert spec.job_id is None
    assert len(spec.images) == 5


def test_empty_job_id_is_refused() -> None:
    raw = seed()
    raw["job_id"] = ""
    with pytest.raises(PayloadInvalid) as caught:
        spec_of(raw)
    assert caught.value.field == "job_id"


def test_payload_hash_is_stable_for_the_same_payload() -> None:
    first, second = seed(), seed()
    assert spec_of(first).payload_hash == spec_of(second).payload_hash
    # Key order in the JSON does not matter.
    reordered = dict(reversed(list(copy.deepcopy(first).items())))
    assert spec_of(reordered).payload_hash == spec_of(first).payload_hash


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(set_option(quality=80), id="quality"),
        pytest.param(set_option(use_english=True), id="use-english"),
        pytest.param(set_option(skus=["SKU2", "SKU1", "SKU3"]), id="sku-order"),
        pytest.param(image_url(f"{CDN}/other.jpg"), id="image-url"),
        pytest.param(set_option(extra_note="x"), id="extra-field"),
    ],
)
def test_payload_hash_changes_when_a_field_changes(mutate: Callable[[Payload], None]) -> None:
    raw = seed()
    mutate(raw)
    assert spec_of(raw).payload_hash != spec_of(seed()).payload_hash


def test_payload_hash_ignores_the_api_key() -> None:
    assert (
        spec_of(seed(options={"api_key": "sk-other-key"})).payload_hash
        == spec_of(seed()).payload_hash
    )
