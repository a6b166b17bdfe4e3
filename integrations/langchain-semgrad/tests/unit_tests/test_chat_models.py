"""ChatSemGrad over a tiny random scorer: scores in metadata, streaming, async, stop, usage."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_semgrad import ChatSemGrad, read_payload, read_score

from semgrad_guard import MockScorer


def test_invoke_scores_exactly_what_scorer_generate_returns(tiny: Any) -> None:
    chat = ChatSemGrad(scorer=tiny, max_tokens=12)
    msg = chat.invoke([SystemMessage("Be brief."), HumanMessage("Name a colour.")])
    text, expected = tiny.generate(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
        max_new_tokens=12,
    )
    assert msg.content == text
    assert read_score(msg) == expected
    assert msg.usage_metadata["input_tokens"] == expected.prompt_tokens
    assert msg.usage_metadata["output_tokens"] == expected.answer_tokens
    assert msg.response_metadata["model_name"] == "tiny-random-llama"


def test_stream_attaches_score_to_last_chunk_and_matches_invoke(tiny: Any) -> None:
    chat = ChatSemGrad(scorer=tiny, max_tokens=12)
    chunks = list(chat.stream("Name a colour."))
    assert len(chunks) > 2  # really streamed token by token
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert chunks[-1].chunk_position == "last"
    assert all("semgrad" not in c.response_metadata for c in chunks[:-1])
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    ref = chat.invoke("Name a colour.")
    assert full.content == ref.content
    assert read_score(full) == read_score(ref)


async def test_astream_and_ainvoke_match_sync(tiny: Any) -> None:
    chat = ChatSemGrad(scorer=tiny, max_tokens=10)
    ref = chat.invoke("Say hi.")
    got = await chat.ainvoke("Say hi.")
    assert got.content == ref.content and read_score(got) == read_score(ref)
    chunks = [c async for c in chat.astream("Say hi.")]
    assert len(chunks) > 2 and chunks[-1].chunk_position == "last"
    assert read_score(chunks[-1]) == read_score(ref)


def test_streaming_flag_makes_invoke_stream(tiny: Any) -> None:
    chat = ChatSemGrad(scorer=tiny, max_tokens=8, streaming=True)
    ref = ChatSemGrad(scorer=tiny, max_tokens=8).invoke("Hello")
    msg = chat.invoke("Hello")
    assert isinstance(msg, AIMessage)
    assert msg.content == ref.content and read_score(msg) == read_score(ref)


def test_stop_cuts_answer_and_rescores_the_cut_text() -> None:
    scorer = MockScorer(lambda m, a: len(a) / 100, answers=["Paris. And also more text."])
    chat = ChatSemGrad(scorer=scorer)
    msg = chat.invoke("Capital?", stop=[" And"])
    assert msg.content == "Paris."
    assert read_score(msg).semgrad == pytest.approx(0.06)
    streamed = list(
        ChatSemGrad(
            scorer=MockScorer(lambda m, a: len(a) / 100, answers=["ab STOP cd"]), stop=["STOP"]
        ).stream("q")
    )
    assert "".join(c.content for c in streamed) == "ab "
    assert read_score(streamed[-1]).semgrad == pytest.approx(0.03)


def test_sampling_parameters_reach_the_scorer() -> None:
    seen: list[dict[str, Any]] = []

    def answer(messages: list[dict[str, Any]], **kwargs: Any) -> str:
        seen.append(kwargs)
        return "ok"

    chat = ChatSemGrad(scorer=MockScorer(answers=answer), temperature=0.7, top_p=0.9, max_tokens=5, seed=3)
    chat.invoke("q")
    chat.invoke("q", temperature=0)
    assert seen[0] == {"max_new_tokens": 5, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "seed": 3}
    assert seen[1] == {"max_new_tokens": 5, "do_sample": False, "seed": 3}


def test_needs_a_generating_scorer() -> None:
    class ScoreOnly:
        def score(self, messages: Any, answer: str) -> None: ...

    with pytest.raises(ValueError, match="generating scorer"):
        ChatSemGrad(scorer=ScoreOnly())


def test_ls_params_and_model_name() -> None:
    chat = ChatSemGrad(scorer=MockScorer(answers=["x"], model_id="m1"), max_tokens=9, stop=["z"])
    params = chat._get_ls_params()
    assert params["ls_model_name"] == "m1" and params["ls_max_tokens"] == 9 and params["ls_stop"] == ["z"]
    assert chat._get_ls_params(model="other")["ls_model_name"] == "other"


async def test_eight_parallel_ainvokes_match_sequential_and_do_not_block(tiny: Any) -> None:
    chat = ChatSemGrad(scorer=tiny, max_tokens=6)
    prompts = [f"Count to {i}." for i in range(8)]
    seq = [await chat.ainvoke(p) for p in prompts]
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    t = asyncio.create_task(ticker())
    par = await asyncio.gather(*(chat.ainvoke(p) for p in prompts))
    stop.set()
    await t
    assert [m.content for m in par] == [m.content for m in seq]
    assert [read_score(m) for m in par] == [read_score(m) for m in seq]
    assert len(ticks) > 3  # the loop kept running while the eight generations ran in threads


def test_generation_precedence_is_defaults_then_call_then_guard_overrides() -> None:
    # The same order as SemGradLLM's (semgrad_guard.generation): a retry can resample a chain bound to greedy.
    from semgrad_guard import generation_overrides

    seen: list[dict[str, Any]] = []

    def answer(messages: Any, **kwargs: Any) -> str:
        seen.append(kwargs)
        return "ok"

    chat = ChatSemGrad(scorer=MockScorer(answers=answer), temperature=0.2, max_tokens=5, seed=3)
    chat.invoke("q", temperature=0, seed=4)  # the call beats the model's fields
    with generation_overrides(do_sample=True, temperature=0.9, seed=7):
        chat.invoke("q", temperature=0, seed=4)  # the guard's attempt beats the call
    assert seen == [
        {"max_new_tokens": 5, "do_sample": False, "seed": 4},
        {"max_new_tokens": 5, "do_sample": True, "temperature": 0.9, "seed": 7},
    ]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("stop", [None, ["Paris"]])
def test_sync_and_async_give_the_same_messages_and_payloads(streaming: bool, stop: list[str] | None) -> None:
    import asyncio

    from langchain_core.callbacks import BaseCallbackHandler

    from semgrad_guard import MockScorer

    class RunIds(BaseCallbackHandler):
        def __init__(self) -> None:
            self.ids: list[Any] = []

        def on_chat_model_start(self, *args: Any, run_id: Any, **kwargs: Any) -> None:
            self.ids.append(run_id)

    scorer = MockScorer(
        lambda m, a: 0.25 if a.endswith("Paris") else 0.5, answers=["It is Paris, in France."]
    )
    chat = ChatSemGrad(scorer=scorer, streaming=streaming)
    seen = RunIds()
    sync = chat.invoke("Capital of France?", stop=stop, config={"callbacks": [seen]})
    asyn = asyncio.run(chat.ainvoke("Capital of France?", stop=stop, config={"callbacks": [seen]}))
    assert (sync.content, sync.usage_metadata, sync.tool_calls) == (
        asyn.content,
        asyn.usage_metadata,
        asyn.tool_calls,
    )
    assert read_payload(sync) == read_payload(asyn)
    # Each message keeps the id of its own run (the async streaming path used to drop it).
    assert sync.id is not None and asyn.id is not None
    assert sync.id.startswith(f"lc_run--{seen.ids[0]}") and asyn.id.startswith(f"lc_run--{seen.ids[1]}")
    assert sync.id.removeprefix(f"lc_run--{seen.ids[0]}") == asyn.id.removeprefix(f"lc_run--{seen.ids[1]}")
