"""Accounts: sign up, sign in (with lockout), sign out, the login guard and CSRF tokens."""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import case, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import BadRequest, Conflict, Forbidden, TooManyRequests, Unauthorized
from werkzeug.security import check_password_hash, generate_password_hash

from imagerec.models import SignInThrottle, User, fold_username
from web.bodies import CSRF_FIELD, CSRF_HEADER, token_matches
from web.db import aware, get_session

bp = Blueprint("auth", __name__, url_prefix="/auth")

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 10
COMMON_PASSWORDS = Path(__file__).with_name("common-passwords.txt")
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the user does not exist, so both answers take as long; made on
    first use, as a hash costs a worker's start about 0.1 s of CPU."""
    return generate_password_hash("not a password")


WRONG_CREDENTIALS = "Wrong username or password."


class SignInRefused(Unauthorized):
    pass


def csrf_token() -> str:
    """The session's CSRF token, made on first use; forms and the page's JS echo it back."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def check_csrf() -> None:
    if request.method not in _UNSAFE_METHODS:
        return
    # A multipart body (an upload) is not parsed to find the token: it comes in the header or
    # the query, and the body is read only once the token is right (web/bodies.py).
    if request.mimetype == "multipart/form-data":
        sent = request.headers.get(CSRF_HEADER) or request.args.get(CSRF_FIELD)
    else:
        sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD)
    if not token_matches(sent, session):
        raise Forbidden("Missing or wrong CSRF token: reload the page and try again.")


def load_logged_in_user() -> None:
    if request.endpoint == "static":
        return
    user_id = session.get("user_id")
    user = get_session().get(User, user_id) if user_id is not None else None
    # A cookie from before epochs existed counts as epoch 0: valid until the first sign-out.
    if user is not None and session.get("epoch", 0) != user.session_epoch:
        user = None  # the account signed out since this cookie was made
    g.user = user


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapped(**kwargs: Any) -> Any:
        if g.user is None:
            if request.blueprint == "api":
                raise Unauthorized("Sign in first.")
            return redirect(url_for("auth.signin", next=request.full_path.rstrip("?")))
        return view(**kwargs)

    return wrapped


def sign_up(username: str, password: str) -> User:
    username = username.strip()
    if not USERNAME.match(username):
        raise BadRequest(
            "A username is 1 to 64 letters, digits or . _ @ - and starts with a letter or digit."
        )
    check_password(password, username)
    db = get_session()
    user = User(username=username, password_hash=generate_password_hash(password))
    db.add(user)
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        raise Conflict(f"The username {username} is taken.") from None
    return user


def check_password(password: str, username: str) -> None:
    """400 with the reason when a password is too easy to guess."""
    if len(password) < MIN_PASSWORD:
        raise BadRequest(f"A password needs at least {MIN_PASSWORD} characters.")
    if not password.strip():
        raise BadRequest("A password cannot be only spaces.")
    guess = password.strip().lower()
    if guess == username.lower():
        raise BadRequest("A password cannot be the username.")
    if guess in _common_passwords():
        raise BadRequest(
            "That password is among the 10,000 most common ones, which are guessed first; "
            "choose another."
        )


@functools.cache
def _common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def sign_in(username: str, password: str) -> User:
    """The user with these credentials; refuses while locked after too many failures.

    At most LOGIN_MAX_FAILURES wrong passwords are ever checked per lockout window, however
    many arrive at once: each attempt first reserves one of them in the database (one
    conditional UPDATE), and only an attempt that got one has its password checked. Names
    without an account are counted and locked the same way, and their password is checked
    against a dummy hash: no answer, nor its timing, tells which names exist.
    """
    db = get_session()
    username = username.strip()
    if not USERNAME.match(username):  # no account can have it: nothing to count
        check_password_hash(_dummy_hash(), password)
        raise SignInRefused(WRONG_CREDENTIALS)
    now = datetime.now(UTC)
    # Counted under the folded name: "ALICE", "Alice" and "alice" share one lockout.
    throttled = fold_username(username)
    attempt = _reserve_attempt(throttled, now)
    if attempt is None:
        throttle = db.get(SignInThrottle, throttled, populate_existing=True)
        locked = throttle.locked_until if throttle and throttle.locked_until else None
        until = aware(locked) if locked else now + _lockout()
        minutes = max(1, round((until - now).total_seconds() / 60))
        raise TooManyRequests(
            f"Too many failed sign-ins: this account is locked for {minutes} more minute(s)."
        )
    user = _account(username)
    right = check_password_hash(user.password_hash if user else _dummy_hash(), password)
    if user is None or not right:
        if attempt >= current_app.config["LOGIN_MAX_FAILURES"]:
            _set_throttle(throttled, locked_until=now + _lockout(), failures=0)
        raise SignInRefused(WRONG_CREDENTIALS)
    # Right: this attempt and the failures before it no longer count (attempts still being
    # checked keep theirs); a lock set meanwhile by one of them has reset the count already.
    _set_throttle(
        throttled,
        failures=case(
            (SignInThrottle.failures > attempt, SignInThrottle.failures - attempt), else_=0
        ),
        locked_until=None,
    )
    start_session(user)
    return user


def _account(username: str) -> User | None:
    """The account signed in to by this name: the exact name first (two accounts from before
    names were case-insensitive may differ by case alone, migration 0006), else any casing."""
    db = get_session()
    exact = db.scalar(select(User).where(User.username == username))
    if exact is not None:
        return exact
    return db.scalar(select(User).where(User.username_folded == fold_username(username)))


def _reserve_attempt(username: str, now: datetime) -> int | None:
    """Count this attempt as a failure before its password is checked: the number of
    attempts counted so far (this one included), or None while the name is locked."""
    db = get_session()
    insert = postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert
    db.execute(
        insert(SignInThrottle)
        .values(username=username, failures=0)
        .on_conflict_do_nothing(index_elements=[SignInThrottle.username])
    )
    attempt = db.scalar(
        update(SignInThrottle)
        .where(
            SignInThrottle.username == username,
            SignInThrottle.failures < current_app.config["LOGIN_MAX_FAILURES"],
            or_(SignInThrottle.locked_until.is_(None), SignInThrottle.locked_until <= now),
        )
        .values(failures=SignInThrottle.failures + 1)
        .returning(SignInThrottle.failures)
        .execution_options(synchronize_session=False)
    )
    db.commit()  # at once: a parallel attempt must see this one
    return attempt


def _set_throttle(username: str, **values: Any) -> None:
    db = get_session()
    db.execute(
        update(SignInThrottle)
        .where(SignInThrottle.username == username)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    db.commit()


def _lockout() -> timedelta:
    return timedelta(seconds=current_app.config["LOGIN_LOCKOUT_SECONDS"])


def start_session(user: User) -> None:
    # A fresh session (and CSRF token) at sign-in, so a planted cookie gains nothing.
    session.clear()
    session["user_id"] = user.id
    session["epoch"] = user.session_epoch
    csrf_token()


def end_session() -> None:
    """Sign out: this cookie and every other one made for the account stop working."""
    if g.user is not None:
        db = get_session()
        db.execute(
            update(User).where(User.id == g.user.id).values(session_epoch=User.session_epoch + 1)
        )
        db.commit()
    session.clear()


def _safe_next(target: str | None) -> str:
    # Browsers read /\host like //host, and drop tabs and newlines (/<TAB>/host is //host):
    # only plain same-site paths are followed.
    if (
        target
        and target.startswith("/")
        and not target.startswith(("//", "/\\"))
        and all(c.isprintable() and not c.isspace() for c in target)
    ):
        return target
    return url_for("albums.index")


@bp.route("/signup", methods=("GET", "POST"))
def signup():
    if request.method == "POST":
        try:
            user = sign_up(request.form.get("username", ""), request.form.get("password", ""))
        except (BadRequest, Conflict) as e:
            flash(e.description, "error")
            return render_template("auth/signup.html"), e.code
        start_session(user)
        return redirect(url_for("albums.index"))
    return render_template("auth/signup.html")


@bp.route("/signin", methods=("GET", "POST"))
def signin():
    if request.method == "POST":
        try:
            sign_in(request.form.get("username", ""), request.form.get("password", ""))
        except (SignInRefused, TooManyRequests) as e:
            flash(e.description, "error")
            return render_template("auth/signin.html"), e.code
        return redirect(_safe_next(request.args.get("next")))
    return render_template("auth/signin.html")


@bp.post("/signout")
def signout():
    end_session()
    return redirect(url_for("auth.signin"))


def init_app(app: Flask) -> None:
    app.before_request(check_csrf)
    app.before_request(load_logged_in_user)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["min_password"] = MIN_PASSWORD
