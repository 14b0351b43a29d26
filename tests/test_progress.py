"""Long loops leave progress lines (done / total, rate, ETA) in the rule's log, terminal or not."""

import logging
import re

from dermsynth import logs, progress


def test_a_loop_logs_progress_with_rate_and_eta_and_a_last_line(tmp_path, monkeypatch):
    log_file = tmp_path / "job.log"
    logs.setup(str(log_file), {"logs": {"progress_every_s": 1e-9}})
    assert progress.EVERY_S == 1e-9
    seen = list(progress.Bar(range(4), desc="train vit seed 0", unit="img"))
    logging.shutdown()
    assert seen == [0, 1, 2, 3]
    lines = [ln for ln in log_file.read_text().splitlines() if "progress train vit seed 0" in ln]
    assert len(lines) == 5  # one per item at this interval, then the last line
    assert re.search(r"progress train vit seed 0: 2/4 img \(50 %\), [\d.e+]+ img/s, ETA \d+m\d\ds$", lines[1])
    assert re.search(r"done, 4 img in \d+m\d\ds$", lines[-1])


def test_the_interval_comes_from_the_config_and_a_bar_can_grow(tmp_path):
    logs.setup(str(tmp_path / "a.log"), {})
    assert progress.EVERY_S == 60  # the schema's default
    bar = progress.Bar(total=0, desc="gen", unit="img")
    bar.total += 3  # generation adds each round's images to the bar
    bar.update(3)
    assert bar.line().startswith("progress gen: 3/3 img (100 %)")
    bar.close()
    quiet = progress.Bar(total=2, desc="x", disable=True)  # other processes of a multi-GPU run
    quiet.update(2)
    quiet.close()
    logging.shutdown()
    text = (tmp_path / "a.log").read_text()
    assert "progress gen: done, 3 img" in text and "progress x" not in text
