"""Dashboard responsiveness with 20 images in one session vs 1 image, same run (Streamlit AppTest).

Drives ``app/main.py`` headless with ``streamlit.testing.v1.AppTest`` on the bundled default model
(or ``--model``) and times each interaction as one script rerun, as a user would wait for it:

* ``upload``: drop the images (decode, thumbnails, one batched prediction);
* ``rerun``: a rerun with nothing changed (every widget and card redrawn from the session);
* ``cam on``: switch Grad-CAM on (the selected image's heatmap is computed);
* ``select``: select another card (its Grad-CAM is computed);
* ``mode x3``: switch the display mode three times (cached heatmap re-blended, no model call);
* ``target``: explain the thickness output instead (one Grad-CAM);
* ``remove``: remove one card.

The baseline is the same sequence in a session holding 1 image (where "select" re-selects the only
card, so it computes nothing); the ratio shows how the page scales with the gallery. One untimed
warm-up session runs first. Seconds are the median of ``--repeats`` fresh sessions. AppTest skips the
browser and the websocket, so these are server-side seconds::

    python benchmarks/app_responsiveness.py
    python benchmarks/app_responsiveness.py --images 20 --repeats 3 --model assets/models/default
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
STEPS = ("upload", "rerun", "cam on", "select", "mode x3", "target", "remove")


def session_timings(uploads: list[tuple[str, bytes]]) -> dict[str, float]:
    """Seconds of each interaction of :data:`STEPS` in one fresh session holding ``uploads``."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=600).run()  # page and model load: not timed
    times: dict[str, float] = {}

    def timed(name: str, action) -> None:
        t0 = time.perf_counter()
        action()
        times[name] = time.perf_counter() - t0
        if at.exception:
            raise RuntimeError(f"{name}: the page raised {at.exception[0].value}")

    def do_upload() -> None:
        uploader = at.get("file_uploader")[0]
        for name, data in uploads:
            uploader.upload(name, data, "image/jpeg")
        uploader.run()

    timed("upload", do_upload)
    ids = list(at.session_state["dl_uploads"])
    timed("rerun", at.run)
    timed("cam on", lambda: at.toggle(key="cam_on").set_value(True).run())
    timed("select", lambda: at.button(key=f"select_{ids[len(ids) // 2]}").click().run())

    def modes() -> None:
        for mode in ("Side by side", "Heatmap only", "Overlay"):
            at.radio(key="cam_mode").set_value(mode).run()

    timed("mode x3", modes)
    timed("target", lambda: at.selectbox(key="cam_target").set_value("thickness").run())
    timed("remove", lambda: at.button(key=f"remove_{ids[0]}").click().run())
    return times


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    from benchmarks.soak import synthetic_uploads

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="bundle folder or .ckpt (default: the bundled default model)")
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="fresh sessions per case (median reported)")
    args = p.parse_args(argv)
    if args.model:
        os.environ["DERMALENS_MODEL"] = str(Path(args.model).resolve())
    uploads = synthetic_uploads(args.images)
    cases = {"1 image": uploads[:1], f"{args.images} images": uploads}
    results: dict[str, dict[str, list[float]]] = {case: {s: [] for s in STEPS} for case in cases}
    session_timings(uploads[:2])  # warm-up, not counted: model load, lazy imports, first kernels and Grad-CAM
    for _ in range(args.repeats):  # interleaved, so both cases see the same machine load
        for case, items in cases.items():
            for step, seconds in session_timings(items).items():
                results[case][step].append(seconds)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    base, many = cases
    print(f"seconds per interaction (median of {args.repeats} sessions; 1-min load average {load:.1f})")
    print(f"{'interaction':<12}{base:>12}{many:>14}{'ratio':>8}")
    for step in STEPS:
        one, lots = statistics.median(results[base][step]), statistics.median(results[many][step])
        print(f"{step:<12}{one:>12.2f}{lots:>14.2f}{lots / one:>7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
