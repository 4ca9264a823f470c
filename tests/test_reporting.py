"""Results pages: provenance lines, and pages that keep one section per CPU."""

from __future__ import annotations

from nasbert.latency.measure import cpu_name
from nasbert.reporting import header, per_machine


def test_header_carries_the_command_machine_and_extra_fields():
    text = header("Speed", "python scripts/x.py", batch_size="1 and 32")
    lines = text.splitlines()
    assert lines[0] == "# Speed" and "- command: `python scripts/x.py`" in lines
    assert any(line.startswith("- machine: ") and cpu_name() in line for line in lines)
    assert lines[-1] == "- batch size: 1 and 32"


def test_per_machine_replaces_this_cpus_section_and_keeps_the_others(tmp_path):
    page = tmp_path / "speed.md"
    other = "## CPU: Another CPU (AVX512)\n\nits table\n"
    page.write_text(f"# old title\n\nold preamble\n\n## CPU: {cpu_name()}\n\nold here\n\n"
                    + other)
    text = per_machine(page, "# Speed\n\nshared lines", "new here")
    assert text.startswith("# Speed\n\nshared lines\n")
    assert f"## CPU: {cpu_name()}\n\nnew here\n" in text
    assert "old here" not in text and "old preamble" not in text
    assert other in text and text.count("## CPU: ") == 2
    page.write_text(text)  # again: still one section each
    assert per_machine(page, "# Speed", "newer").count("## CPU: ") == 2
    assert per_machine(tmp_path / "absent.md", "# Speed", "x").count("## CPU: ") == 1
