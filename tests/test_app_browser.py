"""The app as a person uses it: a real Chromium clicks Generate, uploads a bad file, reads the page.

Needs Debian's chromium and chromium-driver (`make browser`, which `make test` runs); without them
the test fails with that instruction rather than skipping, so CI cannot pass without a browser.
"""

from __future__ import annotations

from tools.browser import (
    app_server,
    by_css,
    chromium,
    click_tab,
    edit_in_page,
    generate_in_page,
    missing_browser,
    toast_text,
    upload,
)


def test_generate_and_bad_upload_in_chromium(tiny_model, tiny_data, tmp_path):
    problem = missing_browser()
    assert problem is None, problem
    with app_server(tiny_model, tiny_data) as (url, server), chromium() as page:
        page.get(url)
        sizes, _ = generate_in_page(page, label="AD", num_images=3, seed=7)
        assert sizes == [(256, 240)] * 3  # the native slice size, as many as asked
        assert "3 AD" in by_css(page, "#settings").text

        bad = tmp_path / "notes.png"
        bad.write_text("not an image at all")
        click_tab(page, "Counterfactual")
        upload(page, "slice-upload", bad)
        assert "notes.png is not a readable image" in toast_text(page)
        assert "Traceback" not in page.page_source

        good = sorted((tiny_data / "test" / "NC").glob("*.jpeg"))[0]
        upload(page, "slice-upload", good)  # then edit it towards AD
        notes = edit_in_page(page, source_label="NC")
        assert "NC -> AD" in notes and "p(AD)" in notes

        click_tab(page, "Generate")  # the server keeps serving after the bad input
        sizes, _ = generate_in_page(page, label="NC", num_images=1, seed=7)
        assert sizes == [(256, 240)]
        assert "1 NC" in by_css(page, "#settings").text
        assert server.poll() is None
