from worker.figures import write_block


def test_figures_go_between_their_marks_and_replace_the_last_run(tmp_path):
    page = tmp_path / "performance.md"
    page.write_text("# Performance\n\nHow to read these.\n")
    write_block(page, "bench:x", "X", "`run 1`:", ["1 a second"])
    write_block(page, "bench:x", "X", "`run 2`:", ["2 a second", "p99 3 ms"])
    text = page.read_text()
    assert text.startswith("# Performance\n\nHow to read these.\n\n## X\n")
    assert "run 1" not in text and "- 2 a second\n- p99 3 ms" in text
    assert text.count("<!-- bench:x:start -->") == 1
