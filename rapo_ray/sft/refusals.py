"""The template refusal: the short answer that follows a harmful prompt's safety paragraph when the policy itself
never refused (small models almost never do).

It reads the same findings as the paragraph (``rapo_ray.sft.template.find``): the harm area the paragraph named
decides what is declined and which safe alternative is offered; the level decides whether the answer also says
that the wrapper (role-play, story, encoding, nested task) changes nothing. Every part has several wordings,
drawn with a seed, so the data does not teach one stock sentence. Every opening is a plain first-person decline,
which the rule judge's refusal detector reads as a refusal, and nothing after it goes on to comply.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from rapo_ray.sft.template import Findings, find

_GENERAL = "general"


@dataclass(frozen=True)
class Area:
    """How a refusal talks about one harm area."""

    what: tuple[str, ...]  # noun phrases of the thing declined ("instructions for ...")
    why: tuple[str, ...]  # one sentence each: what helping could lead to
    instead: tuple[str, ...]  # one sentence each: a safe alternative


AREAS: dict[str, Area] = {
    "weapons and explosives": Area(
        ("instructions for making or using weapons or explosives", "anything that would help build a weapon",
         "details on building or setting off explosive devices"),
        ("Information like that can get people badly hurt or killed.",
         "Even a rough outline of it could end with someone injured or dead."),
        ("If you are curious about the science or history behind it, I am happy to talk about that in general terms.",
         "If you have come across something that looks dangerous, please keep away from it and call the police.")),
    "chemical or biological agents": Area(
        ("instructions for producing or spreading toxic, chemical or biological agents",
         "recipes for poisons or dangerous pathogens"),
        ("Agents like these can hurt or kill many people at once.",
         "A single mistake or misuse here could cause mass casualties."),
        ("I can explain how public health agencies detect and respond to such threats instead.",
         "If you think someone has been exposed to something toxic, contact poison control or emergency services.")),
    "illegal drugs": Area(
        ("instructions for making, getting or selling illegal drugs", "a recipe or a supply plan for illegal drugs"),
        ("That could feed addiction and put people's health and lives at risk.",
         "Making or trading these substances is dangerous and illegal, and people get hurt by it."),
        ("If you or someone close to you is struggling with drug use, I can point you to treatment and support "
         "services.",
         "I am glad to share factual information on the health effects and risks of these substances instead.")),
    "hacking and malware": Area(
        ("instructions for breaking into systems, accounts or devices", "malicious code or the steps of an attack",
         "a way into systems that are not yours"),
        ("It could be used to steal data or damage systems that belong to other people.",
         "Attacks like this cause real harm to the people and organisations on the other end."),
        ("If you want to learn security, I can suggest legal ways to practise, such as capture-the-flag challenges "
         "or a lab of your own machines.",
         "I can help you protect your own systems and accounts instead.")),
    "fraud and theft": Area(
        ("a scheme to scam, defraud or steal from people", "a plan to deceive people or take what is not yours"),
        ("That would cost real victims their money, their savings or their identity.",
         "Schemes like this hurt people who trusted the wrong person."),
        ("I can help you recognise these schemes and protect yourself or others from them instead.",
         "If money is tight, I am happy to help you look at legitimate options.")),
    "violence against people": Area(
        ("instructions for hurting someone", "a plan to attack or harm a person", "ways to injure people"),
        ("Someone could be seriously injured or killed.",
         "Helping with this could lead directly to a person getting hurt."),
        ("If you are in a conflict with someone, I can help you think through ways to step back or get support.",
         "If anyone is in immediate danger, please contact emergency services.")),
    "self-harm": Area(
        ("information that could help someone hurt themselves", "methods of self-harm or suicide"),
        ("Your safety matters more than answering the question as asked.",
         "I do not want to give anything that could put your life at risk."),
        ("If you are thinking about hurting yourself, please reach out to someone you trust or a local crisis line; "
         "you do not have to face this alone.",
         "Talking to a doctor, a counsellor or a crisis line can really help, and I am here to listen too.")),
    "hate and harassment": Area(
        ("content that demeans, harasses or threatens people", "writing that attacks a group or a person"),
        ("Content like this hurts people and can stir up hostility against them.",
         "It would target real people for who they are."),
        ("I am glad to help you make a point firmly and respectfully instead.",
         "If you are dealing with harassment yourself, I can help you think about how to report it.")),
    "privacy violations": Area(
        ("ways to track, watch or expose someone without their consent",
         "someone's private information"),
        ("That could put someone's safety and private life at serious risk.",
         "Nobody should be tracked or exposed without knowing it."),
        ("If you are worried about someone's safety, the right step is to contact the authorities.",
         "I can help you protect your own privacy instead.")),
    "misinformation": Area(
        ("false or misleading content meant to deceive people", "fabricated claims presented as fact"),
        ("It could mislead the public and damage trust or reputations.",
         "Made-up claims like this spread quickly and do real damage."),
        ("I can help you write something persuasive that sticks to accurate, checkable facts.",
         "I am happy to help you research what the evidence actually says.")),
    "extremism": Area(
        ("material that promotes or organises violent extremism", "propaganda or recruitment for violent groups"),
        ("It could help draw people into violence.",
         "Material like this has been used to recruit people into violent movements."),
        ("I can explain how extremist recruitment works so people can recognise and resist it.",
         "I am glad to discuss the history of these movements in a factual way.")),
    "sexual exploitation": Area(
        ("sexual content that exploits or endangers people", "anything that sexualises or exploits someone"),
        ("It could cause serious harm to vulnerable people.",
         "Content like this exploits people and is never acceptable."),
        ("If you know of someone at risk, please contact local authorities or a child-protection hotline.",
         "I can share resources on recognising and reporting exploitation instead.")),
    _GENERAL: Area(
        ("what this request asks for", "the help this request is after"),
        ("It could hurt other people or break the law.", "Going along with it could cause real harm."),
        ("If there is a legitimate goal behind it, tell me more and I will help where I safely can.",
         "I am happy to help with a safe version of what you are trying to do.")),
}

# Openings: {what} is the area's noun phrase; each one declines in the first person.
_OPENINGS = (
    "I can't help with {what}.",
    "I won't provide {what}.",
    "I'm not able to help with {what}.",
    "Sorry, but I can't give you {what}.",
    "I have to decline: I won't write out {what}.",
    "That's not something I can help with, since it asks for {what}.",
    "I'm not going to help with {what}.",
)
# Level 2: the framing is not a reason to comply.
_FRAMING = (
    "Putting it inside {wrapper} doesn't change what the answer would contain.",
    "Using {wrapper} doesn't make the content any safer.",
    "Wrapping the request in {wrapper} doesn't change my answer.",
)
# Level 1, when the request's own words are short enough to name: the decline quotes its gist.
_QUOTED = (
    'I won\'t help with "{ask}": that would mean giving {what}.',
    'I can\'t do that ("{ask}"), because it asks for {what}.',
)
_QUOTE_WORDS = 10
# Level 3+: neither is the packaging into parts, code or encodings.
_PACKAGING = (
    "Splitting it into steps, code or encoded text doesn't change what is being asked, so I won't complete any "
    "part of it.",
    "However it is packaged, {wrapper} included, the request still adds up to the same harmful help, so I won't "
    "fill in any of it.",
    "The layers around the request don't change its goal, so I won't work through any of the parts.",
)


def _article(wrapper: str) -> str:
    """A wrapper description from the findings ("a role-play that ...") reads as is; others get "this"."""
    return wrapper if wrapper.split(" ", 1)[0] in ("a", "an", "the", "instructions", "several") else f"this {wrapper}"


def area_of(f: Findings) -> str:
    return f.risk[0] if f.risk and f.risk[0] in AREAS else _GENERAL


def template_refusal(prompt: str, level: int, seed: int) -> str:
    """A short refusal of the harmful ``prompt`` (2-4 sentences), specific to its harm area and, at levels 2 and
    3+, to its wrapper; deterministic for a seed."""
    rng = random.Random(seed)
    f = find(prompt)
    area = AREAS[area_of(f)]
    what = rng.choice(area.what)
    quotable = level <= 1 and not f.cues and len(f.ask.split()) <= _QUOTE_WORDS and not f.ask.endswith("…")
    opening = rng.choice(_OPENINGS + (_QUOTED if quotable else ()))
    out = [opening.format(what=what, ask=f.ask[:1].lower() + f.ask[1:]), rng.choice(area.why)]
    wrapper = _article(f.wrappers[0]) if f.wrappers else None
    if level >= 3:
        out.append(rng.choice(_PACKAGING if wrapper else _PACKAGING[::2]).format(wrapper=wrapper))
    elif level == 2:
        out.append(rng.choice(_FRAMING).format(wrapper=wrapper or "a story or a hypothetical"))
    out.append(rng.choice(area.instead))
    return " ".join(out)
