"""A client for the upstream registry that pull-through mode mirrors.

Authentication follows what registries ask for in ``WWW-Authenticate``:
``Bearer`` (the distribution token spec: GET the realm with ``service`` and
``scope``, with basic credentials when we have them, and use the returned
``token``/``access_token``) or ``Basic``. Tokens are cached per scope until
they are refused. Credentials never appear in log lines or error messages.

The basic credentials go to a token realm only if it is on the upstream's
own host (or a host in ``token_hosts``, or Docker Hub's own token host)
and uses https (http only when the
upstream itself is plain http): a challenge can name any URL, and a hostile
or compromised upstream must not be able to collect the credentials.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from yarl import URL

from krill import oci
from krill.bodies import BodyTooLarge, read_limited
from krill.digests import Digest
from krill.names import image_reference
from krill.registry_errors import RegistryError

log = logging.getLogger(__name__)

_CHALLENGE_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')
# Registries whose token service is on another host by design (anonymous pulls need
# no entry: the check applies only when credentials would be sent).
WELL_KNOWN_TOKEN_HOSTS = {
    "registry-1.docker.io": {"auth.docker.io"},
    "docker.io": {"auth.docker.io"},
}
MANIFEST_ACCEPT = ", ".join(oci.MANIFEST_TYPES)


class UpstreamNotFound(Exception):
    """The upstream registry answered 404 for this manifest or blob."""


class UpstreamDenied(RegistryError):
    """The upstream registry refused access (401/403) to one repository's manifest or blob."""

    def __init__(self, message: str) -> None:
        super().__init__("UNAVAILABLE", message, status=502)


@dataclass(frozen=True)
class UpstreamManifest:
    body: bytes
    media_type: str
    digest: Digest | None  # as the upstream's Docker-Content-Digest header claims


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM_RE.findall(rest))


class UpstreamClient:
    def __init__(
        self,
        base_url: str,
        credentials: tuple[str, str] | None = None,
        timeout: float = 300.0,
        token_hosts: tuple[str, ...] = (),
    ) -> None:
        url = URL(base_url)
        if url.user is not None and credentials is None:
            # https://user:pass@host works, but the secret must not end up in messages.
            credentials = (url.user, url.password or "")
        self.base_url = str(url.with_user(None)).rstrip("/")
        self._base = URL(self.base_url)
        self._token_hosts = {h.lower() for h in token_hosts}
        self._token_hosts |= WELL_KNOWN_TOKEN_HOSTS.get((self._base.host or "").lower(), set())
        self._credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[str, str] = {}  # scope -> Authorization header value
        self._basic = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        return self._session

    def _basic_header(self) -> str | None:
        if self._credentials is None:
            return None
        user, password = self._credentials
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _auth_header(self, scope: str) -> str | None:
        if scope in self._tokens:
            return self._tokens[scope]
        return self._basic_header() if self._basic else None

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        repo: str,
        path: str,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response for ``/v2/<repo>/<path>``, authenticating once if challenged."""
        url = f"{self.base_url}/v2/{repo}/{path}"
        scope = f"repository:{repo}:pull"
        for attempt in range(2):
            sent = dict(headers or {})
            auth = self._auth_header(scope)
            if auth:
                sent["Authorization"] = auth
            try:
                response = await self.session.request(method, url, headers=sent)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise unavailable(f"upstream {self.base_url} unreachable: {exc}") from None
            if response.status == 401 and attempt == 0:
                challenge = response.headers.get("WWW-Authenticate", "")
                response.release()
                await self._answer_challenge(challenge, scope)
                continue
            try:
                yield response
            finally:
                response.release()
            return

    async def _answer_challenge(self, challenge: str, scope: str) -> None:
        scheme, params = parse_challenge(challenge)
        self._tokens.pop(scope, None)
        if scheme == "basic":
            if self._credentials is None:
                raise unavailable("upstream asks for basic auth; configure upstream credentials")
            self._basic = True
        elif scheme == "bearer" and "realm" in params:
            self._tokens[scope] = await self._fetch_token(params, scope)
        else:
            raise unavailable(f"upstream sent an unsupported auth challenge ({scheme or 'none'})")

    def check_realm(self, realm: str) -> None:
        """Refuse a token realm our credentials must not be sent to (see the module doc)."""
        try:
            url = URL(realm)
        except ValueError:
            url = URL()
        host = (url.host or "").lower()
        allowed_schemes = ("https", "http") if self._base.scheme == "http" else ("https",)
        if url.scheme not in allowed_schemes:
            raise unavailable(
                f"upstream token realm {realm[:200]!r} is not https; refusing to send "
                "credentials there"
            )
        if host != (self._base.host or "").lower() and host not in self._token_hosts:
            raise unavailable(
                f"upstream token realm host {host!r} is not the upstream's; add it to "
                "upstream_token_hosts if it is the registry's token service"
            )

    async def _fetch_token(self, params: dict[str, str], scope: str) -> str:
        query = {"scope": params.get("scope", scope)}
        if "service" in params:
            query["service"] = params["service"]
        headers = {}
        basic = self._basic_header()
        if basic:
            self.check_realm(params["realm"])
            headers["Authorization"] = basic
        try:
            async with self.session.get(params["realm"], params=query, headers=headers) as resp:
                if resp.status != 200:
                    raise unavailable(
                        f"upstream token service refused us (HTTP {resp.status}); "
                        "check the upstream credentials"
                    )
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise unavailable(f"upstream token service failed: {exc.__class__.__name__}") from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not token:
            raise unavailable("upstream token service returned no token")
        log.info("upstream.token_obtained scope=%s", scope)
        return f"Bearer {token}"

    async def get_manifest(self, repo: str, reference: str, limit: int) -> UpstreamManifest:
        async with self.request(
            "GET", repo, f"manifests/{reference}", {"Accept": MANIFEST_ACCEPT}
        ) as resp:
            check_status(resp, f"manifest {image_reference(repo, reference)}")
            what = f"upstream manifest {repo}:{reference}"
            try:
                body = await read_limited(resp.content, limit, what, resp.content_length)
            except BodyTooLarge as exc:
                raise unavailable(str(exc)) from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise unavailable(f"{what} could not be read: {exc.__class__.__name__}") from None
            header_digest = resp.headers.get("Docker-Content-Digest")
            try:
                claimed = Digest.parse(header_digest) if header_digest else None
            except ValueError:
                claimed = None
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            return UpstreamManifest(body, media_type, claimed)

    @contextlib.asynccontextmanager
    async def get_blob(self, repo: str, digest: Digest) -> AsyncIterator[aiohttp.ClientResponse]:
        async with self.request("GET", repo, f"blobs/{digest}") as resp:
            check_status(resp, f"blob {digest} in {repo}")
            yield resp

    async def head_blob(self, repo: str, digest: Digest) -> int | None:
        """The blob's size if upstream has it in ``repo``, None if not."""
        async with self.request("HEAD", repo, f"blobs/{digest}") as resp:
            if resp.status == 404:
                return None
            check_status(resp, f"blob {digest} in {repo}")
            return resp.content_length


def check_status(resp: aiohttp.ClientResponse, what: str) -> None:
    if resp.status == 200:
        return
    if resp.status == 404:
        raise UpstreamNotFound(what)
    if resp.status in (401, 403):
        raise UpstreamDenied(f"upstream refused access to {what} (HTTP {resp.status})")
    raise unavailable(f"upstream answered HTTP {resp.status} for {what}")


def unavailable(message: str) -> RegistryError:
    return RegistryError("UNAVAILABLE", message, status=502)
