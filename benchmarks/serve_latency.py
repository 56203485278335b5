"""Latency of the interactive explorer: round trips of decode requests to ``vaekit serve`` (a separate
process, as a user runs it; one HTTP connection kept alive, as the page's fetch does), p50 and p95 over
the requests, for the digits VAE (``configs/digits-vae.yaml``) and for kl-f8-tiny at 256×256 (a 4×32×32
latent; the 1 MB float32 image back). Then the in-page decoder of the digits VAE's report.html, timed in
headless Chromium (the time per decode in the browser's JavaScript), and with ``--screenshot PATH`` a
screenshot of the served page after a drag over the map (the README's).

    python benchmarks/serve_latency.py [--requests 300] [--screenshot docs/explorer.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine, write_json

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(run_dir: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "vaekit", "serve", str(run_dir), "--port", str(port),
                                "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/api/info", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"vaekit serve did not start: {process.stdout.read().decode()}")


def round_trips(url: str, body, count: int) -> list[float]:
    import httpx

    times = []
    with httpx.Client(timeout=30) as client:
        for i in range(count + 5):
            started = time.perf_counter()
            response = client.post(f"{url}/api/decode", json=body(i))
            response.raise_for_status()
            if i >= 5:  # the first few warm the model and the connection
                times.append((time.perf_counter() - started) * 1000)
    return times


def percentiles(times: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)), "count": len(times)}


def z_body(shape, seed: int):
    rng = np.random.default_rng(seed)

    def body(i: int) -> dict:
        z = rng.standard_normal(int(np.prod(shape))).astype("<f4")
        return {"z": base64.b64encode(z.tobytes()).decode(), **({"shape": list(shape)} if len(shape) > 1 else {})}

    return body


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def wait_settled(driver) -> None:
    for _ in range(600):
        if driver.execute_script("const s = window.vaekitExplorer; return !!(s && s.ready && s.pending === 0)"):
            return
        time.sleep(0.05)
    raise RuntimeError("the page did not settle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--screenshot")
    parser.add_argument("--json")
    args = parser.parse_args()

    import vaekit
    from vaekit.config import load_config

    result = {"machine": machine()}
    with tempfile.TemporaryDirectory() as folder:
        digits = vaekit.train(load_config(ROOT / "configs" / "digits-vae.yaml",
                                          ["train.progress_bar=false", f"output_dir={folder}", "run_name=digits"]))
        tiny = vaekit.train(load_config(ROOT / "configs" / "kl-f8-tiny-photos.yaml",
                                        ["data.crop_size=256", "data.num_train=8", "train.max_steps=1", "train.batch_size=2",
                                         "train.progress_bar=false", "train.validation_examples=2",
                                         "train.calibration_images=2", f"output_dir={folder}", "run_name=tiny"]),
                            evaluate_at_end=False, explore=False)
        for name, run, shape, count in (("digits VAE (latent 8, 8×8 image)", digits, (8,), args.requests),
                                        ("kl-f8-tiny, 256×256 (latent 4×32×32)", tiny, (4, 32, 32), args.requests // 3)):
            process, url = start_server(run)
            try:
                result[name] = percentiles(round_trips(url, z_body(shape, 0), count))
            finally:
                process.kill()
            print(f"{name}: p50 {result[name]['p50_ms']:.1f} ms, p95 {result[name]['p95_ms']:.1f} ms "
                  f"over {result[name]['count']} decode requests")

        driver = browser()
        try:
            driver.get((digits / "report.html").as_uri())
            wait_settled(driver)
            per_decode = driver.execute_script("""
                const s = window.vaekitExplorer, z = s.z.slice(), n = 500;
                for (let i = 0; i < 20; i++) s.localDecode(z, s.label);
                const t = performance.now();
                for (let i = 0; i < n; i++) { z[0] = i / n; s.localDecode(z, s.label); }
                return (performance.now() - t) / n;""")
            result["in-page decoder, digits VAE (ms per decode)"] = per_decode
            print(f"in-page decoder (report.html, headless Chromium): {per_decode:.3f} ms per decode")
            if args.screenshot:
                from selenium.webdriver.common.action_chains import ActionChains
                from selenium.webdriver.common.by import By

                process, url = start_server(digits)
                try:
                    driver.get(url)
                    wait_settled(driver)
                    canvas = driver.find_element(By.CSS_SELECTOR, "canvas.vx-map")
                    ActionChains(driver).move_to_element_with_offset(canvas, -40, 30).click_and_hold() \
                        .move_by_offset(20, 10).release().perform()
                    wait_settled(driver)
                    driver.save_screenshot(args.screenshot)
                    print(f"screenshot: {args.screenshot}")
                finally:
                    process.kill()
        finally:
            driver.quit()
    write_json(args.json, result)


if __name__ == "__main__":
    main()
