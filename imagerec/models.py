"""The database: users own albums, albums hold images, images carry detections."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    literal_column,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    # SQLite hands timezone-aware columns back naive; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Status(enum.StrEnum):
    UPLOADED = "uploaded"
    PROCESSING = "processing"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"


class Base(DeclarativeBase):
    # Named constraints, so Alembic migrations can alter them on SQLite and PostgreSQL alike.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


def fold_username(username: str) -> str:
    """The form user names are compared in: usernames are ASCII (web/auth.py), so lower()
    is case folding, and SQL's lower() (migration 0006) agrees with it on every backend."""
    return username.lower()


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    # The name case-folded: unique, so "Alice" cannot sign up beside "alice". Null only for an
    # account that, before names were case-insensitive, differed from an older one by case
    # alone (migration 0006): it keeps its exact name, the older one the folded one.
    username_folded: Mapped[str | None] = mapped_column(
        String(64),
        index=True,
        unique=True,
        default=lambda context: fold_username(context.get_current_parameters()["username"]),
    )
    password_hash: Mapped[str] = mapped_column(String(255))
    # A signed session cookie carries the epoch it was made in; signing out moves it on, so
    # a copy of the cookie (kept, stolen) no longer signs anyone in.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    albums: Mapped[list[Album]] = relationship(
        back_populates="owner", cascade="all, delete-orphan", passive_deletes=True
    )


class SignInThrottle(Base):
    """Failed sign-ins per username, whether or not an account has it: a name nobody owns
    locks like a real one, so the answers never tell which names exist."""

    __tablename__ = "sign_in_throttles"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Album(Base):
    __tablename__ = "albums"
    __table_args__ = (UniqueConstraint("user_id", "name", name="uq_albums_user_id_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Counts photos that left the album (deleted or moved away). Every other change stamps a
    # photo row's updated_at, so this and the newest stamp tell whether the album changed
    # without reading its photos (the web's ETag).
    removals: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    owner: Mapped[User] = relationship(back_populates="albums")
    images: Mapped[list[Image]] = relationship(
        back_populates="album", cascade="all, delete-orphan", passive_deletes=True
    )


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        # The same bytes twice in one album are one photo.
        UniqueConstraint("album_id", "content_hash", name="uq_images_album_id_content_hash"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    album_id: Mapped[int] = mapped_column(ForeignKey("albums.id", ondelete="CASCADE"), index=True)
    blob_key: Mapped[str] = mapped_column(String(512))
    thumbnail_key: Mapped[str | None] = mapped_column(String(512))
    file_name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(String(64))

    status: Mapped[str] = mapped_column(String(16), default=Status.UPLOADED, index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    # EXIF DateTimeOriginal as ISO 8601 local time, with its offset only when EXIF has one:
    # kept as text because a timestamp column would invent a time zone.
    creation_time: Mapped[str | None] = mapped_column(String(32))
    lat_degrees: Mapped[float | None] = mapped_column(Float)
    lat_minutes: Mapped[float | None] = mapped_column(Float)
    lat_seconds: Mapped[float | None] = mapped_column(Float)
    lat_direction: Mapped[str | None] = mapped_column(String(1))
    lon_degrees: Mapped[float | None] = mapped_column(Float)
    lon_minutes: Mapped[float | None] = mapped_column(Float)
    lon_seconds: Mapped[float | None] = mapped_column(Float)
    lon_direction: Mapped[str | None] = mapped_column(String(1))
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    exif_make: Mapped[str | None] = mapped_column(String(255))
    exif_model: Mapped[str | None] = mapped_column(String(255))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    format: Mapped[str | None] = mapped_column(String(8))
    orientation: Mapped[int | None] = mapped_column(Integer)
    model: Mapped[str | None] = mapped_column(String(512))

    album: Mapped[Album] = relationship(back_populates="images")
    detections: Mapped[list[Detection]] = relationship(
        back_populates="image",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Detection.score.desc()",
    )

    def labels(self) -> list[dict[str, float | str]]:
        """Best score per label, best first; detections are stored above the threshold."""
        best: dict[str, float] = {}
        for d in self.detections:
            best[d.label] = max(best.get(d.label, 0.0), d.score)
        return [{"label": k, "score": v} for k, v in sorted(best.items(), key=lambda kv: -kv[1])]


# What "sort by date taken" orders by: EXIF's local time as text, which sorts as time does;
# photos without one sort as "" (last, newest first). A literal, not a bound parameter, so the
# database matches it to the index below.
TAKEN_KEY = func.coalesce(Image.creation_time, literal_column("''"))

# Keyset pagination of an album (or of all the user's photos) in either order, and what
# changed in an album since a moment (with the state, so the album's validator is computed
# from the index alone): each an index range scan, however large the album.
Index("ix_images_album_id_created_at", Image.album_id, Image.created_at, Image.id)
Index("ix_images_album_id_taken", Image.album_id, TAKEN_KEY, Image.id)
Index("ix_images_user_id_created_at", Image.user_id, Image.created_at, Image.id)
Index("ix_images_user_id_taken", Image.user_id, TAKEN_KEY, Image.id)
Index("ix_images_album_id_updated_at", Image.album_id, Image.updated_at, Image.status)
Index("ix_images_album_id_status", Image.album_id, Image.status)


class Detection(Base):
    __tablename__ = "detections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(128), index=True)
    score: Mapped[float] = mapped_column(Float)
    # "xmin" is a PostgreSQL system column, hence the prefix.
    box_ymin: Mapped[float] = mapped_column(Float)
    box_xmin: Mapped[float] = mapped_column(Float)
    box_ymax: Mapped[float] = mapped_column(Float)
    box_xmax: Mapped[float] = mapped_column(Float)

    @property
    def box(self) -> list[float]:
        """[ymin, xmin, ymax, xmax] in 0..1, the order TF Hub detectors use."""
        return [self.box_ymin, self.box_xmin, self.box_ymax, self.box_xmax]

    image: Mapped[Image] = relationship(back_populates="detections")
