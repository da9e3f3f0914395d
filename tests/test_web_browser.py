"""The control page in real headless Chromium (selenium) against the daemon process on a
private PulseAudio (espeak-ng speech into vcam_in, the delayed mic into vcam_mic):

* the preview <img> shows moving frames while speech plays, and the status numbers move;
* Test sync, mute and the avatar picker work from the page (the preview turns into the
  mirrored photo);
* a page from another origin in the same browser cannot mute, reload or run test sync
  (fetch with and without no-cors, a leaked token, auto-submitted forms).

With VCAM_WRITE_DOCS=1 it saves the page's screenshot as docs/control_page.png.
"""

from __future__ import annotations

import http.server
import os
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.daemon_proc import ROOT, DaemonProc, base_config, free_port

CHROME, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (os.path.exists(CHROME) and os.path.exists(DRIVER)),
                                reason="chromium and chromedriver are not installed (scripts/setup.sh installs them)")

SAMPLE_JS = """
const img = document.getElementById('preview');
if (!img.complete || !img.naturalWidth) return null;
const c = document.createElement('canvas'); c.width = 128; c.height = 128;
const g = c.getContext('2d'); g.drawImage(img, 0, 0, 128, 128);
return Array.from(g.getImageData(0, 0, 128, 128).data);
"""


@pytest.fixture(scope="module")
def browser():
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROME
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1040,900",
              "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(a)
    opts.page_load_strategy = "eager"  # the MJPEG <img> never finishes loading
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield drv
    drv.quit()


def preview(drv) -> np.ndarray | None:
    px = drv.execute_script(SAMPLE_JS)
    return None if px is None else np.array(px, np.float32).reshape(128, 128, 4)[..., :3]


def drawn_preview(drv) -> np.ndarray:
    """The preview once it shows a picture, not a uniform frame: a fresh clone's CI read one
    114 levels away from every face (a canvas read while the MJPEG element swapped frames
    comes back blank, and test sync's flash frames are uniform white)."""
    def ok():
        p = preview(drv)
        return (p,) if p is not None and p.std() > 5 else None
    return wait(ok, 5, "a drawn preview")[0]


