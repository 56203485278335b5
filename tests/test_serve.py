"""The interactive explorer in a real browser (headless Chromium through Selenium and chromedriver) and its
API: decoding against PyTorch, dragging, sliders, interpolation, channel edits, the offline report, and
malformed requests."""

import base64
import io
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from browser import find_or_install
import torch
from PIL import Image

import vaekit
from vaekit.config import load_config
from vaekit.serve import create_app
from vaekit.training import train


def _floats(values) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A digits VAE (latent 3: the map is a PCA plane) with its report, explorer included."""
    out = tmp_path_factory.mktemp("small")
    config = load_config(None, ["data.name=digits", "model.hidden_dims=[64]", "model.latent_dim=3", "train.epochs=3",
                                "train.progress_bar=false", "train.snapshot_examples=0", "eval.iwae_samples=2",
                                f"output_dir={out}", "run_name=digits"])
    return train(config)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("image")
    config = load_config(None, ["model.name=autoencoder-kl", "model.block_out_channels=[16,16]", "model.layers_per_block=1",
                                "model.norm_num_groups=8", "model.latent_channels=3", "data.name=photos",
                                "data.crop_size=32", "data.num_train=16", "loss.perceptual_weight=0", "loss.disc_weight=0",
                                "train.max_steps=2", "train.batch_size=8", "train.progress_bar=false",
                                "train.snapshot_examples=0", "train.validation_examples=4", "train.calibration_images=8",
                                f"output_dir={out}", "run_name=image"])
    return train(config, evaluate_at_end=False, explore=False)


@contextmanager
def serving_app(app):
    """An app in a uvicorn server in a thread, on a free loopback port; yields its URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def serving(run_dir):
    """``vaekit serve``'s app in a thread on a free port; yields its URL."""
    with serving_app(create_app(run_dir)) as url:
        yield url


@pytest.fixture(scope="module")
def small_server(small_run):
    with serving(small_run) as url:
        yield url


@pytest.fixture(scope="module")
def image_server(image_run):
    with serving(image_run) as url:
        yield url


def _say(config, line: str) -> None:
    """One line on the terminal while a test runs: output capture suspended for it."""
    with config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        config.get_terminal_writer().line(f"\n{line}")


@pytest.fixture(scope="module")
def browser(request):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    try:
        binary, driver_path = find_or_install(lambda line: _say(request.config, line))
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,1000", "--allow-file-access-from-files"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def open_explorer(driver, url):
    driver.get(url)
    settled(driver)
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    assert driver.execute_script("return window.vaekitExplorer.error") is None


