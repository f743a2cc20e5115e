"""Content hashes: keyed, stable, and equal across the conventions that carry messages."""

import json

from hypothesis import example, given
from hypothesis import strategies as st

from pipeline import privacy

KEY = b"k" * 32


def test_same_conversation_hashes_alike_in_every_convention():
    semconv = {"gen_ai.input.messages": json.dumps([
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": "weather in Paris?"}]}])}
    openllmetry = {"gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "be brief",
                   "gen_ai.prompt.1.role": "user",
                   "gen_ai.prompt.1.content": "weather in Paris?"}
    openinference = {"llm.input_messages.0.message.role": "system",
                     "llm.input_messages.0.message.content": "be brief",
                     "llm.input_messages.1.message.role": "user",
                     "llm.input_messages.1.message.content": "weather in Paris?"}
    hashes = [privacy.content_hashes(KEY, a) for a in (semconv, openllmetry, openinference)]
    assert hashes[0] == hashes[1] == hashes[2]
    assert set(hashes[0]) == {privacy.PROMPT_HASH, privacy.LAST_MESSAGE_HASH}


def test_last_message_hash_is_stable_while_the_prompt_grows():
    step1 = {"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "look up X"}
    step2 = {**step1, "gen_ai.prompt.1.role": "assistant", "gen_ai.prompt.1.content": "ok",
             "gen_ai.prompt.2.role": "user", "gen_ai.prompt.2.content": "look up X"}
    h1, h2 = privacy.content_hashes(KEY, step1), privacy.content_hashes(KEY, step2)
    assert h1[privacy.LAST_MESSAGE_HASH] == h2[privacy.LAST_MESSAGE_HASH]
    assert h1[privacy.PROMPT_HASH] != h2[privacy.PROMPT_HASH]


def test_tool_arguments_hash_ignores_key_order_and_whitespace():
    a = privacy.content_hashes(KEY, {"gen_ai.tool.call.arguments": '{"a": 1, "b": 2}'})
    b = privacy.content_hashes(KEY, {"gen_ai.tool.call.arguments": '{"b":2,"a":1}'})
    assert a[privacy.TOOL_ARGS_HASH] == b[privacy.TOOL_ARGS_HASH]


def test_hash_depends_on_the_key_and_is_128_bits():
    assert privacy.keyed_hash(b"a" * 32, "x") != privacy.keyed_hash(b"b" * 32, "x")
    assert len(privacy.keyed_hash(KEY, "x")) == 32
    int(privacy.keyed_hash(KEY, "x"), 16)


def test_content_keys_cover_every_convention():
    for key in ("gen_ai.input.messages", "gen_ai.output.messages",
                "gen_ai.system_instructions", "gen_ai.prompt.3.content",
                "gen_ai.completion.0.content", "gen_ai.tool.call.arguments",
                "gen_ai.tool.call.result", "input.value", "output.value",
                "llm.input_messages.0.message.content",
                "llm.output_messages.0.message.content"):
        assert privacy.is_content_key(key), key
    for key in ("gen_ai.usage.input_tokens", "gen_ai.request.model", "llm.model_name",
                "gen_ai.prompt_hash", "llmspend.prompt_hash"):
        assert not privacy.is_content_key(key), key


def test_tool_arguments_hash_alike_in_every_convention():
    semconv = {"gen_ai.operation.name": "execute_tool",
               "gen_ai.tool.call.arguments": '{"q": "refund policy"}'}
    openinference = {"openinference.span.kind": "TOOL", "input.value": '{"q":"refund policy"}'}
    traceloop = {"traceloop.span.kind": "tool",
                 "traceloop.entity.input": '{"args": [], "kwargs": {"q": "refund policy"}}'}
    hashes = [privacy.content_hashes(KEY, a) for a in (semconv, openinference, traceloop)]
    assert hashes[0] == hashes[1] == hashes[2]
    assert set(hashes[0]) == {privacy.TOOL_ARGS_HASH}


@given(st.one_of(st.text(), st.none(), st.integers()), st.one_of(
    st.text(alphabet=st.characters(exclude_categories=())),  # controls, surrogates too
    st.lists(st.fixed_dictionaries({"text": st.text()}), max_size=3)))
@example("user", 'say "hi"\n\t\x00\u2028\ud800 é€😀\\')
def test_a_canonical_message_is_the_json_of_role_and_text(role, content):
    """Hashes already stored were taken over ``json.dumps([role, text])``; the fast
    writer must give the very same text for any role and content."""
    want = json.dumps([role or "", privacy._text_of(content)], ensure_ascii=False,
                      separators=(",", ":"))
    assert privacy.canonical_message(role, content) == want
