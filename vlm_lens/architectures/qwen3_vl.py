"""Qwen3-VL (`Qwen3VLForConditionalGeneration`): the Qwen-VL base (`_qwen`) plus deepstack
(visual features added to the residual stream after the first language-model layers),
interleaved mrope, a learned vision position table, no default system turn.

Tiny checkpoint, one 64x64 image: 16 x ``<|image_pad|>`` between vision_start/end, a
4 x 4 grid after merging (``image_grid_thw`` = [1, 8, 8] patches of 16).

Not for: what all Qwen-VL share (`vlm_lens.architectures._qwen`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlm_lens.architectures import _qwen
from vlm_lens.architectures._base import Adapter, Architecture, RealVocab, TinyRecipe
from vlm_lens.architectures._recipe import given


def _deepstack(config: Any) -> int:
    # The language model adds visual features to the image positions of the residual stream
    # after each of its first len(deepstack_visual_indexes) layers (Qwen3-VL "deepstack").
    return len(getattr(config.vision_config, "deepstack_visual_indexes", None) or ())


_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_position_embeddings": 256,  # a 16 x 16 table, interpolated to the grid
}


def _derive_vision(cfg: dict, overrides: Mapping) -> None:
    _qwen.default_out_width(cfg, overrides)
    vision = cfg["vision_config"]
    if not given(overrides, "vision_config", "deepstack_visual_indexes"):
        depth = vision["depth"]  # evenly spaced vision layers feed the first text layers
        vision["deepstack_visual_indexes"] = sorted({(depth * (j + 1)) // 4 for j in range(3)})


def _config(tok, overrides: Mapping):
    return _qwen.config(
        "Qwen3VLConfig", tok, overrides, _VISION, interleaved=True, derive_vision=_derive_vision
    )


# Qwen/Qwen3-VL-*-Instruct (no default system turn). Read with the search tool from public
# copies of the model repository's chat template: a mirror of Qwen3-VL-30B-A3B-Instruct's
# processor config, and the same template embedded in a Qwen3-VL-30B-A3B-Instruct GGUF that a
# public template test suite renders; the Qwen3-VL Instruct checkpoints share it. Raw string:
# the backslash escapes belong to Jinja's string literals, as in the original file.
REAL_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


ARCHITECTURE = Architecture(
    title="Qwen3-VL",
    family="qwen",
    released="2025-09",
    adapter=Adapter(
        "qwen3_vl", "Qwen3VLForConditionalGeneration", **_qwen.ADAPTER_FIELDS, deepstack=_deepstack
    ),
    tiny=TinyRecipe(
        char_tokenizer=_qwen.char_tokenizer(_qwen.zoo_chat_template(None)),
        config=_config,
        processor=_qwen.processor("Qwen3VLProcessor", "Qwen3VLVideoProcessor", _qwen.HALF_MEAN_STD),
        **_qwen.RECIPE_TOKENS,
    ),
    # Qwen3-VL-2B-Instruct: patch 16, merge 2, pixels 65,536 .. 16,777,216.
    real_vocab=RealVocab(
        package=_qwen.PACKAGE,
        chat_template=REAL_CHAT_TEMPLATE,
        settings=_qwen.real_settings(65_536, 16_777_216),
    ),
)
