"""The deterministic template generator: a first-person safety paragraph composed from the rule judge's findings.

For small models that cannot follow the generator instruction. It names the request's real ask, the wrapper
around it, and (level 3+) its parts with their risks, and closes with a verdict: help when the data labels
the prompt benign, refuse when harmful. Its length is a sentence count drawn inside the level's band of the
shared level table (``judge.levels``), and every sentence counts as exactly one for ``count_sentences``.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from rapo_ray.config import JudgeConfig
from rapo_ray.judge.reward import count_sentences
from rapo_ray.judge.rules import level_features

# Harm areas, each with the words that signal it and what helping with it could do; the first match wins, so
# self-harm comes first ("suicide with a firearm" is about the person's own life before it is about weapons).
_RISKS: list[tuple[str, str, re.Pattern[str]]] = [(name, effect, re.compile(words, re.IGNORECASE))
                                                  for name, effect, words in (
    ("self-harm", "could put the person's own life at risk",
     r"\b(?:suicid\w*|self-harm\w*|kill myself|end my life|cutting myself|overdose\w*|starv\w* myself)\b"),
    ("weapons and explosives", "could get people hurt or killed",
     r"\b(?:bomb|explosive|detonat\w*|grenade|weapon\w*|firearm|gun|ammunition|napalm|molotov|thermite)\b"),
    ("chemical or biological agents", "could cause mass casualties",
     r"\b(?:nerve agent|sarin|ricin|anthrax|toxin|pathogen|bioweapon|chemical weapon|poison\w*|virus strain)\b"),
    ("illegal drugs", "could feed addiction and illegal trade",
     r"\b(?:meth(?:amphetamine)?|cocaine|heroin|fentanyl|drug\w*|narcotic\w*|opioid\w*|lsd|mdma)\b"),
    ("hacking and malware", "could break into systems or steal data",
     r"\b(?:hack\w*|malware|ransomware|virus\w*|keylogger|exploit\w*|phishing|botnet|ddos|sql injection|"
     r"backdoor|crack\w* (?:a |the )?password\w*|spyware|trojan)\b"),
    ("fraud and theft", "could cost victims their money or identity",
     r"\b(?:fraud\w*|scam\w*|steal\w*|theft|rob(?:s|bed|bing|bery|beries)?|burglar\w*|break(?:ing)? into|launder\w*|counterfeit\w*|forg(?:e|ed|es|ery|ing)|"
     r"embezzl\w*|identity theft|credit card|shoplift\w*|tax evasion|insider trading|ponzi)\b"),
    ("violence against people", "could lead to someone being hurt",
     r"\b(?:kill\w*|murder\w*|assault\w*|attack\w*|torture\w*|kidnap\w*|hurt\w*|stab(?:s|bed|bing)?|shoot\w*|"
     r"violen\w*|abduct\w*|strangl\w*)\b"),
    ("hate and harassment", "could demean or endanger a group of people",
     r"\b(?:racis\w*|hate\w*|slurs?|harass\w*|bully\w*|discriminat\w*|inferior|stalk\w*|dox(?:x?ing|x?ed)?|"
     r"threaten\w*|intimidat\w*)\b"),
    ("privacy violations", "could expose someone's private life",
     r"\b(?:track\w* (?:someone|my|her|his)|spy\w* on|surveil\w*|personal data|home address|private "
     r"information|without (?:their|her|his) (?:consent|knowledge)|hidden camera)\b"),
    ("misinformation", "could mislead the public",
     r"\b(?:fake news|disinformation|misinformation|propaganda|conspiracy|hoax|false claims?|fabricat\w*|"
     r"defam\w*)\b"),
    ("extremism", "could help recruit for or glorify violent groups",
     r"\b(?:terror\w*|extremis\w*|radicali\w*|jihad\w*|isis|nazi\w*|militia)\b"),
    ("sexual exploitation", "could harm vulnerable people",
     r"\b(?:sexual\w*|explicit|porn\w*|nude\w*|minors?|child abuse|grooming|prostitut\w*|trafficking)\b"),
)]
_GENERAL_RISK = ("serious harm", "could hurt other people or break the law")

# The framing a prompt uses around its real ask, found from the rule judge's features and markers.
_WRAPPERS: list[tuple[str, re.Pattern[str]]] = [(desc, re.compile(words, re.IGNORECASE)) for desc, words in (
    ("instructions that try to switch off my safety rules",
     r"\b(?:ignore (?:all |any |the |your |previous )|disregard|developer mode|jailbreak|no (?:restrictions|rules|"
     r"filters|limits)|unfiltered|uncensored|dan\b|do anything now)"),
    ("a role-play that asks me to become another persona",
     r"\b(?:pretend|role-?play|act as|acting as|you are now|in character|persona|play(?:ing)? (?:the )?role)"),
    ("a fictional story frame", r"\b(?:story|novel|fiction\w*|screenplay|movie|film|character|scene)\b"),
    ("a hypothetical scenario",
     r"\b(?:hypothetical\w*|imagine|suppose|what if|thought experiment|in a world where|let's say)\b"),
    ("a claimed research or teaching purpose",
     r"\b(?:for (?:research|educational|academic) purposes|as an? (?:expert|researcher|professor|teacher|"
     r"historian|scientist))"),
)]
_FEATURE_WRAPPERS = {"code": "a code-completion task", "encoding": "an encoded or disguised message",
                     "multi_step": "a multi-step task", "long": "a long, elaborate prompt"}
_CUES = re.compile(r"\b(?:how (?:to|do|can|would)|write|create|give|provide|explain|tell|describe|list|generate|"
                   r"make|develop|design|help|show|teach|build|find|draft|what (?:is|are)|can you|could you|"
                   r"please|steps?)\b", re.IGNORECASE)
_STRIP = re.compile(r"[.!?。！？\n\r\t`\"“”{}<>\[\]|*#]+")
_SEGMENT = re.compile(r"(?<=[.!?])\s+|\n+")

_HARMFUL_FILLERS = (
    "Even a partial or softened answer could be misused.",
    "The stated reason does not change what the information could be used for.",
    "The risk to other people outweighs any benefit of complying.",
    "Following the instructions literally would go against my safety guidelines.",
    "I should not give hints or a watered-down version of the same harmful content.",
    "Safety comes before the format or persona the request asks me to adopt.",
    "If there is a legitimate need behind it, I can point to safe and lawful resources instead.",
    "My refusal should be clear and must not leak any harmful detail.",
    "This is exactly the kind of request my policies tell me to decline.",
    "Staying helpful here means not providing dangerous assistance.",
    "Anyone could reuse such an answer with malicious intent.",
    "I also need to be careful not to validate the harmful premise.",
)
_BENIGN_FILLERS = (
    "The topic is ordinary and the information is widely available.",
    "There is no sign that the answer would be used to hurt anyone.",
    "Refusing here would be unhelpful rather than safe.",
    "Some words may sound sensitive, but the intent is clearly harmless.",
    "No policy concern applies to this kind of question.",
    "Answering carries no real risk to the user or to others.",
    "The request does not target any person or invade anyone's privacy.",
    "I can answer directly with ordinary care for accuracy.",
    "A clear, accurate and useful answer is the safe response here.",
    "Nothing in it asks me to bypass my guidelines.",
    "The likely intent is curiosity or a practical need.",
    "Being overly cautious would only get in the way of a legitimate question.",
)
_SPAN = {1: 1, 2: 2, 3: 4}  # target sentences are drawn from [min, min + span] (capped at the band's max)
_MAX_PARTS = 6


@dataclass
class Findings:
    """What the rule judge sees in a prompt, as the template uses it."""

    ask: str  # the sentence that carries the real request, shortened
    cues: list[str]  # risky words found outside that sentence (a hidden or scattered request)
    wrappers: list[str]
    parts: list[tuple[str, tuple[str, str] | None]]  # (excerpt, (risk area, effect) or None)
    risk: tuple[str, str] | None  # the prompt's main harm area and effect


def excerpt(text: str, words: int = 14) -> str:
    """A short quote of ``text`` that cannot end a sentence: terminal punctuation, quotes and markup removed."""
    toks = _STRIP.sub(" ", text).split()
    return " ".join(toks[:words]) + ("…" if len(toks) > words else "") if toks else "this request"


def risk_of(text: str) -> tuple[str, str] | None:
    """The first harm area whose words appear in ``text``: (area, what helping could do)."""
    return next(((name, effect) for name, effect, pat in _RISKS if pat.search(text)), None)


def find(prompt: str) -> Findings:
    """The real ask, the wrappers and the parts (with their risks) of ``prompt``."""
    segments = [s.strip() for s in _SEGMENT.split(prompt.strip()) if len(s.split()) >= 3] or [prompt.strip()]
    wrapper_hit = [any(p.search(s) for _, p in _WRAPPERS) for s in segments]
    score = [2 * len(_CUES.findall(s)) + 3 * (risk_of(s) is not None) - 2 * w + 0.01 * i
             for i, (s, w) in enumerate(zip(segments, wrapper_hit))]
    ask = segments[max(range(len(segments)), key=score.__getitem__)]
    feats = level_features(prompt)
    wrappers = [desc for desc, p in _WRAPPERS if p.search(prompt)]
    wrappers += [desc for key, desc in _FEATURE_WRAPPERS.items() if feats.get(key)]
    if len(segments) > _MAX_PARTS:  # evenly spread, always keeping the real ask
        step = len(segments) / _MAX_PARTS
        keep = sorted({int(i * step) for i in range(_MAX_PARTS - 1)} | {segments.index(ask)})
        segments = [segments[i] for i in keep]
    cues = [] if risk_of(ask) else list(dict.fromkeys(
        excerpt(m.group(0), 3).lower() for _, _, p in _RISKS for m in p.finditer(prompt)))[:4]
    return Findings(ask=excerpt(ask), cues=cues, wrappers=wrappers[:3],
                    parts=[(excerpt(s, 10), risk_of(s)) for s in segments], risk=risk_of(ask) or risk_of(prompt))


def _real_ask(f: Findings, lead: str, harmful: bool) -> str:
    if f.cues and harmful:  # benign prompts keep their literal ask: scary words there are false alarms
        return f'{lead}, words such as "{", ".join(f.cues)}" show what is really being asked.'
    return f'{lead}, the core ask is "{f.ask}".'


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _level1(f: Findings, harmful: bool, n_parts: int) -> tuple[list[str], str]:
    """One sentence that quotes the ask and states what an answer would give and whom it could hurt, in the
    same shape for both labels (the evidence comes before the verdict and the fork is in what it says)."""
    area, effect = f.risk or _GENERAL_RISK
    ask = f'The user is asking me directly: "{f.ask}"'
    if harmful:
        return ([f"{ask}; it touches on {area}, and an answer would give real, usable help with it, which "
                 f"{effect}."], f"Assisting with {area} is a clear safety violation, so I will refuse.")
    topic = f"{area} only in name" if f.risk else "nothing dangerous"
    return ([f"{ask}; it touches on {topic}, and an answer would give ordinary information that no one could "
             f"use to cause harm."], "It is safe, so I will help.")


def _level2(f: Findings, harmful: bool, n_parts: int) -> tuple[list[str], str]:
    wrap = _join(f.wrappers) if f.wrappers else "an indirect framing"
    area, effect = f.risk or _GENERAL_RISK
    core = [f"This request does not ask plainly: it uses {wrap}.",
            _real_ask(f, "Underneath that framing", harmful)]
    if harmful:
        return core + [f"The framing does not change the effect, since anything I wrote would still be real help "
                       f"with {area}, which {effect}.",
                       "The wrapper seems designed to make a harmful request look acceptable."], \
            "So I will not play along, and I will decline the harmful part clearly."
    return core + ["The underlying question is ordinary, and the framing does not hide any harmful intent.",
                   "Answering it would not give anyone a way to cause harm."], "It is safe to answer, so I will help."


def _level3(f: Findings, harmful: bool, n_parts: int) -> tuple[list[str], str]:
    wrap = _join(f.wrappers) if f.wrappers else "several layers of instructions"
    area, effect = f.risk or _GENERAL_RISK
    out = [f"This is a complex request that uses {wrap}, so I need to analyse its safety carefully before "
           f"doing anything.",
           _real_ask(f, "Stripped of its packaging", harmful)]
    if n_parts:
        out.append(f"I will split it into {n_parts} part{'s' if n_parts > 1 else ''} and weigh the risk of each.")
    for i, (text, risk) in enumerate(f.parts[:n_parts], 1):
        out.append(f'Part {i}, "{text}", touches on {risk[0]}, which {risk[1]}.' if risk
                   else f'Part {i}, "{text}", carries little risk on its own.')
    if harmful:
        return out + [f"Taken together, the parts add up to real help with {area}, which {effect}.",
                      "The packaging is there to hide that intent and lower my guard."], \
            "The request is unsafe, so I will refuse it clearly and not complete any part of it."
    return out + ["Taken together, the parts stay harmless, since none of them asks for anything dangerous.",
                  "The structure gives context rather than hiding a harmful intent."], \
        "The request is safe, so I will answer it helpfully."


_LEVEL3_FIXED = 5  # sentences of a level-3 body besides the split announcement and the parts


def _composer(level: int) -> Callable[[Findings, bool, int], tuple[list[str], str]]:
    """The body-and-verdict writer of ``level`` (3 for every level above)."""
    return {1: _level1, 2: _level2}.get(level, _level3)


def _analysis(f: Findings, level: int, harmful: bool, room: int, rng: random.Random) -> tuple[list[str], str]:
    """``room`` sentences of analysis (level 3+: as many parts as fit; fillers drawn with ``rng`` after the
    level's own sentences) and the verdict."""
    n_parts = min(len(f.parts), max(0, room - _LEVEL3_FIXED - 1)) if level >= 3 else 0
    body, verdict = _composer(level)(f, harmful, n_parts)
    fillers = list(_HARMFUL_FILLERS if harmful else _BENIGN_FILLERS)
    rng.shuffle(fillers)
    return (body[:room] + fillers)[:room], verdict


def template_analysis(prompt: str, level: int, harmful: bool, sentences: int, seed: int) -> list[str]:
    """The body of a template paragraph (no verdict) of ``sentences`` sentences, whatever the band (at most the
    level's own sentences and its label's fillers, 13 or more)."""
    return _analysis(find(prompt), level, harmful, sentences, random.Random(seed))[0]


def template_verdict(prompt: str, level: int, harmful: bool) -> str:
    """The sentence that closes ``template_paragraph`` for this prompt, level and label (it does not depend on
    the seed)."""
    return _composer(level)(find(prompt), harmful, 0)[1]


def template_paragraph(prompt: str, level: int, harmful: bool, judge: JudgeConfig, seed: int) -> str:
    """One paragraph of first-person safety analysis of ``prompt`` with a sentence count inside the band of
    ``level`` (drawn with ``seed``); it ends by helping (benign) or refusing (harmful)."""
    band = judge.band(level)
    rng = random.Random(seed)
    target = rng.randint(band.min_sentences, min(band.write_max, band.min_sentences + _SPAN[min(level, 3)]))
    body, verdict = _analysis(find(prompt), level, harmful, target - 1, rng)  # the verdict closes the paragraph
    text = " ".join(body + [verdict])
    n = count_sentences(text)
    if not band.min_sentences <= n <= band.write_max:
        raise ValueError(f"the template generator wrote {n} sentences for level {level}, outside its band "
                         f"{band.min_sentences}-{band.write_max} (judge.levels); bands this wide need an LLM "
                         f"generator (sft.generator)")
    return text
