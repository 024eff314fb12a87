"""poisongen.pipeline helpers."""

from poisongen import pipeline


def test_the_recorded_command_drops_the_job_count_in_every_spelling():
    cmd = ["poisongen", "nni", "--rate", "0.1", "--jobs", "4", "-j", "2", "--jobs=3", "-j5", "-q"]
    assert pipeline.normalised_command(cmd) == ["poisongen", "nni", "--rate", "0.1", "-q"]
