"""The ticker and the task tracker: one failing job or task never silences the others."""

from __future__ import annotations

import asyncio
import logging

import pytest

from holdover.control.ticker import Tasks, Ticker


def test_a_job_that_raises_is_counted_and_the_others_run(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    ran: list[str] = []
    t = Ticker()

    def bad(now: float) -> None:
        ran.append("bad")
        raise RuntimeError("boom")

    t.add("bad", 1.0, bad)
    t.add("good", 1.0, lambda now: ran.append("good"))
    t.add("slow", 5.0, lambda now: ran.append("slow"))
    for job in t.jobs:
        job.next_at = 0.0
    with caplog.at_level(logging.ERROR, "holdover.control"):
        for now in (1.0, 2.0, 3.0):
            t.run_due(now)
    assert ran.count("bad") == 3 and ran.count("good") == 3, ran
    assert ran.count("slow") == 1, "a job runs only when its interval has passed"
    assert t.errors == {"bad": 3, "good": 0, "slow": 0}
    assert "periodic job bad failed" in caplog.text


def test_a_failed_task_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> Tasks:
        tasks = Tasks()

        async def fails() -> None:
            raise ValueError("lost")

        async def works() -> int:
            return 1
        tasks.spawn(fails(), "doomed")
        tasks.spawn(works(), "fine")
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(tasks) == 0, "finished tasks are forgotten"
        return tasks

    with caplog.at_level(logging.ERROR, "holdover.control"):
        tasks = asyncio.run(main())
    assert tasks.failed == 1
    assert "background task doomed failed" in caplog.text
    assert "fine" not in caplog.text
