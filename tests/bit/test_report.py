"""The analysis report: the same sections in Markdown and in the self-contained HTML page."""

from components.bit import dataset, report
from components.bit.analysis import AnalysisConfig, analyze


def test_markdown_and_html_reports_hold_the_same_sections(digits_folder, tmp_path):
    result = analyze(AnalysisConfig(str(digits_folder), progress=False))
    sections = report.sections(result.stats, result.hyperrule)
    titles = [section.title for section in sections]
    assert titles[0] == "Dataset" and len(titles) == len(set(titles))
    report.write_reports(result.stats, result.hyperrule, str(tmp_path))
    markdown = (tmp_path / dataset.REPORT_MARKDOWN).read_text()
    page = (tmp_path / dataset.REPORT_HTML).read_text()
    for title in titles:
        assert f"## {title}" in markdown and f"<h2>{title}</h2>" in page
    assert f"{result.stats['totals']['valid']:,} valid" in markdown
    assert page.count("data:image/png;base64,") == 2 and "http" not in page.split("<body>")[1]


def test_a_pipe_in_a_class_name_does_not_break_the_markdown_table(tmp_path):
    assert report._md("a|b\nc") == "a\\|b c"
