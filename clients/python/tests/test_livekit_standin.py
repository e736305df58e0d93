"""The LiveKit stand-in itself (livekit_standin.py): it accepts what LiveKit accepts, from
LiveKit's own Python client (protobuf) and from a hand-made JSON request, and refuses what
LiveKit refuses (a wrong secret or key, a missing grant, an expired token, a wrong path,
content type or body), and its scripted faults answer as scripted."""

from __future__ import annotations

import datetime
import json
import time
import urllib.error
import urllib.request

import pytest
from livekit import api
from livekit.protocol.room import DeleteRoomRequest

from livekit_standin import API_KEY, API_SECRET, DELETE_ROOM, LiveKitStandIn


@pytest.fixture
def standin():
    with LiveKitStandIn(rooms=("call-1",)) as s:
        yield s


def token(
    key: str = API_KEY,
    secret: str = API_SECRET,
    *,
    grants: api.VideoGrants | None = None,
    ttl: datetime.timedelta = datetime.timedelta(minutes=5),
) -> str:
    return (
        api.AccessToken(key, secret)
        .with_grants(grants if grants is not None else api.VideoGrants(room_create=True))
        .with_ttl(ttl)
        .to_jwt()
    )


def post(
    standin: LiveKitStandIn,
    body: bytes | str = '{"room": "call-1"}',
    *,
    bearer: str | bool = True,
    authorization: str | None = None,
    path: str = DELETE_ROOM,
    content_type: str = "application/json",
    method: str = "POST",
    timeout: float = 10,
) -> tuple[int, str, dict[str, str]]:
    """One request; returns (status, body text, headers). `bearer`: True for a good token,
    False for none, or the token to send."""
    headers = {"Content-Type": content_type}
    if authorization is not None:
        headers["Authorization"] = authorization
    elif bearer is not False:
        headers["Authorization"] = f"Bearer {token() if bearer is True else bearer}"
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(
        f"http://127.0.0.1:{standin.port}{path}", data=data, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), dict(err.headers)


def twirp_code(text: str) -> str:
    return json.loads(text)["code"]


async def test_livekits_own_client_deletes_a_room_over_protobuf(
    standin: LiveKitStandIn,
) -> None:
    async with api.LiveKitAPI(standin.ws_url, API_KEY, API_SECRET, failover=False) as lk:
        await lk.room.delete_room(DeleteRoomRequest(room="call-1"))
    [request] = standin.requests
    assert request.status == 200
    assert request.content_type == "application/protobuf"
    assert request.room == "call-1"
    assert request.claims is not None and request.claims.video.room_create
    assert standin.deleted_rooms() == ["call-1"]
    assert not standin.has_room("call-1")


async def test_livekits_own_client_sees_not_found_for_an_unknown_room(
    standin: LiveKitStandIn,
) -> None:
    async with api.LiveKitAPI(standin.url, API_KEY, API_SECRET, failover=False) as lk:
        with pytest.raises(api.TwirpError) as raised:
            await lk.room.delete_room(DeleteRoomRequest(room="never-was"))
    assert raised.value.code == api.TwirpErrorCode.NOT_FOUND
    assert raised.value.status == 404
    assert raised.value.message == "requested room does not exist"


def test_json_is_accepted_and_a_second_delete_is_not_found(standin: LiveKitStandIn) -> None:
    status, text, headers = post(standin, '{"room": "call-1", "unknownField": 1}')
    assert (status, text) == (200, "{}")
    assert headers["Content-Type"] == "application/json"
    status, text, _ = post(standin, '{"room": "call-1"}')
    assert status == 404
    assert json.loads(text) == {"code": "not_found", "msg": "requested room does not exist"}
    assert [r.status for r in standin.requests] == [200, 404]
    assert standin.deleted_rooms() == ["call-1"]


def test_a_content_type_with_parameters_is_accepted(standin: LiveKitStandIn) -> None:
    status, _, _ = post(standin, content_type="application/json; charset=utf-8")
    assert status == 200


@pytest.mark.parametrize(
    "case, kwargs, answer",
    [
        ("wrong secret", {"bearer": token(secret="x" * 40)}, "invalid token: "),
        ("wrong key", {"bearer": token(key="APIother")}, "invalid API key: APIother"),
        (
            "expired beyond the leeway",
            {"bearer": token(ttl=datetime.timedelta(seconds=-120))},
            "invalid token: ",
        ),
        ("not a JWT", {"bearer": "not-a-jwt"}, "invalid authorization token"),
        (
            "not a bearer",
            {"authorization": "Basic QVBJOnNlY3JldA=="},
            "invalid authorization header. Must start with Bearer ",
        ),
    ],
)
def test_bad_tokens_get_livekits_plain_401(
    standin: LiveKitStandIn, case: str, kwargs: dict, answer: str
) -> None:
    status, text, headers = post(standin, **kwargs)
    assert status == 401, case
    assert text.startswith(answer), (case, text)
    assert headers["Content-Type"].startswith("text/plain")
    assert standin.has_room("call-1"), case
    assert standin.deleted_rooms() == []
    [request] = standin.requests
    assert request.claims is None and request.status == 401


