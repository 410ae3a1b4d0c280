"""A night that failed or regressed reaches a person: `xtp nightly` posts one JSON message to a webhook.

The webhook's URL comes from the environment (`XTP_ALERT_WEBHOOK`; on Kubernetes from the Secret
xtp-alert, jobs/k8s/rayjob.yaml), never from a flag or a file: such URLs carry their own credentials
(a Slack or Teams incoming webhook, a PagerDuty or Alertmanager bridge). The message:

    {"text": one line for a person (chat webhooks show it), "night", "models", "status":
     "ok" | "regressed" | "failed" | "refused", "exit_code", "regressed": [{"model", "table", "lang",
     "metric", "previous", "newest", "drop_points"}], "failed": [{"model", "error"}],
     "runs": {model name: where its run and report are}, "histories": {model name: its history page}}

Nothing secret goes out: the values of the credential variables the night reads (`SECRET_NAMES`, and
any variable whose name says KEY, SECRET, TOKEN or PASSWORD) are replaced by `***` wherever they appear,
and URLs lose their user:password part. A post that fails is logged in one line (without the URL) and
changes nothing else: the night's exit status stays what the night made it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request

log = logging.getLogger("xtp_ray")

WEBHOOK_ENV = "XTP_ALERT_WEBHOOK"
TIMEOUT_S = 10.0
SECRET_NAMES = (WEBHOOK_ENV, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN")
SECRET_WORDS = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
STATUS = {0: "ok", 1: "failed", 2: "refused", 3: "regressed"}  # by the night's exit code


def _secrets(environ) -> list[str]:
    names = set(SECRET_NAMES) | {name for name in environ if SECRET_WORDS.search(name)}
    values = {environ[name] for name in names if len(environ.get(name) or "") >= 4}  # "1", "" are no secrets
    return sorted(values, key=len, reverse=True)  # a longer secret first, in case one holds another


def scrub(value, secrets: list[str]):
    """`value` (str, list, dict) with every secret and every URL's user:password replaced."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return USERINFO.sub(r"\1***@", value)
    if isinstance(value, list):
        return [scrub(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: scrub(v, secrets) for k, v in value.items()}
    return value


def message(night: str, models: list[str], exit_code: int, regressed: list[dict], failed: list[dict],
            runs: dict[str, str], histories: dict[str, str], error: str | None = None) -> dict:
    """The JSON a night posts (see the module's docstring)."""
    status = STATUS.get(exit_code, "failed")
    parts = [f"xtp nightly {night}: {status} (exit {exit_code})"]
    if regressed:
        parts.append("regressed: " + "; ".join(
            f"{r['model']} {r['table']} {r['lang']} {r['metric']} {100 * r['previous']:.1f} -> "
            f"{100 * r['newest']:.1f}" for r in regressed))
    if failed:
        parts.append("failed: " + "; ".join(f"{f['model']}: {f['error']}" if f["model"] else f["error"]
                                            for f in failed))
    if error:
        parts.append(error)
    if runs:
        parts.append("runs: " + ", ".join(runs.values()))
    return {"text": ". ".join(parts), "night": night, "models": list(models), "status": status,
            "exit_code": exit_code, "regressed": regressed, "failed": failed, "runs": runs, "histories": histories,
            **({"error": error} if error else {})}


def post(url: str, payload: dict, environ=None, timeout_s: float = TIMEOUT_S) -> bool:
    """POST `payload` (scrubbed of secrets) as JSON to `url`; True when the hook answered 2xx. Any failure is
    one log line, naming neither the URL nor a secret, and no exception."""
    environ = os.environ if environ is None else environ
    secrets = _secrets(environ)
    body = json.dumps(scrub(payload, secrets), ensure_ascii=False).encode("utf-8")
    try:
        if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
            raise ValueError("not an http:// or https:// URL")
        request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json",
                                                                                 "User-Agent": "xtp-ray-nightly"})
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310 - the operator's own URL
            answer.read(1024)
        return True
    except urllib.error.HTTPError as exc:
        why = f"the hook answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:  # unreachable, timed out, not an http(s) URL
        why = str(getattr(exc, "reason", None) or exc)
    why = scrub(why.replace(url, "<webhook>"), secrets + [url])
    log.error("alert not sent (%s from the environment): %s; the night's exit status is unchanged", WEBHOOK_ENV,
              " ".join(why.split()))
    return False


def alert(payload: dict, always: bool = False, environ=None) -> bool | None:
    """Post the night's message where `XTP_ALERT_WEBHOOK` is set and the night was not ok (or `always`);
    None where nothing was to be sent."""
    environ = os.environ if environ is None else environ
    url = (environ.get(WEBHOOK_ENV) or "").strip()
    if not url or (payload["exit_code"] == 0 and not always):
        return None
    return post(url, payload, environ)