def settled(driver, timeout=30.0):
    """Wait until the page is ready and no decode is waiting or running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if driver.execute_script("const s = window.vaekitExplorer; return !!(s && s.ready && s.pending === 0)"):
            return
        time.sleep(0.05)
    raise AssertionError("the explorer did not settle")


def shown(driver):
    """(the latent of the image on screen, the image as PyTorch would give it)."""
    z, image = driver.execute_script("const s = window.vaekitExplorer; return [s.imageZ, Array.from(s.image)]")
    return torch.tensor(z, dtype=torch.float32), torch.tensor(image, dtype=torch.float32)


def pytorch_decode(run_dir, z, label=None):
    model = vaekit.load_model(run_dir)
    with torch.no_grad():
        return model.decode(z.reshape(1, *z.shape), None if label is None else torch.tensor([label])).flatten()


def drag_on_map(driver):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    before = driver.execute_script("return window.vaekitExplorer.decodes")
    canvas = driver.find_element(By.CSS_SELECTOR, "canvas.vx-map")
    ActionChains(driver).move_to_element_with_offset(canvas, -80, -60).click_and_hold().move_by_offset(30, 10) \
        .move_by_offset(40, 50).release().perform()
    settled(driver)
    assert driver.execute_script("return window.vaekitExplorer.decodes") > before


def test_served_small_vae_page_drag_slider_and_scrub(browser, small_server, small_run):
    open_explorer(browser, small_server)
    first_z, first_image = shown(browser)
    drag_on_map(browser)
    z, image = shown(browser)
    assert not torch.allclose(z, first_z) and (image - first_image).abs().max() > 1e-3
    torch.testing.assert_close(image, pytorch_decode(small_run, z), atol=1e-6, rtol=0)

    # A slider sets its dimension, the rest stay.
    dim = browser.execute_script("return window.vaekitExplorer.info.order[0]")
    browser.execute_script(f"""const s = document.querySelector('input[data-dim="{dim}"]'); s.value = 1.5;
                               s.dispatchEvent(new Event('input'));""")
    settled(browser)
    moved, image = shown(browser)
    assert moved[dim].item() == pytest.approx(1.5) and torch.equal(torch.cat([moved[:dim], moved[dim + 1:]]),
                                                                    torch.cat([z[:dim], z[dim + 1:]]))
    torch.testing.assert_close(image, pytorch_decode(small_run, moved), atol=1e-6, rtol=0)

    # The scrubber halfway between the default pair (test examples 0 and 1) is their mean code.
    codes = browser.execute_script("""const s = window.vaekitExplorer, bin = atob(s.info.codes),
        bytes = Uint8Array.from(bin, (ch) => ch.charCodeAt(0)); return Array.from(new Float32Array(bytes.buffer));""")
    codes = torch.tensor(codes).reshape(-1, 3)
    browser.execute_script("""const s = document.querySelector('input.vx-scrub'); s.value = 0.5;
                              s.dispatchEvent(new Event('input'));""")
    settled(browser)
    middle, image = shown(browser)
    torch.testing.assert_close(middle, (codes[0] + codes[1]) / 2, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(image, pytorch_decode(small_run, middle), atol=1e-6, rtol=0)
    neighbours = browser.execute_script("return window.vaekitExplorer.neighbours")
    assert neighbours[0] == int(torch.cdist(middle[None], codes).argmin())


def test_the_offline_report_decodes_in_the_page_within_1e_4(browser, small_run):
    report = small_run / "report.html"
    open_explorer(browser, report.as_uri())
    assert browser.execute_script("return !!window.vaekitExplorer.info.decoder")  # the weights are in the page
    drag_on_map(browser)
    z, image = shown(browser)
    torch.testing.assert_close(image, pytorch_decode(small_run, z), atol=1e-4, rtol=0)
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert not [name for name in fetched if name.startswith("http")]  # nothing from a network


def test_image_autoencoder_page_channel_edits(browser, image_server, image_run):
    open_explorer(browser, image_server)
    channels = browser.execute_script("return document.querySelectorAll('.vx-channel canvas').length")
    assert channels == 3
    _, original = shown(browser)
    browser.execute_script("""const c = document.querySelector('input[data-channel="0"][data-edit="zero"]');
                              c.checked = true; c.dispatchEvent(new Event('change'));""")
    settled(browser)
    z, image = shown(browser)
    z = z.reshape(3, 16, 16)
    assert torch.all(z[0] == 0) and (image - original).abs().max() > 1e-4
    model = vaekit.load_model(image_run)
    with torch.no_grad():
        expected = ((model.decode(z[None]).clamp(-1, 1) + 1) / 2).flatten()
    torch.testing.assert_close(image, expected, atol=1e-5, rtol=0)


def test_malformed_requests_get_4xx_and_the_server_goes_on(small_server, image_server, small_run):
    import httpx

    url = small_server
    model = vaekit.load_model(small_run)
    z = torch.tensor([0.3, -1.0, 2.0])
    ok = httpx.post(f"{url}/api/decode", json={"z": _floats(z)})
    assert ok.status_code == 200
    image = np.frombuffer(base64.b64decode(ok.json()["image"]), dtype="<f4")
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(image.copy()), model.decode(z[None]).flatten(), atol=1e-6, rtol=0)
    bad = [({"z": _floats([1.0, 2.0])}, 400, "has 2 values"), ({"z": _floats([np.nan, 0, 0])}, 400, "NaN"),
           ({"z": _floats([np.inf, 0, 0])}, 400, "infinite"), ({"z": "not base64!"}, 400, "base64"),
           ({"z": [1, 2, 3]}, 400, "base64 string"), ({"z": _floats(z), "label": "cat"}, 400, "integer"),
           ("a string", 400, "JSON object"), ({"index": 10 ** 9}, 400, "unknown image")]
    for body, status, message in bad:
        path = "/api/encode" if "index" in body else "/api/decode"
        response = httpx.post(url + path, json=body)
        assert response.status_code == status and message in response.json()["error"], (body, response.text)
    response = httpx.post(f"{url}/api/decode", content=b"{" + b" " * (2 << 20) + b"}")
    assert response.status_code == 413 and "larger than" in response.json()["error"]
    response = httpx.post(f"{url}/api/decode", content=b"\xff\xfe not json")
    assert response.status_code == 400
    for path in ("/static/../../../etc/passwd", "/static/app.py", "/static/%2e%2e%2fexplorer.py", "/run/config.yaml"):
        response = httpx.get(url + path)
        assert response.status_code == 404 and "root:" not in response.text
    assert httpx.post(f"{url}/api/encode", json={"upload": "aGVsbG8="}).status_code == 400  # not for small VAEs
    # Image autoencoder: a real upload is encoded; garbage is a clear 400.
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(buffer, format="PNG")
    upload = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    response = httpx.post(f"{image_server}/api/encode", json={"upload": upload})
    assert response.status_code == 200 and response.json()["latent_shape"] == [3, 20, 20]
    response = httpx.post(f"{image_server}/api/encode", json={"upload": base64.b64encode(b"GIF89a garbage").decode()})
    assert response.status_code == 400 and "cannot read the upload" in response.json()["error"]
    response = httpx.post(f"{image_server}/api/decode", json={"z": _floats(np.zeros(12)), "shape": [3, 2, 2]})
    assert response.status_code == 200 and response.json()["shape"] == [3, 4, 4]
    response = httpx.post(f"{image_server}/api/decode", json={"z": _floats(np.zeros(12)), "shape": [4, 1, 3]})
    assert response.status_code == 400 and "c = 3" in response.json()["error"]
    assert httpx.get(f"{url}/api/info").status_code == 200  # still serving


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cvae")
    config = load_config(None, ["model.name=cvae", "data.name=digits", "model.hidden_dims=[32]", "model.latent_dim=2",
                                "train.epochs=2", "train.progress_bar=false", "train.snapshot_examples=0",
                                "eval.iwae_samples=2", f"output_dir={out}", "run_name=cvae"])
    return train(config, evaluate_at_end=False)


def test_a_conditional_vae_with_its_class_selector_and_prior_samples_offline(browser, cvae_run):
    open_explorer(browser, (cvae_run / "report.html").as_uri())
    assert browser.execute_script("return window.vaekitExplorer.info.map.method") == "latent"  # 2-D: the map is z
    browser.execute_script("""const s = document.querySelector('select:not([data-role])'); s.value = '7';
                              s.dispatchEvent(new Event('change'));""")
    settled(browser)
    z, image = shown(browser)
    assert browser.execute_script("return window.vaekitExplorer.imageLabel") == 7
    torch.testing.assert_close(image, pytorch_decode(cvae_run, z, label=7), atol=1e-4, rtol=0)
    from selenium.webdriver.common.by import By

    button = next(b for b in browser.find_elements(By.TAG_NAME, "button") if "prior" in b.text)
    button.click()
    settled(browser)
    sampled, image = shown(browser)
    assert not torch.allclose(sampled, z)
    torch.testing.assert_close(image, pytorch_decode(cvae_run, sampled, label=7), atol=1e-4, rtol=0)


def test_an_upload_through_the_page_is_encoded_and_its_channels_shown(browser, image_server, tmp_path):
    from selenium.webdriver.common.by import By

    open_explorer(browser, image_server)
    Image.fromarray(np.linspace(0, 255, 48 * 40 * 3).astype(np.uint8).reshape(48, 40, 3)).save(tmp_path / "up.png")
    before = browser.execute_script("return window.vaekitExplorer.decodes")
    browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(tmp_path / "up.png"))
    for _ in range(200):
        if browser.execute_script("return window.vaekitExplorer.decodes") > before:
            break
        time.sleep(0.05)
    settled(browser)
    z, _ = shown(browser)
    assert z.numel() == 3 * 20 * 20  # the upload's own size: 40 × 40 centre crop, f = 2
    assert browser.execute_script("return document.querySelectorAll('.vx-channel canvas')[0].width") == 20
    assert browser.execute_script("return window.vaekitExplorer.error") is None


def test_hostile_requests_host_names_work_caps_and_a_bounded_queue(image_server, image_run, tmp_path):
    import concurrent.futures

    import httpx

    from vaekit.serve.app import MAX_WAITING

    url = image_server
    # a page elsewhere whose DNS name was rebound to 127.0.0.1 sends its own Host: refused, nothing read
    evil = httpx.get(f"{url}/api/info", headers={"Host": "attacker.example:8000"})
    assert evil.status_code == 400 and "thumbnails" not in evil.text
    assert httpx.get(f"{url}/api/info", headers={"Host": "localhost"}).status_code == 200
    # one decode may not ask for gigabytes: the cap is the model's, and the 4xx says so
    huge = httpx.post(f"{url}/api/decode", json={"z": _floats(np.zeros(3)), "shape": [3, 600, 600]})  # f = 2: 1,200²
    assert huge.status_code == 413 and "at most 1,048,576" in huge.json()["error"]
    # an upload the model cannot take as it is (a grayscale PNG for an RGB model) is converted, not a 500
    buffer = io.BytesIO()
    Image.fromarray(np.full((24, 24), 70, np.uint8), "L").save(buffer, format="PNG")
    gray = httpx.post(f"{url}/api/encode", json={"upload": base64.b64encode(buffer.getvalue()).decode()})
    assert gray.status_code == 200
    # a vaekit error raised inside a model call is the request's fault: 400 with its message
    from vaekit.errors import VaekitError
    from vaekit.serve import create_app

    app = create_app(image_run)
    def refuse(*args):
        raise VaekitError("this latent is refused")
    app.state.explorer.decode = refuse
    from starlette.testclient import TestClient

    with TestClient(app, base_url="http://127.0.0.1") as client:
        response = client.post("/api/decode", json={"z": _floats(np.zeros(12)), "shape": [3, 2, 2]})
        assert response.status_code == 400 and response.json()["error"] == "this latent is refused"
    # a flood: one model call runs, MAX_WAITING wait, the rest are told 503 at once
    slow = create_app(image_run)
    original = slow.state.explorer.decode
    slow.state.explorer.decode = lambda *args: (time.sleep(0.3), original(*args))[1]
    with serving_app(slow) as slow_url:
        body = {"z": _floats(np.zeros(12)), "shape": [3, 2, 2]}
        with concurrent.futures.ThreadPoolExecutor(MAX_WAITING + 6) as pool:
            codes = list(pool.map(lambda _: httpx.post(f"{slow_url}/api/decode", json=body, timeout=60).status_code,
                                  range(MAX_WAITING + 6)))
        assert set(codes) == {200, 503} and codes.count(200) >= MAX_WAITING + 1
        assert httpx.post(f"{slow_url}/api/decode", json=body, timeout=60).status_code == 200  # and then it serves


def _raw_status(url: str, payload: bytes) -> int:
    """The status code the server answers raw bytes with (0 when it closes the connection instead)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(payload)
        connection.shutdown(socket.SHUT_WR)
        head = connection.recv(64)
    parts = head.split(b" ")
    return int(parts[1]) if head.startswith(b"HTTP/") and len(parts) > 1 else 0


