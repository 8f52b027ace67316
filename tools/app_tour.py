"""Use the app as a person would, in Chromium: a screenshot of each tab, the time from the click
on Generate to the full gallery, and the server's memory.

    python -m tools.app_tour --model outputs/demo/model --data data/phantom --out docs/app

Prints the figures and writes OUT/{generate,counterfactual,map,model}.png and OUT/tour.json. The
click-to-gallery time is the median of --repeats requests of --num_images images (after one
warm-up), each with its own seed; the memory is the server's peak resident set (VmHWM).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

from pipelines.cli import DEFAULT_DATA, DEFAULT_MODEL, script_parser
from pipelines.counterfactual import level_beside
from pipelines.errors import UserError, cli_entry
from pipelines.files import write_json
from tools.browser import (
    app_server,
    by_css,
    chromium,
    click,
    click_tab,
    edit_in_page,
    generate_in_page,
    upload,
    wait_for,
)


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a process: the most memory it has held."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def host() -> str:
    """The CPU, its core count and whether it has native bf16: what the figures depend on."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    bf16 = "native bf16 (avx512_bf16)" if "avx512_bf16" in info else "no native bf16"
    return f"{model}, {os.cpu_count()} cores, {bf16}"


def screenshot(page, path: Path) -> None:
    """The whole page, however tall."""
    height = page.execute_script("return document.documentElement.scrollHeight")
    page.set_window_size(1400, max(900, min(height + 40, 3000)))
    time.sleep(0.5)
    page.save_screenshot(str(path))


@cli_entry
def main(argv=None):
    parser = script_parser(__doc__, config=False)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default="docs/app")
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model, data, out = Path(args.model), Path(args.data), Path(args.out)
    if not (model / "model_index.json").is_file():
        raise UserError(f"no model at {model}; run `make demo` first or pass --model")
    test_files = sorted((data / "test" / "AD").glob("*.jpeg"))
    if not test_files:
        raise UserError(f"no test/AD/*.jpeg in {data}; pass the data folder with --data")
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]  # other work on the machine slows every figure here
    t0 = time.time()
    with app_server(model, data) as (url, server), chromium() as page:
        started = time.time() - t0
        page.get(url)
        generate_in_page(page, label="AD", num_images=args.num_images, seed=100)  # warm-up
        seconds = [generate_in_page(page, label="AD", num_images=args.num_images,
                                    seed=seed)[1] for seed in range(args.repeats)]
        generate_in_page(page, label="both", num_images=args.num_images, seed=0)
        screenshot(page, out / "generate.png")

        click_tab(page, "Counterfactual")
        shown = test_files[len(test_files) // 2]
        upload(page, "slice-upload", shown)
        wait_for(page, lambda p: "Judge" in by_css(p, "#slice-notes").text, 600, "the judge")
        t_edit = time.time()
        edit_in_page(page, source_label="AD", level=level_beside(shown))
        edit_seconds = time.time() - t_edit
        screenshot(page, out / "counterfactual.png")

        click_tab(page, "Map")
        t_map = time.time()
        if not page.find_elements("css selector", "#map-image img"):
            click(page, by_css(page, "#map-btn"))
        wait_for(page, lambda p: p.find_elements("css selector", "#map-image img"), 1200,
                 "the map")
        map_seconds = time.time() - t_map
        screenshot(page, out / "map.png")

        click_tab(page, "Model")
        wait_for(page, lambda p: "Training" in by_css(p, "#model-card").text, 60, "the card")
        screenshot(page, out / "model.png")
        rss = peak_rss_mib(server.pid)
    record = {
        "date": time.strftime("%Y-%m-%d"), "host": host(),
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "model": str(model), "num_images": args.num_images,
        "click_to_gallery_seconds": [round(s, 2) for s in seconds],
        "click_to_gallery_median_seconds": round(statistics.median(seconds), 2),
        "server_start_seconds": round(started, 1), "map_seconds": round(map_seconds, 1),
        "edit_click_to_result_seconds": round(edit_seconds, 1),
        "server_peak_rss_mib": round(rss),
    }
    write_json(out / "tour.json", record)
    print(f"click to gallery ({args.num_images} images): median "
          f"{record['click_to_gallery_median_seconds']} s of {record['click_to_gallery_seconds']}"
          f"; server start {record['server_start_seconds']} s; map {record['map_seconds']} s; "
          f"one edit {record['edit_click_to_result_seconds']} s; "
          f"server peak memory {record['server_peak_rss_mib']} MiB; screenshots in {out}")


if __name__ == "__main__":
    main()
