"""HTTP stand-ins for the providers, shaped like their real APIs, with faults on request.

- SMS like Twilio's Messages API: ``POST /2010-04-01/Accounts/{sid}/Messages.json``,
  form-encoded, basic auth; numbers ending in ``0000`` are opted out (error 21610).
- Push like FCM HTTP v1: ``POST /v1/projects/{project}/messages:send``, bearer token;
  tokens starting ``unregistered`` answer 404 ``UNREGISTERED``.
- WeChat template messages: ``GET /cgi-bin/token``, then
  ``POST /cgi-bin/message/template/send?access_token=…``; openids starting ``blocked``
  answer 43004 (unfollowed); a repeated ``client_msg_id`` is dropped, as WeChat does.
- Webhooks: the shop's endpoint, checking Standard Webhooks signatures and, as the scheme
  asks of receivers, dropping a repeated ``webhook-id``.

- The mail relay's events API like Mailgun's: ``GET /v3/{domain}/events?message-id=…``,
  basic auth ``api:<key>``: the messages the SMTP sink accepted.

Repeats that a provider drops are still recorded, marked ``"duplicate": true``.

Faults (``NOTIFIER_SINK_FAULTS="error=0.3,throttle=0.1,timeout=0.05"``, or JSON posted
to ``/_faults`` on any sink port) make a share of the sends fail with 503, 429 with
``Retry-After``, or hang past the client's patience. A failed send is not recorded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import random
import secrets
import time
import uuid
from datetime import UTC, datetime
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
from aiohttp import web

from worker.domain.sms import segments, twilio_signature
from worker.senders.sms import E164
from worker.settings import Settings

log = logging.getLogger("worker.sinks")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Faults:
    error: float = 0.0  # share of sends answered 503
    throttle: float = 0.0  # share answered 429 with Retry-After
    timeout: float = 0.0  # share that hang for hang_seconds
    retry_after: float = 1.0
    hang_seconds: float = 30.0

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """``error=0.3,throttle=0.1,timeout=0.05``: shares of the sends, and seconds."""
        faults = cls()
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, value = part.partition("=")
            if name.strip() not in cls.__dataclass_fields__:
                raise ValueError(f"unknown sink fault {name!r}")
            setattr(faults, name.strip(), float(value))
        return faults

    def update(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            if name in self.__dataclass_fields__:
                setattr(self, name, float(value))

    async def roll(self) -> str | None:
        """The fault that strikes this send ("timeout" after hanging, "throttle", "error"),
        or None to serve it."""
        roll = random.random()
        if roll < self.timeout:
            await asyncio.sleep(self.hang_seconds)
            return "timeout"
        if roll < self.timeout + self.throttle:
            return "throttle"
        return "error" if roll < self.timeout + self.throttle + self.error else None

    async def strike(self) -> web.Response | None:
        """An HTTP provider's answer to a fault, or None to serve the send."""
        fault = await self.roll()
        if fault == "timeout":
            return web.json_response({"error": "timeout"}, status=504)
        if fault == "throttle":
            return web.json_response({"code": 20429, "message": "Too Many Requests", "status": 429},
                                     status=429, headers={"Retry-After": f"{self.retry_after:g}"})
        if fault == "error":
            return web.json_response({"message": "Service Unavailable", "status": 503}, status=503)
        return None


Record = Callable[[str, dict[str, Any]], None]


def mail_event(headers: Any, at: float) -> dict[str, Any]:
    """One accepted message as Mailgun's events API tells it (Message-ID without brackets)."""
    return {"event": "accepted", "id": uuid.uuid4().hex, "timestamp": at,
            "message": {"headers": {"message-id": str(headers.get("Message-ID", "")).strip().strip("<>"),
                                    "subject": str(headers.get("Subject", ""))}}}