def test_a_refused_token_is_repeated_in_the_401_as_livekit_does(standin: LiveKitStandIn) -> None:
    bad = token(secret="y" * 40)
    _, text, _ = post(standin, bearer=bad)
    assert text.startswith(f"invalid token: {bad}, error: ")


@pytest.mark.parametrize(
    "grants",
    [
        api.VideoGrants(room_admin=True, room="call-1"),
        api.VideoGrants(room_list=True),
        api.VideoGrants(room_create=False),
    ],
)
def test_a_token_without_room_create_is_unauthenticated(
    standin: LiveKitStandIn, grants: api.VideoGrants
) -> None:
    status, text, _ = post(standin, bearer=token(grants=grants))
    assert status == 401
    assert json.loads(text) == {"code": "unauthenticated", "msg": "permissions denied"}
    assert standin.has_room("call-1")


def test_no_token_at_all_is_unauthenticated(standin: LiveKitStandIn) -> None:
    status, text, _ = post(standin, bearer=False)
    assert (status, twirp_code(text)) == (401, "unauthenticated")
    assert standin.has_room("call-1")


@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        ({"path": "/twirp/livekit.RoomService/DeleteRooms"}, 404, "bad_route"),
        ({"path": "/twirp/livekit.Room/DeleteRoom"}, 404, "bad_route"),
        ({"path": "/DeleteRoom"}, 404, "bad_route"),
        ({"method": "PUT"}, 404, "bad_route"),
        ({"content_type": "text/plain"}, 404, "bad_route"),
        ({"body": '{"room": 5}'}, 400, "malformed"),
        ({"body": "room=call-1"}, 400, "malformed"),
        ({"body": b"\xff\xff", "content_type": "application/protobuf"}, 400, "malformed"),
    ],
)
def test_a_wrong_route_or_body_is_refused_as_twirp_refuses_it(
    standin: LiveKitStandIn, kwargs: dict, status: int, code: str
) -> None:
    got, text, _ = post(standin, **kwargs)
    assert (got, twirp_code(text)) == (status, code), text
    assert standin.has_room("call-1")


def test_a_prefix_moves_the_route(standin: LiveKitStandIn) -> None:
    with LiveKitStandIn(rooms=("r",), prefix="/livekit/") as prefixed:
        assert prefixed.url.endswith("/livekit")
        status, _, _ = post(prefixed, '{"room": "r"}', path="/livekit" + DELETE_ROOM)
        assert status == 200
        status, text, _ = post(prefixed, '{"room": "r"}')
        assert (status, twirp_code(text)) == (404, "bad_route")


def test_scripted_503s_then_the_delete(standin: LiveKitStandIn) -> None:
    standin.fail_next(503, "unavailable", "no nodes", times=2, retry_after="1")
    answers = [post(standin) for _ in range(3)]
    assert [a[0] for a in answers] == [503, 503, 200]
    assert answers[0][2]["Retry-After"] == "1"
    assert json.loads(answers[0][1]) == {"code": "unavailable", "msg": "no nodes"}
    assert [r.status for r in standin.requests] == [503, 503, 200]
    # The failed attempts were checked like the good one: same room, verified token.
    assert all(r.room == "call-1" and r.claims is not None for r in standin.requests)
    assert standin.deleted_rooms() == ["call-1"]


def test_a_scripted_401(standin: LiveKitStandIn) -> None:
    standin.fail_next(401, "unauthenticated", "permissions denied")
    assert post(standin)[0] == 401
    assert standin.has_room("call-1")
    assert post(standin)[0] == 200


def test_faults_apply_only_to_requests_that_pass_the_checks(standin: LiveKitStandIn) -> None:
    standin.fail_next(503, "unavailable")
    assert post(standin, bearer=token(secret="z" * 40))[0] == 401
    assert post(standin)[0] == 503
    assert post(standin)[0] == 200


def test_a_delay_holds_the_answer(standin: LiveKitStandIn) -> None:
    standin.delay_next(0.3)
    started = time.monotonic()
    assert post(standin)[0] == 200
    assert time.monotonic() - started >= 0.3
    standin.add_room("call-1")
    standin.delay_next(5)
    with pytest.raises(TimeoutError):
        post(standin, timeout=0.2)


def test_wait_for_requests(standin: LiveKitStandIn) -> None:
    with pytest.raises(TimeoutError):
        standin.wait_for_requests(1, timeout=0.05)
    post(standin)
    assert len(standin.wait_for_requests(1, timeout=1)) == 1


def test_sidecar_settings_point_at_the_standin(standin: LiveKitStandIn) -> None:
    assert standin.sidecar_args() == ["--livekit-url", f"ws://127.0.0.1:{standin.port}"]
    assert standin.sidecar_env() == {
        "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET,
    }

