"""The instruction an LLM generator gets to write the safety paragraph, and the cleanup of what it writes."""
from __future__ import annotations

import re

from rapo_ray.config import LevelBand
from rapo_ray.judge import first_paragraph

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


def instruction(prompt: str, level: int, band: LevelBand, harmful_label: int | None) -> str:
    """The user message asking a generator for one paragraph of first-person safety analysis of ``prompt``."""
    lines = [
        "Before answering a request, an assistant privately thinks about whether answering is safe. Write that "
        "private safety check for the request below, as the assistant's own thoughts in the first person "
        "(\"I ...\").",
        "Rules: write exactly one paragraph of plain prose with no title, list or line breaks. Analyse safety only: "
        "what is really being asked, the intent behind it, and whether answering could cause harm. Do not answer "
        "the request, do not start the task, and do not quote long pieces of it.",
        f"Length: between {band.min_sentences} and {band.max_sentences} sentences.",
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