def mail_events_app(settings: Settings, accepted: list[dict[str, Any]]) -> web.Application:
    expected = "Basic " + base64.b64encode(f"api:{settings.email_events_key}".encode()).decode()

    async def events(request: web.Request) -> web.Response:
        """``GET /v3/{domain}/events?message-id=…&event=accepted&begin=<epoch>``."""
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401, text="Forbidden")
        wanted, kind = request.query.get("message-id"), request.query.get("event", "accepted")
        try:
            begin = float(request.query.get("begin", "0"))
        except ValueError:
            return web.json_response({"message": "Invalid begin"}, status=400)
        found = [e for e in accepted if e["timestamp"] >= begin and e["event"] == kind
                 and (not wanted or e["message"]["headers"]["message-id"] == wanted)]
        return web.json_response({"items": found[:300], "paging": {}})

    app = web.Application()
    app.router.add_get("/v3/{domain}/events", events)
    return app


CALLBACKS = web.AppKey("callbacks", aiohttp.ClientSession)


def sms_app(settings: Settings, record: Record, faults: Faults) -> web.Application:
    expected = "Basic " + base64.b64encode(
        f"{settings.sms_account_sid}:{settings.sms_auth_token}".encode()).decode()

    taken: list[dict[str, Any]] = []  # what this sink accepted, for the list endpoint
    callbacks: set[asyncio.Task[None]] = set()

    async def callback_session(app: web.Application) -> Any:
        # One session for every callback: a session each cost a new connection each, and a
        # fifth of the sinks' CPU.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            app[CALLBACKS] = session
            yield
            for task in callbacks:
                task.cancel()

    async def listing(request: web.Request) -> web.Response:
        """``GET …/Messages.json?To=…&DateSent>=…``: the messages taken, newest first."""
        if request.headers.get("Authorization") != expected:
            return _twilio_error(20003, "Authenticate", 401)
        to, since = request.query.get("To"), request.query.get("DateSent>", "")
        found = [m for m in reversed(taken) if (not to or m["to"] == to) and m["date_sent"] >= since]
        return web.json_response({"messages": found[:50], "page": 0, "page_size": 50})

    async def messages(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != expected:
            return _twilio_error(20003, "Authenticate", 401)
        if fault := await faults.strike():
            return fault
        form = await request.post()
        to, body = str(form.get("To", "")), str(form.get("Body", ""))
        if not E164.match(to):
            return _twilio_error(21211, f"The 'To' number {to} is not a valid phone number.", 400)
        if to.endswith("0000"):
            return _twilio_error(21610, "Attempt to send to unsubscribed recipient", 400)
        callback = parse_qs(urlsplit(str(form.get("StatusCallback", ""))).query)
        sid, count = "SM" + uuid.uuid4().hex, segments(body).count
        taken.append({"sid": sid, "to": to, "from": form.get("From"), "body": body, "status": "queued",
                      "date_sent": datetime.now(UTC).date().isoformat()})
        record("sms", {"path": request.path, "to": to, "from": form.get("From"), "body": body,
                       "num_segments": count, "sid": sid,
                       "notification_id": (callback.get("n") or [None])[0]})
        if form.get("StatusCallback"):
            # Like Twilio, tell the sender's callback what became of the message, signed.
            outcome = "undelivered" if to.endswith("9999") else "delivered"
            callbacks.add(asyncio.create_task(_status_callback(
                request.app[CALLBACKS], settings, str(form["StatusCallback"]), sid, to, outcome)))
            callbacks_done = [t for t in callbacks if t.done()]
            callbacks.difference_update(callbacks_done)
        return web.json_response({"sid": sid, "status": "queued", "to": to, "from": form.get("From"),
                                  "body": body, "num_segments": str(count)}, status=201)

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", messages)
    app.router.add_get("/2010-04-01/Accounts/{sid}/Messages.json", listing)
    app.cleanup_ctx.append(callback_session)
    return app


async def _status_callback(http: aiohttp.ClientSession, settings: Settings, url: str, sid: str,
                           to: str, status: str) -> None:
    """POST the message's final status to its StatusCallback a moment later, as Twilio does."""
    await asyncio.sleep(0.2)
    form = {"AccountSid": settings.sms_account_sid, "MessageSid": sid, "MessageStatus": status, "To": to}
    if status == "undelivered":
        form["ErrorCode"] = "30003"  # unreachable handset
    headers = {"X-Twilio-Signature": twilio_signature(settings.sms_auth_token, url, form)}
    try:
        async with http.post(url, data=form, headers=headers) as answer:
            await answer.read()
    except (aiohttp.ClientError, TimeoutError):
        log.info("status callback for %s not taken", sid)


def push_app(settings: Settings, record: Record, faults: Faults) -> web.Application:
    async def send(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {settings.push_access_token}":
            return _google_error(401, "UNAUTHENTICATED", None)
        if fault := await faults.strike():
            return fault
        message = (await request.json()).get("message", {})
        if str(message.get("token", "")).startswith("unregistered"):
            return _google_error(404, "NOT_FOUND", "UNREGISTERED")
        name = f"projects/{request.match_info['project']}/messages/0:{uuid.uuid4().int % 10**16}"
        record("push", {"path": request.path, "message": message, "name": name,
                        "notification_id": message.get("data", {}).get("notification_id")})
        return web.json_response({"name": name})

    app = web.Application()
    app.router.add_post("/v1/projects/{project}/messages:send", send)
    return app


def wechat_app(settings: Settings, record: Record, faults: Faults) -> web.Application:
    tokens: dict[str, float] = {}  # access token -> expiry (monotonic)
    seen: dict[str, int] = {}  # client_msg_id -> msgid

    async def token(request: web.Request) -> web.Response:
        q = request.query
        if (q.get("appid"), q.get("secret")) != (settings.wechat_app_id, settings.wechat_app_secret):
            return web.json_response({"errcode": 40013, "errmsg": "invalid appid"})
        issued = secrets.token_urlsafe(24)
        tokens[issued] = time.monotonic() + 7200
        return web.json_response({"access_token": issued, "expires_in": 7200})

    async def send(request: web.Request) -> web.Response:
        expiry = tokens.get(request.query.get("access_token", ""))
        if expiry is None:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        if expiry < time.monotonic():
            return web.json_response({"errcode": 42001, "errmsg": "access_token expired"})
        if fault := await faults.strike():
            return fault
        message = await request.json()
        if str(message.get("touser", "")).startswith("blocked"):
            return web.json_response({"errcode": 43004, "errmsg": "require subscribe"})
        client_id = message.get("client_msg_id") or secrets.token_hex(8)
        duplicate = client_id in seen
        msgid = seen.setdefault(client_id, random.randrange(10**9, 10**10))
        record("wechat", {"path": request.path, "message": message, "msgid": msgid,
                          "duplicate": duplicate, "notification_id": message.get("client_msg_id")})
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": msgid})

    async def expire(request: web.Request) -> web.Response:
        """For tests: every token issued so far expires now (WeChat answers 42001)."""
        for issued in tokens:
            tokens[issued] = 0.0
        return web.json_response({"expired": len(tokens)})

    app = web.Application()
    app.router.add_get("/cgi-bin/token", token)
    app.router.add_post("/cgi-bin/message/template/send", send)
    app.router.add_post("/_expire_tokens", expire)
    return app


def webhook_app(settings: Settings, record: Record, faults: Faults) -> web.Application:
    key = base64.b64decode(settings.webhook_secret.removeprefix("whsec_"))
    seen: set[str] = set()  # a receiver keeps the ids it handled, and drops a repeat

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        webhook_id = request.headers.get("webhook-id", "")
        stamp = request.headers.get("webhook-timestamp", "")
        signed = f"{webhook_id}.{stamp}.".encode() + body
        good = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        offered = [s.partition(",")[2] for s in request.headers.get("webhook-signature", "").split()]
        fresh = stamp.isdigit() and abs(time.time() - int(stamp)) < 300
        if not fresh or not any(hmac.compare_digest(good, s) for s in offered):
            return web.json_response({"error": "bad signature"}, status=401)
        if fault := await faults.strike():
            return fault
        duplicate = webhook_id in seen
        seen.add(webhook_id)
        record("webhook", {"path": request.path, "webhook_id": webhook_id, "duplicate": duplicate,
                           "timestamp": stamp, "signature": request.headers["webhook-signature"],
                           "body": body.decode(), "notification_id": webhook_id})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post(urlsplit(settings.webhook_url).path or "/", receive)
    return app


def faults_view(faults: Faults) -> Handler:
    async def view(request: web.Request) -> web.Response:
        if request.method == "POST":
            faults.update(await request.json())
        return web.json_response(faults.__dict__)

    return view


def _twilio_error(code: int, message: str, status: int) -> web.Response:
    return web.json_response({"code": code, "message": message, "status": status,
                              "more_info": f"https://www.twilio.com/docs/errors/{code}"}, status=status)


def _google_error(status: int, name: str, fcm_code: str | None) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": name.replace("_", " ").lower(), "status": name}
    if fcm_code:
        error["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                             "errorCode": fcm_code}]
    return web.Response(body=orjson.dumps({"error": error}), status=status,
                        content_type="application/json")


class Http2Sink:
    """An ASGI app served by hypercorn over cleartext HTTP/2 (prior knowledge), as APNs
    speaks HTTP/2 only; ``cleanup()`` stops it like the aiohttp runners."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = config.errorlog = None
        self.host, self.port = host, port
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(hypercorn_serve(app, config, shutdown_trigger=self.stop.wait))

    async def listening(self) -> Http2Sink:
        """Wait until the server accepts connections (hypercorn binds in its own task)."""
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                return self
            except OSError:
                if self.task.done():
                    self.task.result()  # the server failed to start: say why
                await asyncio.sleep(0.05)
        raise OSError(f"the HTTP/2 sink did not start on {self.host}:{self.port}")

    async def cleanup(self) -> None:
        self.stop.set()
        await self.task


def apns_app(settings: Settings, record: Record, faults: Faults) -> Any:
    """``POST /3/device/{token}`` with a provider JWT (ES256, ``kid``, ``iss``, ``iat``);
    tokens starting ``unregistered`` answer 410 ``Unregistered``."""
    import jwt
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    public = load_pem_private_key(settings.apns_key_file.read_bytes(), None).public_key()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, answer, extra = await _apns(scope, body)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *extra]})
        await send({"type": "http.response.body", "body": orjson.dumps(answer) if answer else b""})

    async def _apns(scope: dict[str, Any], body: bytes) -> tuple[int, dict[str, Any], list]:
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        if scope["method"] != "POST" or not scope["path"].startswith("/3/device/"):
            return 404, {"reason": "BadPath"}, []
        try:
            bearer = headers.get("authorization", "").removeprefix("bearer ")
            claims = jwt.decode(bearer, public, algorithms=["ES256"], options={"require": ["iss", "iat"]})
            if jwt.get_unverified_header(bearer).get("kid") != settings.apns_key_id or (
                    claims["iss"] != settings.apns_team_id):
                return 403, {"reason": "InvalidProviderToken"}, []
        except jwt.PyJWTError:
            return 403, {"reason": "InvalidProviderToken"}, []
        if time.time() - claims["iat"] > 3600:
            return 403, {"reason": "ExpiredProviderToken"}, []
        if headers.get("apns-topic") != settings.apns_topic:
            return 400, {"reason": "TopicDisallowed"}, []
        fault = await faults.roll()
        if fault == "throttle":
            return 429, {"reason": "TooManyRequests"}, [(b"retry-after", f"{faults.retry_after:g}".encode())]
        if fault in ("error", "timeout"):
            return 503, {"reason": "ServiceUnavailable"}, []
        token = scope["path"].rsplit("/", 1)[-1]
        if token.startswith("unregistered"):
            return 410, {"reason": "Unregistered", "timestamp": int(time.time() * 1000)}, []
        payload = orjson.loads(body)
        apns_id = headers.get("apns-id") or str(uuid.uuid4())
        record("push", {"provider": "apns", "path": scope["path"], "http_version": scope["http_version"],
                        "token": token, "apns_id": apns_id, "collapse_id": headers.get("apns-collapse-id"),
                        "payload": payload, "notification_id": payload.get("notification_id")})
        return 200, {}, [(b"apns-id", apns_id.encode())]

    return app
