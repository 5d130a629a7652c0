"""REST history parameters and opaque cursors, without a server or a database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from push_server import cursor
from push_server.cursor import CursorError
from push_server.rest import bearer_token
from push_server.rest_params import (
    DEFAULT_LIMIT,
    BadParamError,
    parse_aggregate_query,
    parse_alert_query,
    parse_time,
)

pytestmark = pytest.mark.unit


def args(**kw: str | list[str]) -> dict[str, list[str]]:
    return {k: v if isinstance(v, list) else [v] for k, v in kw.items()}


# --- cursors -------------------------------------------------------------------------------------

def test_cursor_round_trips_and_is_url_safe() -> None:
    fp = cursor.fingerprint("aggregates", "fixed", "country", None)
    text = cursor.encode(fp, [1_767_225_600_000_000, "country", "DE/ü+?", 42])
    assert "=" not in text and "+" not in text and "/" not in text
    assert cursor.decode(text, fp, (int, str, str, int)) == (1_767_225_600_000_000, "country", "DE/ü+?", 42)


@pytest.mark.parametrize("text", ["", "!!!", "e30", "W10", "WzIsImFiYyJd", "a" * 3000, "ünicode"])
def test_malformed_cursors_are_refused(text: str) -> None:
    with pytest.raises(CursorError, match="malformed"):
        cursor.decode(text, "abc", (int,))


def test_cursor_checks_types_and_shape() -> None:
    fp = "fp"
    with pytest.raises(CursorError):
        cursor.decode(cursor.encode(fp, ["1"]), fp, (int,))  # a string where an int belongs
    with pytest.raises(CursorError):
        cursor.decode(cursor.encode(fp, [1, 2]), fp, (int,))  # wrong length
    with pytest.raises(CursorError):
        cursor.decode(cursor.encode(fp, [True]), fp, (int,))  # bool is not an int here
    with pytest.raises(CursorError):
        cursor.decode(cursor.encode(fp, [2**63]), fp, (int,))


def test_cursor_of_another_query_is_refused() -> None:
    mine, other = cursor.fingerprint("a", 1), cursor.fingerprint("a", 2)
    with pytest.raises(CursorError, match="another query"):
        cursor.decode(cursor.encode(other, [1]), mine, (int,))


def test_micros_are_exact() -> None:
    moment = datetime(2026, 1, 1, 0, 0, 0, 123457, tzinfo=UTC)
    assert cursor.from_micros(cursor.micros(moment)) == moment


# --- aggregate parameters ----------------------------------------------------------------------------

def test_aggregate_query_defaults_and_values() -> None:
    q = parse_aggregate_query(args(kind="sliding"))
    assert (q.kind, q.dimension, q.key, q.start, q.end, q.limit, q.after) == (
        "sliding", None, None, None, None, DEFAULT_LIMIT, None)
    assert q.channel == "aggregates.sliding"
    q = parse_aggregate_query(args(kind="fixed", dimension="country", key="DE", limit="7",
                                   **{"from": "1767225600000", "to": "2026-01-01T02:00:00+01:00"}))
    assert (q.dimension, q.key, q.limit) == ("country", "DE", 7)
    assert (q.start, q.end) == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 1, tzinfo=UTC))
    with pytest.raises(BadParamError):  # [from, to) must not be empty: the same instant in two notations
        parse_aggregate_query(args(kind="fixed", **{"from": "1767225600000", "to": "2026-01-01T00:00:00Z"}))


@pytest.mark.parametrize(("given", "param"), [
    ({}, "kind"),
    ({"kind": "hourly"}, "kind"),
    ({"kind": "fixed", "limit": "0"}, "limit"),
    ({"kind": "fixed", "limit": "-1"}, "limit"),
    ({"kind": "fixed", "limit": "1e3"}, "limit"),
    ({"kind": "fixed", "limit": "1001"}, "limit"),
    ({"kind": "fixed", "key": "DE"}, "key"),
    ({"kind": "fixed", "dimension": ""}, "dimension"),
    ({"kind": "fixed", "dimension": "x" * 257}, "dimension"),
    ({"kind": "fixed", "dimension": "a\nb"}, "dimension"),
    ({"kind": "fixed", "from": "2026-01-01T00:00:00"}, "from"),  # no zone
    ({"kind": "fixed", "from": "tomorrow"}, "from"),
    ({"kind": "fixed", "to": "99999999999999999"}, "to"),
    ({"kind": "fixed", "from": "5", "to": "4"}, "from"),
    ({"kind": "fixed", "sort": "asc"}, "sort"),
    ({"kind": ["fixed", "sliding"]}, "kind"),
    ({"kind": "fixed", "cursor": "garbage"}, "cursor"),
])
def test_bad_aggregate_params(given: dict[str, str | list[str]], param: str) -> None:
    with pytest.raises(BadParamError) as info:
        parse_aggregate_query(args(**given))
    assert info.value.param == param


def test_aggregate_cursor_is_bound_to_the_filters_not_the_page_size() -> None:
    first = parse_aggregate_query(args(kind="fixed", dimension="country", limit="10"))
    position = (cursor.micros(datetime(2026, 1, 1, tzinfo=UTC)), "country", "DE",
                cursor.micros(datetime(2026, 1, 1, 0, 1, tzinfo=UTC)))
    text = cursor.encode(first.fingerprint, position)
    q = parse_aggregate_query(args(kind="fixed", dimension="country", limit="50", cursor=text))
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    assert q.after == (start, "country", "DE", end)
    with pytest.raises(BadParamError, match="another query"):
        parse_aggregate_query(args(kind="fixed", dimension="category", cursor=text))


def test_out_of_range_cursor_times_are_a_400_not_a_crash() -> None:
    q = parse_aggregate_query(args(kind="fixed"))
    text = cursor.encode(q.fingerprint, [2**61, "d", "k", 0])
    with pytest.raises(BadParamError) as info:
        parse_aggregate_query(args(kind="fixed", cursor=text))
    assert info.value.param == "cursor"


# --- alert parameters ---------------------------------------------------------------------------------

def test_alert_query() -> None:
    q = parse_alert_query(args(user_id="u1", min_score="0.75", limit="3"))
    assert (q.user_id, q.min_score, q.limit, q.channel) == ("u1", 0.75, 3, "alerts")
    assert parse_alert_query({}).limit == DEFAULT_LIMIT


@pytest.mark.parametrize("score", ["1.5", "-0.1", "nan", "inf", "high"])
def test_bad_min_score(score: str) -> None:
    with pytest.raises(BadParamError) as info:
        parse_alert_query(args(min_score=score))
    assert info.value.param == "min_score"


def test_parse_time_accepts_epoch_ms_and_zoned_iso() -> None:
    assert parse_time("0", "from") == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_time("2026-01-01T00:00:00Z", "from") == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer  abc ", "abc"), (None, None), ("", None),
    ("Basic dXNlcg==", None), ("Bearer", None), ("Bearer a b", None),
])
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token
