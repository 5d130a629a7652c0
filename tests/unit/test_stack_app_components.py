"""The stack's app components: `make status` tells the runner the job was started on, whatever the
shell asking has set; the generator never repeats a run's event ids."""

from __future__ import annotations

from pathlib import Path

from devstack.stack.components import RUNNER_FILE, Pipeline, StackContext


def _context(tmp_path: Path, runner: str | None) -> StackContext:
    environ = {} if runner is None else {"SA_PIPELINE_RUNNER": runner}
    return StackContext(tmp_path, tmp_path / "tools", environ,
                        endpoints={"SA_FLINK_REST_URL": "http://127.0.0.1:9"})


def test_status_reports_the_recorded_runner_not_the_asking_shells(tmp_path: Path) -> None:
    # `SA_PIPELINE_RUNNER=prism make run`, then `make status` from a shell without the variable.
    (tmp_path / "data" / "pipeline").mkdir(parents=True)
    (tmp_path / "data" / "pipeline" / RUNNER_FILE).write_text("prism")
    urls = Pipeline().urls(_context(tmp_path, None))
    assert urls["Pipeline"].startswith("runner prism;")
    assert "Flink job" not in urls  # a Prism job has no Flink job to look up


def test_without_a_record_the_setting_decides(tmp_path: Path) -> None:
    urls = Pipeline().urls(_context(tmp_path, "flink"))
    assert urls["Pipeline"].startswith("runner flink;")
    assert urls["Flink job"] == "not submitted yet"


def test_each_generator_start_has_its_own_seed(tmp_path: Path) -> None:
    """The same seed repeats the same event ids: a job restored from its savepoint would drop a
    restarted generator's events as duplicates."""
    from devstack.stack.components import Generator

    ctx = _context(tmp_path, None)
    seeds = set()
    for _ in range(5):
        (spec,) = Generator().prepare(ctx)
        seeds.add(spec.argv[spec.argv.index("--seed") + 1])
    assert len(seeds) == 5
