from __future__ import annotations

from daisi_ws.gateway.registry import Registry


class C:
    """A stand-in socket: identity is all the registry needs."""


def test_session_claim_is_identity_checked() -> None:
    r = Registry()
    a, b = C(), C()
    assert r.claim_session("k", a) is None
    assert r.claim_session("k", b) is a  # b replaces a
    assert r.release_session("k", a) is False  # a's later end touches nothing
    assert r.holder("k") is b
    assert r.release_session("k", b) is True
    assert r.holder("k") is None
    assert r.claim_session("k", a) is None
    assert r.claim_session("k", a) is None  # re-claiming by the holder is not a replacement


def test_user_pairs_are_reference_counted() -> None:
    r = Registry()
    a, b = C(), C()
    assert r.add_user(a, ("c", "a")) is True
    assert r.add_user(b, ("c", "a")) is False
    assert r.remove_user(a, ("c", "a")) is False
    assert r.has_users(("c", "a"))
    assert r.remove_user(b, ("c", "a")) is True
    assert not r.has_users(("c", "a"))
    assert r.remove_user(b, ("c", "a")) is False  # idempotent
    assert len(r) == 0


def test_chat_moves_release_the_old_chat_only_when_unused() -> None:
    r = Registry()
    a, b = C(), C()
    pair = ("c", "a")
    r.add_user(a, pair)
    r.add_user(b, pair)
    assert r.select_chat(a, pair, None, "x") is False
    assert r.select_chat(b, pair, None, "x") is False
    assert r.select_chat(a, pair, "x", "y") is False  # b still selects x
    assert r.chat_selected(pair, "x") and r.chat_selected(pair, "y")
    assert r.select_chat(b, pair, "x", "y") is True  # x is now unused
    assert not r.chat_selected(pair, "x")
    assert r.route_keys() == ([pair], [("c", "a", "y")])


def test_admin_sets_match_filters_without_duplicates() -> None:
    r = Registry()
    conns = {flt: C() for flt in [("*", "*"), ("c", "*"), ("*", "a"), ("c", "a"), ("d", "*")]}
    for flt, conn in conns.items():
        r.add_admin(conn, flt)
    matched = [m for s in r.admin_sets("c", "a") for m in s]
    assert len(matched) == 4 and len(set(map(id, matched))) == 4
    assert conns[("d", "*")] not in matched
    assert r.admin_sets("*", "*") == []  # wildcard tokens never come from a publish
