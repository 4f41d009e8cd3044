"""The prompt rule of ``prompts.py``, as a table: language, main image, opt_* order, fallback."""

from __future__ import annotations

import pytest

from imagestudio.jobs.prompts import build_prompt

SEED = {
    "common_cn": "根据图片内容生成",
    "main_cn": "主图",
    "opt_remove_watermark_cn": "去除水印",
}
BOTH = {
    "common_cn": "通用",
    "common_en": "common",
    "main_cn": "主图",
    "main_en": "main",
    "opt_a_cn": "选项A",
    "opt_a_en": "option A",
    "opt_b_cn": "选项B",
    "opt_b_en": "option B",
}


def lines(*parts: str) -> str:
    return "\n\n".join(parts)


@pytest.mark.parametrize(
    ("templates", "use_english", "is_main", "expected"),
    [
        pytest.param(
            SEED, False, True, lines("根据图片内容生成", "主图", "去除水印"), id="seed-main"
        ),
        pytest.param(SEED, False, False, lines("根据图片内容生成", "去除水印"), id="seed-other"),
        pytest.param(BOTH, False, True, lines("通用", "主图", "选项A", "选项B"), id="cn-main"),
        pytest.param(BOTH, True, True, lines("common", "main", "option A", "option B"), id="en"),
        pytest.param(BOTH, True, False, lines("common", "option A", "option B"), id="en-other"),
        # Rule 3: a part missing in the chosen language falls back to the other language.
        pytest.param(
            SEED, True, True, lines("根据图片内容生成", "主图", "去除水印"), id="en-to-cn"
        ),
        pytest.param(
            {"common_en": "common", "main_en": "main"},
            False,
            True,
            lines("common", "main"),
            id="cn-to-en",
        ),
        pytest.param(
            {"common_en": "common", "common_cn": "通用", "opt_x_cn": "选项"},
            True,
            False,
            lines("common", "选项"),
            id="fallback-per-part",
        ),
        # Rule 4: empty parts are skipped (after trying the other language).
        pytest.param(
            {"common_cn": "通用", "main_cn": "", "opt_a_cn": "   "},
            False,
            True,
            "通用",
            id="empty-skipped",
        ),
        pytest.param(
            {"common_cn": "", "common_en": "common", "main_cn": "主图"},
            False,
            True,
            lines("common", "主图"),
            id="empty-falls-back",
        ),
        pytest.param(
            {"main_cn": "主图", "opt_a_cn": "选项"},
            False,
            True,
            lines("主图", "选项"),
            id="no-common",
        ),
        pytest.param({"main_cn": "主图"}, False, False, "", id="nothing-for-other-images"),
        pytest.param({}, False, True, "", id="no-templates"),
        pytest.param({"common_cn": "  通用 \n"}, False, False, "通用", id="stripped"),
    ],
)
def test_prompt_rule(
    templates: dict[str, str], use_english: bool, is_main: bool, expected: str
) -> None:
    assert build_prompt(templates, use_english=use_english, is_main=is_main) == expected


def test_every_opt_in_payload_order() -> None:
    templates = {
        "opt_zebra_cn": "Z",
        "common_cn": "C",
        "opt_apple_cn": "A",
        "main_cn": "M",
        "opt_mango_cn": "O",
    }
    # common and main first, then every opt_* in the order the payload lists them (not sorted).
    assert build_prompt(templates, use_english=False, is_main=True) == lines(
        "C", "M", "Z", "A", "O"
    )


def test_opt_order_is_first_seen_across_languages() -> None:
    templates = {"opt_b_en": "B", "opt_a_cn": "甲", "opt_b_cn": "乙", "opt_a_en": "A"}
    assert build_prompt(templates, use_english=False, is_main=False) == lines("乙", "甲")
    assert build_prompt(templates, use_english=True, is_main=False) == lines("B", "A")


@pytest.mark.parametrize(
    "key",
    [
        "style_cn",  # not common, main or opt_*
        "opt_watermark",  # no language suffix
        "opt_watermark_fr",  # not a language we know
        "common",  # no suffix at all
        "common_jp",
        "_cn",  # a suffix with no name
    ],
)
def test_keys_outside_the_rule_are_ignored(key: str) -> None:
    templates = {"common_cn": "C", key: "IGNORED"}
    assert build_prompt(templates, use_english=False, is_main=True) == "C"


def test_main_only_for_the_main_image() -> None:
    with_main = build_prompt(SEED, use_english=False, is_main=True)
    without = build_prompt(SEED, use_english=False, is_main=False)
    assert "主图" in with_main
    assert "主图" not in without
    assert with_main.replace("主图\n\n", "") == without


def test_parts_are_separated_by_one_blank_line() -> None:
    prompt = build_prompt(BOTH, use_english=True, is_main=True)
    assert prompt.split("\n\n") == ["common", "main", "option A", "option B"]
    assert not prompt.endswith("\n")