def _resident_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _fuzz_requests(rng: np.random.Generator, count: int) -> list[tuple[str, str, dict]]:
    """(method, path, httpx keyword arguments) of random and malformed requests, seeded."""
    junk = lambda n: bytes(rng.integers(0, 256, n, dtype=np.uint8))  # noqa: E731
    floats = lambda n, scale=1.0: _floats(rng.normal(0, scale, n))  # noqa: E731
    special = [np.nan, np.inf, -np.inf, 1e38, -1e38, 0.0]
    makers = [
        lambda: ("POST", "/api/decode", {"content": junk(int(rng.integers(0, 300)))}),
        lambda: ("POST", "/api/decode", {"json": {"z": floats(int(rng.integers(0, 40))),
                                                  "shape": [int(v) for v in rng.integers(-3, 9, int(rng.integers(0, 5)))]}}),
        lambda: ("POST", "/api/decode", {"json": {"z": floats(12, 10.0 ** float(rng.integers(-3, 39))), "shape": [3, 2, 2]}}),
        lambda: ("POST", "/api/decode", {"json": {"z": _floats([rng.choice(special)] * 12), "shape": [3, 2, 2]}}),
        lambda: ("POST", "/api/decode", {"json": {"z": floats(12), "shape": [3, 2, 2],
                                                  "label": [None, "x", 1.5, True, -1, 10 ** 30][int(rng.integers(0, 6))]}}),
        lambda: ("POST", "/api/decode", {"json": {"z": floats(3), "shape": [3, int(rng.integers(100, 10 ** 6)), 7]}}),
        lambda: ("POST", "/api/decode", {"json": {"z": [1, 2], "shape": "3,2,2"}}),
        lambda: ("POST", "/api/decode", {"content": b"[" * int(rng.integers(1, 5000)),
                                         "headers": {"content-type": "application/json"}}),
        lambda: ("POST", "/api/decode", {"content": b"{\"z\": 1e999999}", "headers": {"content-type": "text/plain"}}),
        lambda: ("POST", "/api/encode", {"json": {"index": [0, -1, 10 ** 12, 2.5, "1", None][int(rng.integers(0, 6))]}}),
        lambda: ("POST", "/api/encode", {"json": {"upload": base64.b64encode(junk(int(rng.integers(0, 2000)))).decode()}}),
        lambda: ("POST", "/api/encode", {"json": {"upload": ["not", "a", "string"]}}),
        lambda: ("POST", "/api/encode", {"json": {"upload": "data:image/png;base64,%%%"}}),
        lambda: ("POST", "/api/decode", {"content": b"{" + b" " * (1 << 20) + b"}"}),
        lambda: ("GET", ["/static/../../etc/passwd", "/static/%2e%2e/app.py", "//api/info", "/api/../api/info",
                         "/static/", "/nope", "/api/decode", "/static/explorer.js?x=" + "a" * 5000][int(rng.integers(0, 8))], {}),
        lambda: (["PUT", "DELETE", "PATCH", "OPTIONS"][int(rng.integers(0, 4))], "/api/decode", {"content": junk(20)}),
        lambda: ("RAW", "", {"content": [b"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n{}",
                                           b"GARBAGE / NOTHTTP\r\n\r\n",
                                           b"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999"
                                           b"\r\n\r\n{",
                                           b"GET /../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"][int(rng.integers(0, 4))]}),
    ]
    return [makers[int(rng.integers(0, len(makers)))]() for _ in range(count)]


