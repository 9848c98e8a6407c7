"""Reward functions: TRL's contract f(prompts, completions, **columns) -> list[float | None]."""
import math

import pytest

from hdc.errors import UserError
from trainer.rewards import accuracy, bind_params, extract_answer, format, length, resolve_reward, score


def test_accuracy_reads_answer_tags_and_boxed():
    completions = ["<think>12+34</think><answer>46</answer>", "so it is \\boxed{46}", "<answer>47</answer>",
                   "no answer here"]
    assert accuracy(["12+34"] * 4, completions, answer=["46"] * 4) == [1.0, 1.0, 0.0, 0.0]


def test_accuracy_compares_mathematically_with_math_verify():
    assert accuracy(["p"] * 2, ["\\boxed{\\frac{1}{2}}", "<answer>0.5</answer>"], answer=["1/2", "1/2"]) == [1.0, 1.0]


def test_accuracy_is_none_where_there_is_no_reference_answer():
    assert accuracy(["p", "q"], ["<answer>1</answer>", "<answer>1</answer>"], answer=["1", None]) == [1.0, None]


def test_conversational_completions_use_the_first_message_content():
    completion = [{"role": "assistant", "content": "<think>x</think><answer>3</answer>"}]
    assert accuracy(["p"], [completion], answer=["3"]) == [1.0]
    assert format(["p"], [completion]) == [1.0]


def test_format_requires_think_then_answer():
    completions = ["<think>a\nb</think><answer>1</answer>", "<answer>1</answer>", "<think>a</think><answer>1</answer>x"]
    assert format(["p"] * 3, completions) == [1.0, 0.0, 0.0]


def test_length_is_one_on_target_and_falls_off_linearly():
    assert length(["p"] * 3, ["x" * 10, "x" * 5, "x" * 40], target_length=10) == [1.0, 0.5, -1.0]


def test_extract_answer_balances_braces():
    assert extract_answer("\\boxed{\\frac{1}{2}} and more") == "\\frac{1}{2}"
    assert extract_answer("<answer>1</answer><answer>2</answer>") == "2"
    assert extract_answer("nothing") is None


def test_score_skips_none_in_the_weighted_sum():
    def only_even_rows(prompts, completions, **kw):
        return [1.0 if i % 2 == 0 else None for i in range(len(completions))]

    def always_half(prompts, completions, **kw):
        return [0.5] * len(completions)

    per_func, totals = score([only_even_rows, always_half], [2.0, 1.0], ["p", "q"], ["a", "b"], {})
    assert math.isnan(per_func[0][1])
    assert totals == [2.0 * 1.0 + 0.5, 0.5]


def test_a_row_no_function_scores_has_reward_nan_and_a_warning(caplog):
    # TRL 1.16: NaN, so that it is left out of the group's statistics (advantage 0, test_trainer_algorithm)
    def math_only(prompts, completions, task, **kw):
        return [1.0 if t == "math" else None for t in task]

    with caplog.at_level("WARNING", logger="trainer.rewards"):
        _, totals = score([math_only], [1.0], ["p", "q"], ["a", "b"], {"task": ["math", "chat"]})
    assert totals[0] == 1.0 and math.isnan(totals[1])
    assert "All reward functions returned None for 1 of 2 completions, e.g. prompt 'q'" in caplog.text


def test_dataset_columns_arrive_as_keywords():
    seen = {}

    def spy(prompts, completions, answer, level, **kw):
        seen.update(answer=answer, level=level)
        return [0.0] * len(completions)

    score([spy], [1.0], ["p"], ["c"], {"answer": ["7"], "level": [3]})
    assert seen == {"answer": ["7"], "level": [3]}


def test_params_are_bound_and_the_log_name_kept():
    bound = bind_params(length, {"target_length": 2})
    assert bound.__name__ == "length"
    assert bound(["p"], ["xx"]) == [1.0]


def test_rewards_resolve_by_builtin_name_or_import_path():
    assert resolve_reward("accuracy") is accuracy
    assert resolve_reward("trainer.rewards:length") is length
    with pytest.raises(UserError, match=r"rewards\[0\].func: cannot import module 'no_such_pkg.mod'"):
        resolve_reward("no_such_pkg.mod:f", "rewards[0].func")
    with pytest.raises(UserError, match="must be one of accuracy, format, length"):
        resolve_reward("acurracy", "rewards[0].func")


def test_reward_functions_get_trls_keywords_and_may_be_async():
    """TRL 1.16 passes completion_ids, trainer_state, log_extra and log_metric, and awaits async
    functions; a function declared with those parameters runs unchanged."""
    import asyncio

    from transformers import TrainerState

    seen, logged, extra = {}, {}, {}

    def trl_style(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, answer, **kw):
        seen.update(ids=completion_ids, step=trainer_state.global_step)
        log_extra("judge", [f"ok-{c}" for c in completions])
        log_metric("judge/mean", 0.5)
        return [float(len(ids)) for ids in completion_ids]

    async def remote_judge(prompts, completions, **kw):
        await asyncio.sleep(0)
        return [1.0 if c == a else 0.0 for c, a in zip(completions, kw["answer"])]

    state = TrainerState(global_step=7, max_steps=10)
    per_func, totals = score([trl_style, bind_params(remote_judge, {"unused": 1})], [1.0, 2.0], ["p", "q"],
                             ["3", "x"], {"answer": ["3", "4"]}, completion_ids=[[1, 2], [5]],
                             trainer_state=state, log_extra=lambda c, v: extra.setdefault(c, v),
                             log_metric=lambda n, v: logged.setdefault(n, v))
    assert per_func == [[2.0, 1.0], [1.0, 0.0]] and totals == [4.0, 1.0]
    assert seen == {"ids": [[1, 2], [5]], "step": 7}
    assert extra == {"judge": ["ok-3", "ok-x"]} and logged == {"judge/mean": 0.5}
