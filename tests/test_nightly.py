"""`xtp nightly`: a night of two models end to end, and a second night started while the first still runs
(as a RayCronJob's next tick may) exits at once, naming the running night, and starts no work."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}


def _night(output: Path, night: str, *flags: str, models: str = "tiny:LlamaForCausalLM:2") -> list[str]:
    return [sys.executable, "-m", "xtp_ray.cli", "nightly", "--models", models, "--langs", "sw", "--output",
            str(output), "--night", night, *flags]


def test_a_second_night_refuses_to_overlap_the_first(tmp_path):
    output = tmp_path / "runs"
    # the first night generates (20 new tokens over a 4 x 4 grid) long enough to be caught running
    first = subprocess.Popen(_night(output, "n1", "--limit", "16", "--scoring", "generate",
                                    models="tiny:LlamaForCausalLM:4"),
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lease = output / "_nightly" / "lease.json"
        deadline = time.time() + 120
        while not lease.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert lease.exists(), "the first night never took its lease"
        start = time.time()
        second = subprocess.run(_night(output, "n2", "--limit", "1"), env=ENV, capture_output=True, text=True,
                                timeout=120)
        seconds = time.time() - start
        assert first.poll() is None, "the first night ended before the second was tried: the test proves nothing"
    finally:
        out, err = first.communicate(timeout=600)
    assert second.returncode == 2, second.stderr[-2000:]
    [line] = [line for line in second.stderr.splitlines() if line.startswith("xtp nightly: error:")]
    assert "another night is still running: night n1 (tiny:LlamaForCausalLM:4) on host" in line, line
    assert "this night (n2) starts no work" in line and "Traceback" not in second.stderr
    assert seconds < 30  # at once: no Ray started, nothing planned
    assert not (output / "tiny-LlamaForCausalLM-2").exists()  # the second night's model: no run, no directory
    assert first.returncode == 0, err[-3000:]
    assert "night n1: tiny-LlamaForCausalLM-4: " in out
    manifest = json.loads((output / "tiny-LlamaForCausalLM-4" / "tiny-LlamaForCausalLM-4-n1" / "manifest.json")
                          .read_text())
    assert manifest["status"] == "complete"
    assert not lease.exists()  # given back: the next night runs


def test_a_night_runs_each_model_and_writes_its_history(tmp_path):
    output = tmp_path / "runs"
    done = subprocess.run(_night(output, "2026-12-06", "--limit", "2",
                                 models="tiny:LlamaForCausalLM:2,tiny:Qwen2ForCausalLM:2"),
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("tiny-LlamaForCausalLM-2", "tiny-Qwen2ForCausalLM-2"):
        assert (output / name / f"{name}-2026-12-06" / "report" / "report.json").exists()
        assert (output / name / "history" / "history.json").exists()
        assert f"night 2026-12-06: {name}: " in done.stdout
    bad = subprocess.run(_night(output, "../x"), env=ENV, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--night '../x'" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------- the alert: a real HTTP server on 127.0.0.1

class _Hook:
    """A webhook on 127.0.0.1 (http.server in a thread) that keeps what is posted and answers `code`."""

    def __init__(self, code: int = 200):
        import http.server
        import threading

        hook = self
        self.posts, self.code = [], code

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append((self.path, self.headers["Content-Type"], json.loads(body)))
                self.send_response(hook.code)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0K3N-in-the-path"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


SECRET = "hf_aVerySecretHubToken42"


def test_a_refused_night_posts_its_alert_without_secrets_and_a_failed_post_keeps_the_exit_status(tmp_path):
    env = {**ENV, "HF_TOKEN": SECRET}
    argv = _night(tmp_path / "runs", f"../{SECRET}")  # a bad night name that carries a secret into the error
    with _Hook() as hook:
        done = subprocess.run(argv, env={**env, "XTP_ALERT_WEBHOOK": hook.url}, capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    [(path, kind, payload)] = hook.posts
    assert path == "/hooks/T0K3N-in-the-path" and kind == "application/json"
    assert payload["status"] == "refused" and payload["exit_code"] == 2
    assert payload["models"] == ["tiny:LlamaForCausalLM:2"] and payload["night"] == "../***"
    assert "--night '../***'" in payload["error"] and payload["text"].startswith("xtp nightly ../***: refused")
    assert SECRET not in json.dumps(payload) and "T0K3N" not in json.dumps(payload)
    with _Hook(500) as hook:  # the hook fails: one line, the same exit status
        failed = subprocess.run(argv, env={**env, "XTP_ALERT_WEBHOOK": hook.url}, capture_output=True, text=True,
                                timeout=120)
    assert failed.returncode == 2 and len(hook.posts) == 1, failed.stderr[-2000:]
    [line] = [line for line in failed.stderr.splitlines() if "alert not sent" in line]
    assert "HTTP 500" in line and "Traceback" not in failed.stderr
    assert "T0K3N" not in line and "127.0.0.1" not in line and SECRET not in line


def test_a_post_that_fails_is_one_line_naming_neither_the_url_nor_a_secret(caplog):
    from xtp_ray.job.alert import alert, message, post

    payload = message("n1", ["m"], 1, [], [{"model": "m", "error": f"401 for token {SECRET}"}], {}, {})
    environ = {"HF_TOKEN": SECRET}
    with _Hook() as hook:
        assert post(hook.url, payload, environ) is True
        closed = hook.url
    assert hook.posts[0][2]["failed"] == [{"model": "m", "error": "401 for token ***"}]
    assert post(closed, payload, environ, timeout_s=5) is False  # nothing listens there now
    assert post("ftp://user:pw@example.org/x", payload, environ) is False  # http(s) only
    lines = [r.getMessage() for r in caplog.records if "alert not sent" in r.getMessage()]
    assert len(lines) == 2 and all("T0K3N" not in x and "pw" not in x and "\n" not in x for x in lines), lines
    assert "refused" in lines[0].lower() and "not an http:// or https:// URL" in lines[1]
    assert alert(payload, environ={}) is None  # no webhook set: nothing is posted
    assert alert(message("n1", ["m"], 0, [], [], {}, {}), environ={"XTP_ALERT_WEBHOOK": closed}) is None  # a good night


def test_a_regressed_night_posts_what_regressed_and_where_the_report_is(tmp_path):
    output = tmp_path / "runs"
    name = "tiny-LlamaForCausalLM-2"
    earlier = output / name / f"{name}-2026-12-05"  # an earlier night that answered everything right
    (earlier / "report").mkdir(parents=True)
    (earlier / "report" / "report.json").write_text(json.dumps({"run_id": earlier.name, "target_first": [], "tables": {
        "xnli/sample/ffn": {"by_lang": {"sw": {"instances": 4, "vanilla_accuracy": 1.0, "upper_bound": 1.0}}}}}))
    (earlier / "manifest.json").write_text(json.dumps({"attempts": [{"started": 1000.0}]}))
    with _Hook() as hook:
        done = subprocess.run(_night(output, "2026-12-06", "--limit", "4", "--tasks", "xnli"),
                              env={**ENV, "XTP_ALERT_WEBHOOK": hook.url}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr[-3000:]  # the random tiny model does not answer all four right
    [(_, _, payload)] = hook.posts
    assert payload["status"] == "regressed" and payload["exit_code"] == 3 and payload["failed"] == []
    run = str(output / name / f"{name}-2026-12-06")
    assert payload["runs"] == {name: run} and (Path(run) / "report" / "report.json").exists()
    assert payload["histories"][name].endswith(f"{name}/history/history.html")  # the page a person reads
    regressed = {(r["model"], r["table"], r["lang"], r["metric"]) for r in payload["regressed"]}
    assert ("tiny:LlamaForCausalLM:2", "xnli/sample/ffn", "sw", "vanilla") in regressed
    assert all(r["previous"] == 1.0 and r["newest"] < 1.0 for r in payload["regressed"])
    assert "regressed: tiny:LlamaForCausalLM:2 xnli/sample/ffn sw" in payload["text"] and run in payload["text"]