@pytest.mark.slow
def test_a_fuzz_of_random_and_malformed_requests_gets_no_5xx(image_run):
    """1,200 seeded random and malformed requests on the loopback address, part of them in concurrent
    bursts no larger than the queue: never a 5xx, the server still answers, and its memory stays bounded."""
    import concurrent.futures

    import httpx

    from vaekit.serve import create_app
    from vaekit.serve.app import MAX_WAITING

    rng = np.random.default_rng(0)
    requests = _fuzz_requests(rng, 1200)
    with serving_app(create_app(image_run)) as url, httpx.Client(base_url=url, timeout=60) as client:
        def send(request):
            method, path, kwargs = request
            if method == "RAW":  # what an HTTP client will not send: written to the socket as it is
                return _raw_status(url, kwargs["content"])
            try:
                return client.request(method, path, **kwargs).status_code
            except httpx.RemoteProtocolError:  # the server closed a connection it refused to read: not a 5xx
                return 0

        codes = [send(r) for r in requests[:200]]
        before = _resident_mb()
        with concurrent.futures.ThreadPoolExecutor(MAX_WAITING) as pool:  # bursts within the queue's bound
            codes += list(pool.map(send, requests[200:]))
        grown = _resident_mb() - before
        assert not [c for c in codes if c >= 500], sorted(set(codes))
        assert sum(200 <= c < 300 for c in codes) > 50 and sum(400 <= c < 500 for c in codes) > 500
        assert client.get("/api/info").status_code == 200
        ok = client.post("/api/decode", json={"z": _floats(np.zeros(12)), "shape": [3, 2, 2]})
        assert ok.status_code == 200
    assert grown < 300, f"the server grew by {grown:.0f} MB over 1,000 requests"
