"""The request every listener serves: aiohttp's own, carrying three things from the connection and the
routes to the gate's accounting.

They are plain attributes rather than request keys (`request[KEY]`): they are written and read on every
request, and an attribute costs a fraction of a mapping's method call on a path that does little else.
The listener's server makes every request one of these (`request_factory`), so each attribute has a value.
"""

from __future__ import annotations

from aiohttp import web

UNCLAIMED = ("unknown", "")  # the label of a request no route claimed


class GatedRequest(web.BaseRequest):
    # The local uid of the connection's peer, decided when the connection was accepted (None: undeterminable).
    uid: int | None = None
    # (route, reason it was refused or "") for the metrics, the audit trail and the DEBUG line.
    label: tuple[str, str] = UNCLAIMED
    # The ARN of the role the request was answered for, where one endpoint serves several roles (transparent
    # mode): its audit record names it instead of the endpoint's own (None: the endpoint's).
    served_role: str | None = None