def wait(cond, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def text(drv, el_id: str) -> str:
    return drv.find_element("id", el_id).text


EVIL = """<!doctype html><title>evil</title>
<iframe name="f1"></iframe><iframe name="f2"></iframe><iframe name="f3"></iframe>
<form id="a" method="POST" action="{t}/api/mute" target="f1" enctype="text/plain">
  <input name='{{"muted": true, "x": "' value='"}}'></form>
<form id="b" method="POST" action="{t}/reload" target="f2"><input name="x" value="1"></form>
<form id="c" method="POST" action="{t}/api/test-sync" target="f3"><input name="x" value="1"></form>
<script>
const T = "{t}", TOKEN = "{token}", out = {{}};
async function attempt(key, f) {{
  try {{ const r = await f(); out[key] = r.type === "opaque" ? "sent (opaque)" : "status " + r.status; }}
  catch (e) {{ out[key] = "blocked: " + e.message; }}
}}
async function go() {{
  await attempt("read the page", () => fetch(T + "/"));
  const json = {{"Content-Type": "application/json"}};
  for (const p of ["/api/mute", "/reload", "/api/test-sync"]) {{
    await attempt("cors " + p, () => fetch(T + p, {{method: "POST", headers: json, body: '{{"muted": true}}'}}));
    await attempt("cors+token " + p, () => fetch(T + p, {{method: "POST",
      headers: {{...json, "X-VCam-Token": TOKEN}}, body: '{{"muted": true}}'}}));
    await attempt("no-cors " + p, () => fetch(T + p, {{method: "POST", mode: "no-cors",
      headers: {{"Content-Type": "text/plain"}}, body: '{{"muted": true}}'}}));
    await attempt("no-cors+token " + p, () => fetch(T + p, {{method: "POST", mode: "no-cors",
      headers: {{"X-VCam-Token": TOKEN}}, body: '{{"muted": true}}'}}));
  }}
  for (const id of ["a", "b", "c"]) document.getElementById(id).submit();
  await new Promise((r) => setTimeout(r, 1500));
  window.results = out;
}}
go();
</script>"""


def serve_evil(folder: Path, target: str, token: str) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Another origin: a plain http.server on another port with the attacking page."""
    (folder / "evil.html").write_text(EVIL.format(t=target, token=token))
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = lambda *a: Quiet(*a, directory=str(folder))  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/evil.html"


def test_control_page(tmp_path, pulse_server, speech_wav, browser, capsys):
    drv = browser
    folder = tmp_path / "avatars"
    folder.mkdir()
    shutil.copy(ROOT / "avatars" / "default.png", folder / "default.png")
    img = cv2.imread(str(folder / "default.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(folder / "mirrored.png"), cv2.flip(img, 1))  # still a face for dlib
    port, token = free_port(), secrets.token_urlsafe(24)
    cfg = base_config(port, audio={"input": "vcam_in_monitor", "output": "vcam_mic_sink"},
                      avatar={"image": str(folder / "default.png")},
                      control={"avatars_dir": str(folder), "token": token})
    env = dict(pulse_server.env, XDG_STATE_HOME=str(tmp_path / "state"), XDG_DATA_HOME=str(tmp_path / "data"))
    url = f"http://127.0.0.1:{port}"
    with DaemonProc(tmp_path, cfg, env=env) as d:
        d.started()
        drv.get(url + "/")
        wait(lambda: preview(drv) is not None, 10, "the preview's first frame")
        wait(lambda: text(drv, "fps") not in ("", "–") and len(drv.find_elements("css selector", "#avatar option")) == 2,
             10, "status numbers and the avatar list")
        quiet_level = text(drv, "level-db")

        # speech: the preview moves, the numbers move
        play = subprocess.Popen(["paplay", "--device=vcam_in", str(speech_wav)], env=pulse_server.env)
        shots, levels, lat = [], set(), set()
        while play.poll() is None:
            shots.append(preview(drv))
            levels.add(text(drv, "level-db"))
            lat.add(text(drv, "latency"))
            time.sleep(0.2)
        moved = [float(np.abs(a - b).mean()) for a, b in zip(shots, shots[1:])]
        loud = [int(v.split()[0]) for v in levels if v.endswith("dBFS")]

        # test sync from the page
        drv.find_element("id", "sync").click()
        wait(lambda: drv.find_element("id", "sync-result").get_attribute("class").split()[-1] in ("ok", "bad"),
             15, "the sync result")
        sync_text = text(drv, "sync-result")
        st = d.status()
        assert "in sync" in sync_text, (sync_text, st["test_sync"], [ln for _, ln in d.lines if "sync" in ln])
        if os.environ.get("VCAM_WRITE_DOCS") == "1":  # the README's picture, mid-sentence
            time.sleep(20)  # some history in the chart
            again = subprocess.Popen(["paplay", "--device=vcam_in", str(speech_wav)], env=pulse_server.env)
            time.sleep(1.6)
            drv.save_screenshot(str(ROOT / "docs" / "control_page.png"))
            again.wait(30)

        # mute from the page, and back
        drv.find_element("id", "mute").click()
        wait(lambda: d.status()["muted"] is True, 5, "muted")
        wait(lambda: "Unmute" in text(drv, "mute"), 5, "the button to say so")
        drv.find_element("id", "mute").click()
        wait(lambda: d.status()["muted"] is False, 5, "unmuted")

        # switch the avatar: the preview becomes the mirror image of itself
        before = drawn_preview(drv)
        from selenium.webdriver.support.ui import Select

        Select(drv.find_element("id", "avatar")).select_by_value("mirrored.png")
        wait(lambda: d.status()["avatar"].endswith("mirrored.png"), 20, "the avatar reload")
        time.sleep(1.0)
        after = drawn_preview(drv)
        to_mirror = float(np.abs(after - before[:, ::-1]).mean())
        to_before = float(np.abs(after - before).mean())

        # upload a photo from the page (the original one): it is stored and selected
        drv.find_element("id", "upload").send_keys(str(ROOT / "avatars" / "default.png"))
        wait(lambda: "upload-" in d.status()["avatar"], 30, "the uploaded avatar")
        time.sleep(1.0)
        uploaded = drawn_preview(drv)
        up_to_before = float(np.abs(uploaded - before).mean())
        up_to_mirror = float(np.abs(uploaded - after).mean())
        wait(lambda: len(drv.find_elements("css selector", "#avatar option")) == 3, 5, "the upload in the list")

        # another origin in the same browser: nothing changes
        st0 = d.status()
        evil, evil_url = serve_evil(tmp_path, url, token)
        try:
            drv.get(evil_url)
            results = wait(lambda: drv.execute_script("return window.results || null"), 20, "the attack page")
            time.sleep(1.0)
        finally:
            evil.shutdown()
        st1 = d.status()
        log = "\n".join(line for _, line in d.lines)
    with capsys.disabled():
        print(f"\npage: preview change per 0.2 s during speech {np.round(moved, 1)}; input level {quiet_level} "
              f"quiet, {sorted(loud)} dBFS in speech; latency shown {len(lat)} different values; "
              f"test sync: {sync_text}; avatar switch: preview vs mirrored old {to_mirror:.1f}, vs old "
              f"{to_before:.1f}; upload: preview vs old {up_to_before:.1f}, vs mirrored {up_to_mirror:.1f}; "
              f"attack: {results}")
    assert sum(m > 0.05 for m in moved) >= 3, moved  # the preview follows the camera
    assert loud and max(loud) > -40, levels  # the meter follows the voice
    assert st["test_sync"] and st["test_sync"]["ok"], st["test_sync"]
    assert to_mirror < 0.5 * to_before, (to_mirror, to_before)
    assert up_to_before < 0.5 * up_to_mirror, (up_to_before, up_to_mirror)
    assert st1["muted"] is False and st1["reloads"] == st0["reloads"], (st0, st1)
    assert st1["test_sync"] == st0["test_sync"]
    assert st1["avatar"] == st0["avatar"]
    assert all(not v.startswith("status 2") for v in results.values()), results
    assert "Traceback" not in log
