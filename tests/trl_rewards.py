"""Reward functions written the way a TRL ``GRPOTrainer`` user writes them (no rapo_ray import): the tests pass
them to ``judge.reward_hooks`` unchanged."""
import re


def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]


def format_reward(completions, **kwargs):
    pattern = r"^<think>.*?</think>.+$"
    return [1.0 if re.match(pattern, content, re.DOTALL) else 0.0 for content in completions]


def token_budget(completion_ids, **kwargs):
    return [1.0 if len(ids) <= 8 else -1.0 for ids in completion_ids]


def exact_answer(prompts, completions, answer, **kwargs):
    """Only rows with a reference answer: None elsewhere (TRL: the reward does not apply)."""
    return [None if ref is None else float(ref in completion) for completion, ref in zip(completions, answer)]


async def remote_grader(prompts, completions, completion_ids, trainer_state, **kwargs):
    return [0.5 for _ in completions]


def training_progress(completions, trainer_state, **kwargs):
    """A curriculum term read from the trainer state TRL passes."""
    return [trainer_state.global_step / trainer_state.max_steps for _ in completions]


def conversation_turns(prompts, completions, **kwargs):
    """Conversational format: each prompt a message list, each completion a one-message assistant list."""
    return [float(len(p)) if isinstance(p, list) and c[0]["role"] == "assistant" else 0.0
            for p, c in zip(prompts, completions)]
