"""When the loop logs, samples, checkpoints and evaluates."""

from p2p_dist.train.cadence import Cadence


def steps_where(decision, total: int) -> list[int]:
    return [step for step in range(1, total + 1) if decision(step)]


def test_each_action_runs_at_its_interval_and_at_the_last_step():
    cadence = Cadence(total_steps=10, log_every=3, sample_every=4, checkpoint_every=5, eval_every=0)
    assert steps_where(cadence.log, 10) == [3, 6, 9, 10]
    assert steps_where(cadence.sample, 10) == [4, 8, 10]
    assert steps_where(lambda s: cadence.checkpoint(s, stopping=False), 10) == [5, 10]


def test_no_periodic_evaluation_when_eval_every_is_zero():
    cadence = Cadence(total_steps=10, log_every=1, sample_every=1, checkpoint_every=1, eval_every=0)
    assert steps_where(cadence.evaluate, 10) == []


def test_every_evaluation_and_an_early_stop_come_with_a_checkpoint_of_their_step():
    cadence = Cadence(total_steps=10, log_every=1, sample_every=100, checkpoint_every=100, eval_every=4)
    assert steps_where(cadence.evaluate, 10) == [4, 8, 10]
    assert steps_where(lambda s: cadence.checkpoint(s, stopping=False), 10) == [4, 8, 10]
    assert cadence.checkpoint(3, stopping=True)
