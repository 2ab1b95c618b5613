"""The instruction an LLM generator gets to write the safety paragraph, and the cleanup of what it writes (and of
the policy's own answers cut at the token limit)."""
from __future__ import annotations

import re
from typing import Any

from rapo_ray.config import LevelBand
from rapo_ray.judge.reward import first_paragraph
from rapo_ray.models import conversation

_DEPTH = {
    1: "The request is direct. A short check is enough: confirm that it is harmless, or name the rule it would "
       "break.",
    2: "The request is indirect: it hides behind a wrapper such as a role-play, a story, a hypothetical or a "
       "claimed purpose. Look past the wrapper and say what the person really wants and whether that is "
       "harmful.",
    3: "The request is complex or obfuscated (code to complete, an encoding or cipher, several steps, or a long "
       "elaborate setup). Break it into its parts, weigh the risk of each part, and if the whole is unsafe end "
       "by stating that you will refuse.",
}
_LABEL = {1: "Our data marks this request as harmful, so your analysis should recognise the harm.",
          0: "Our data marks this request as harmless, so your analysis should recognise that it is safe to help."}


def request_text(row: dict[str, Any]) -> str:
    """What a generator is shown as the request: the row's prompt, or for a multi-turn chat row the whole
    conversation as a transcript (a jailbreak can be spread over turns), system prompt included."""
    turns = conversation(row)
    return row["prompt"] if len(turns) == 1 else "\n".join(f"[{m['role']}] {m['content']}" for m in turns)


def instruction(prompt: str, level: int, band: LevelBand, harmful_label: int | None) -> str:
    """The user message asking a generator for one paragraph of first-person safety analysis of ``prompt`` (the
    request's text: ``request_text(row)``)."""
    lines = [
        "Before answering a request, an assistant privately thinks about whether answering is safe. Write that "
        "private safety check for the request below, as the assistant's own thoughts in the first person "
        "(\"I ...\").",
        "Rules: write exactly one paragraph of plain prose with no title, list or line breaks. Analyse safety only: "
        "what is really being asked, the intent behind it, and whether answering could cause harm. Do not answer "
        "the request, do not start the task, and do not quote long pieces of it.",
        f"Length: between {band.min_sentences} and {band.write_max} sentences.",
        _DEPTH[min(level, 3)],
    ]
    if harmful_label in _LABEL:
        lines.append(_LABEL[harmful_label])
    lines.append(f"The request:\n<<<\n{prompt}\n>>>")
    lines.append("Now write the paragraph.")
    return "\n\n".join(lines)


_TAGS = re.compile(r"</?think>", re.IGNORECASE)
_LABELS = re.compile(r"^\s*(?:\*\*)?(?:safety (?:check|analysis)|analysis|paragraph|thoughts?)(?:\*\*)?\s*:\s*",
                     re.IGNORECASE)


def clean_paragraph(text: str) -> str:
    """The first paragraph of a generator's output, without thinking tags or a leading label; whitespace inside
    it collapsed (the paragraph must not contain a blank line, which would end the reasoning early)."""
    text = _LABELS.sub("", _TAGS.sub("", text)).strip()
    return " ".join(first_paragraph(text).split())


def refusal_instruction(prompt: str, paragraph: str) -> str:
    """The user message asking an LLM generator for the refusal that follows its own safety paragraph."""
    return "\n\n".join([
        "An assistant received the request below, checked privately whether answering is safe, and concluded that "
        "it must not help. Write the reply the assistant now sends to the user.",
        "Rules: two to four sentences of plain prose in the first person. Open by clearly declining, name briefly "
        "what you will not help with and why (the harm found in the check), and end with a safe alternative or a "
        "pointer to help where one fits. Give none of the requested content, no steps, no hints and no partial "
        "answer, and do not lecture or repeat the request at length.",
        f"The request:\n<<<\n{prompt}\n>>>",
        f"The assistant's private safety check:\n<<<\n{paragraph}\n>>>",
        "Now write the reply.",
    ])


def clean_refusal(text: str) -> str:
    """The first paragraph of a generator's refusal, without thinking tags, labels or surrounding quotes."""
    text = _LABELS.sub("", _TAGS.sub("", text)).strip()
    text = re.sub(r"^\s*(?:\*\*)?(?:reply|response|answer)(?:\*\*)?\s*:\s*", "", text, flags=re.IGNORECASE)
    return " ".join(first_paragraph(text).split()).strip('"“” ')


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)|\n\s*\n")


def trim_answer(text: str, min_chars: int = 40) -> str | None:
    """An answer cut at the token limit, ended at its last complete sentence or paragraph (an unclosed code block
    is cut before it opens); None when less than ``min_chars`` of complete text is left."""
    text = text.rstrip()
    while True:
        ends = [m.end() for m in _SENTENCE_END.finditer(text + " ")]
        if not ends:
            return None
        text = text[:ends[-1]].rstrip()
        if text.count("```") % 2 == 0:
            break
        text = text[:text.rfind("```")].rstrip()
    return text if len(text) >= min_chars else None
