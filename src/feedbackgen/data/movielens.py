"""MovieLens rating dumps (GroupLens), read into the canonical tables: `--format movielens`.

    load_movielens(paths, problems=..., chunk_rows=..., done=...) -> iterator of interaction chunks

The layouts, as each release's README describes them (files.grouplens.org/datasets/movielens/):

- ML-100K (ISO-8859-1): `u.data` user, item, rating, timestamp separated by tabs; `u.item`
  id|title|release date|video release date|IMDb URL|19 genre flags, the flags' names in `u.genre`
  (name|index); `u.user` id|age|gender|occupation|zip.
- ML-1M (ISO-8859-1): `ratings.dat` UserID::MovieID::Rating::Timestamp; `movies.dat`
  MovieID::Title::Genres (genres "A|B"); `users.dat` UserID::Gender::Age::Occupation::Zip-code
  (age and occupation as the README's codes).
- ML-10M (UTF-8): `ratings.dat` (half stars), `movies.dat`, `tags.dat`
  UserID::MovieID::Tag::Timestamp; no users.
- ML-20M, 25M, 32M, ml-latest(-small) (UTF-8): `ratings.csv` userId,movieId,rating,timestamp
  (with that header); `movies.csv` movieId,title,genres (RFC 4180 quoting: titles hold commas);
  optional `tags.csv` userId,movieId,tag,timestamp and `links.csv` movieId,imdbId,tmdbId; no users.

The layout is recognised by file name, in a folder (or its single sub-folder, as the zip files
unpack) or among the files given; files given directly are used as given, nothing is looked up
beside them. `.dat` and `u.*` lines are decoded as UTF-8 when they are valid UTF-8, else as
ISO-8859-1 (the older releases), and each file's entry in the manifest says which it met.

Tables:
- interactions: user_id, item_id (the MovieLens ids, as strings), rating (float, the release's own
  scale: 1–5 whole stars for ML-100K/1M, 0.5–5 half stars from ML-10M on; never rescaled; `.dat`
  files count as ML-1M when users.dat is among them, as ML-10M otherwise),
  timestamp (unix seconds), source_row (position among the rating lines, bad ones included).
  No text: MovieLens holds ratings only.
- items: item_id, title (as written, "Toy Story (1995)"), categories (the genres), year (Int64,
  from the title's "(1995)" suffix, else from the release date), and where present release_date
  (ISO), imdb_url, imdb_id, tmdb_id, tags (the 10 most used tags, from tags.csv/tags.dat).
- users (ML-100K, ML-1M): user_id, gender, occupation, zip_code, and age (ML-100K, years) or
  age_group (ML-1M, the README's bracket such as "25-34").

A bad line (wrong number of fields, an id that is not a number, a rating that is not a number or
off the release's scale, a timestamp that is not an integer) is reported with its file, line and
field and skipped (`Problems`); with `strict` the first one stops the run (`DataError`). A folder
with none of the rating files, or a header that is not MovieLens's, raises `DataError`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from feedbackgen.data.loaders import file_info
from feedbackgen.data.readers import csv_records, raw_lines
from feedbackgen.data.problems import Problems
from feedbackgen.errors import DataError

# Which file names make which layout; the first of each is the one holding the ratings.
LAYOUTS = {
    "ml-100k": ("u.data", "u.item", "u.user", "u.genre"),
    "ml-1m/10m": ("ratings.dat", "movies.dat", "users.dat", "tags.dat"),
    "ml-20m+": ("ratings.csv", "movies.csv", "tags.csv", "links.csv"),
}
CSV_RATINGS_HEADER = "userId,movieId,rating,timestamp"
BATCH_LINES = 200_000  # rating lines parsed at once when no chunk size is asked for
TOP_TAGS = 10

# ML-100K README: the 19 genre flags of u.item, in order (used when u.genre is absent).
GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
               "Thriller", "War", "Western")
# ML-1M README: users.dat codes.
AGE_GROUPS_1M = {"1": "Under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55",
                 "56": "56+"}
OCCUPATIONS_1M = ("other", "academic/educator", "artist", "clerical/admin", "college/grad student",
                  "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
                  "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
                  "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer")
_YEAR = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")


@dataclass
class Layout:
    """The files of one MovieLens release: `name` (a key of LAYOUTS) and file name -> path."""

    name: str
    files: dict[str, Path]
    notes: list[str] = field(default_factory=list)

    def get(self, name: str) -> Path | None:
        return self.files.get(name)


def _expected() -> str:
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in LAYOUTS.items())


def find_layout(paths: list[Path]) -> Layout:
    """The release and its files among `paths` (one folder, or files). Raises `DataError` when
    no rating file is found, when two releases are mixed, or when a file is not MovieLens's."""
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        candidates = sorted(p for p in folder.iterdir() if p.is_file())
        known = {n for names in LAYOUTS.values() for n in names}
        if not any(p.name in known for p in candidates):
            subs = [d for d in sorted(folder.iterdir()) if d.is_dir()
                    and any((d / names[0]).is_file() for names in LAYOUTS.values())]
            if len(subs) == 1:  # ml-1m.zip unpacks into ml-1m/
                candidates = sorted(p for p in subs[0].iterdir() if p.is_file())
        candidates = [p for p in candidates if p.name in known]
    else:
        if any(p.is_dir() for p in paths):
            raise DataError("give one MovieLens folder, or its files, not both")
        candidates = list(paths)
    found: dict[str, dict[str, Path]] = {}
    for path in candidates:
        layout = next((k for k, names in LAYOUTS.items() if path.name in names), None)
        if layout is None:
            raise DataError(f"not a MovieLens file name; expected {_expected()}", source=str(path))
        found.setdefault(layout, {})[path.name] = path
    with_ratings = [k for k, files in found.items() if LAYOUTS[k][0] in files]
    where = ", ".join(str(p) for p in paths)
    if not with_ratings:
        raise DataError(f"no MovieLens rating file in {where}; expected one of these layouts: {_expected()} "
                        "(the first file of each holds the ratings)")
    if len(found) > 1:
        raise DataError(f"{where} mixes MovieLens releases ({', '.join(sorted(found))}); give one release's files")
    return Layout(with_ratings[0], found[with_ratings[0]])


def _decode(raw: bytes, seen: Counter) -> str:
    """One line as text: UTF-8 when it is valid UTF-8, else ISO-8859-1 (which decodes any byte)."""
    try:
        text = raw.decode("utf-8")
        seen["UTF-8"] += 1
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
        seen["ISO-8859-1"] += 1
    return text.lstrip("\ufeff").rstrip("\r\n")


def _encoding(seen: Counter) -> str:
    return "ISO-8859-1" if seen["ISO-8859-1"] else "UTF-8"


def _text_lines(path: Path, problems: Problems, seen: Counter) -> Iterator[tuple[int, str]]:
    for line_no, raw in raw_lines(path, problems):
        yield line_no, _decode(raw, seen)


# -- ratings ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scale:
    """A release's star scale: lowest, highest, and the step between stars."""

    lo: float
    hi: float
    step: float

    def describe(self) -> str:
        kind = "half stars" if self.step == 0.5 else "whole stars"
        return f"{self.lo:g}-{self.hi:g} in {kind}"


WHOLE_STARS, HALF_STARS = Scale(1.0, 5.0, 1.0), Scale(0.5, 5.0, 0.5)


def _parse_ratings(lines: list[str], line_nos: list[int], sep: str, scale: Scale, source: str,
                   problems: Problems, first_row: int) -> pl.DataFrame:
    """user, item, rating, timestamp lines split and checked column-wise (polars); only the bad
    lines, usually none, are looked at one by one to report them."""
    get = pl.col("parts").list.get
    df = (pl.DataFrame({"line": pl.Series(line_nos, dtype=pl.Int64), "parts": pl.Series(lines, dtype=pl.Utf8)})
          .with_columns(pl.col("parts").str.split(sep))
          .with_columns(n=pl.col("parts").list.len(),
                        **{c: get(k, null_on_oob=True).str.strip_chars()
                           for k, c in enumerate(("user_id", "item_id", "rating_text", "time_text"))})
          .with_columns(rating=pl.col("rating_text").cast(pl.Float64, strict=False),
                        timestamp=pl.col("time_text").cast(pl.Int64, strict=False),
                        source_row=pl.int_range(pl.len(), dtype=pl.Int64) + first_row))
    rating = pl.col("rating")
    checks = {
        "fields": pl.col("n") == 4,
        "user_id": pl.col("user_id").str.contains(r"^[0-9]+$"),
        "item_id": pl.col("item_id").str.contains(r"^[0-9]+$"),
        "rating": rating.is_finite() & (rating >= scale.lo) & (rating <= scale.hi)
        & ((rating / scale.step).round() * scale.step == rating),
        "timestamp": pl.col("timestamp").is_not_null(),
    }
    df = df.with_columns(**{f"ok_{k}": v.fill_null(False) for k, v in checks.items()})
    good = pl.all_horizontal(*(pl.col(f"ok_{k}") for k in checks))
    for row in df.filter(~good).iter_rows(named=True):
        problems.report(source, row["line"], *_why(row, sep, scale))
    return df.filter(good).select("user_id", "item_id", "rating", "timestamp", "source_row")


def _why(row: dict[str, Any], sep: str, scale: Scale) -> tuple[str | None, str]:
    """(field, reason) for the first failed check of a rating line."""
    shown = {"\t": "tab", "::": "'::'", ",": "','"}[sep]
    if not row["ok_fields"]:
        return None, f"{row['n']} fields separated by {shown}, expected 4 (user, item, rating, timestamp)"
    for name in ("user_id", "item_id"):
        if not row[f"ok_{name}"]:
            return name, f"expected a numeric id, got {row[name]!r}"
    if not row["ok_rating"]:
        return "rating", f"expected a rating {scale.describe()}, got {row['rating_text']!r}"
    return "timestamp", f"expected unix seconds (an integer), got {row['time_text']!r}"


def _rating_chunks(path: Path, layout: str, scale: Scale, problems: Problems, batch: int,
                   first_row: int, counts: dict[str, int]) -> Iterator[pl.DataFrame]:
    sep = {"ml-100k": "\t", "ml-1m/10m": "::", "ml-20m+": ","}[layout]
    lines: list[str] = []
    line_nos: list[int] = []
    header = layout == "ml-20m+"
    for line_no, raw in raw_lines(path, problems):
        if header:
            found = raw.decode("utf-8", "replace").lstrip("\ufeff").strip()
            if found.replace(" ", "") != CSV_RATINGS_HEADER:
                raise DataError(f"expected the MovieLens header {CSV_RATINGS_HEADER!r}, found {found[:80]!r}; "
                                "for another CSV use --format csv (with --map)", source=str(path), line=line_no)
            header = False
            continue
        # rating lines are ASCII; a stray byte fails the checks below, at its line
        lines.append(raw.decode("latin-1").rstrip("\r\n"))
        line_nos.append(line_no)
        if len(lines) >= batch:
            yield _parse_ratings(lines, line_nos, sep, scale, str(path), problems, first_row + counts["records"])
            counts["records"] += len(lines)
            lines, line_nos = [], []
    if lines or not counts["records"]:
        yield _parse_ratings(lines, line_nos, sep, scale, str(path), problems, first_row + counts["records"])
        counts["records"] += len(lines)


# -- items and users -------------------------------------------------------------------------------

def _year(title: str | None, release_date: str | None = None) -> int | None:
    match = _YEAR.search(title or "")
    if match:
        return int(match.group(1))
    if release_date and release_date[:4].isdigit():
        return int(release_date[:4])
    return None


def _iso_date(text: str) -> str | None:
    """ML-100K writes release dates as 01-Jan-1995."""
    try:
        return datetime.strptime(text.strip(), "%d-%b-%Y").date().isoformat()
    except ValueError:
        return None


def _genres(text: str | None) -> list[str]:
    return [g for g in (text or "").split("|") if g and g != "(no genres listed)"]


def _split_fields(text: str, sep: str, n: int, source: str, line: int, problems: Problems,
                  what: str) -> list[str] | None:
    cells = text.split(sep)
    if len(cells) != n:
        problems.report(source, line, None, f"{len(cells)} fields separated by {sep!r}, expected {n} ({what})")
        return None
    if not cells[0].strip():
        problems.report(source, line, "item_id" if "title" in what else "user_id", "missing")
        return None
    return [c.strip() for c in cells]


def _genre_names(path: Path | None, problems: Problems, seen: Counter) -> list[str]:
    if path is None:
        return list(GENRES_100K)
    names: dict[int, str] = {}
    for line_no, text in _text_lines(path, problems, seen):
        name, _, index = text.partition("|")
        if not index.strip().isdigit():
            problems.report(str(path), line_no, "index", f"expected name|index, got {text[:60]!r}")
            continue
        names[int(index)] = name
    return [names[i] for i in sorted(names)]


def _items_100k(path: Path, genres: list[str], problems: Problems, seen: Counter) -> dict[str, dict]:
    items: dict[str, dict] = {}
    what = f"id|title|release date|video release date|IMDb URL|{len(genres)} genre flags"
    for line_no, text in _text_lines(path, problems, seen):
        cells = _split_fields(text, "|", 5 + len(genres), str(path), line_no, problems, what)
        if cells is None or cells[0] in items:
            continue
        date = _iso_date(cells[2])
        items[cells[0]] = {"item_id": cells[0], "title": cells[1] or None,
                           "categories": [g for g, flag in zip(genres, cells[5:]) if flag == "1"],
                           "year": _year(cells[1], date), "release_date": date, "imdb_url": cells[4] or None}
    return items


def _items_dat(path: Path, problems: Problems, seen: Counter) -> dict[str, dict]:
    items: dict[str, dict] = {}
    for line_no, text in _text_lines(path, problems, seen):
        # MovieID::Title::Genres; split from both ends so a title may hold any character
        item_id, _, rest = text.partition("::")
        title, sep, genres = rest.rpartition("::")
        if not sep or not item_id.strip():
            problems.report(str(path), line_no, None if sep else "genres",
                            "expected MovieID::Title::Genres" if sep else "missing (expected MovieID::Title::Genres)")
            continue
        if item_id.strip() not in items:
            items[item_id.strip()] = {"item_id": item_id.strip(), "title": title.strip() or None,
                                      "categories": _genres(genres.strip()), "year": _year(title)}
    return items


def _items_csv(path: Path, problems: Problems) -> dict[str, dict]:
    items: dict[str, dict] = {}
    for line_no, record in csv_records(path, problems):
        item_id = (record.get("movieId") or "").strip()
        if not item_id:
            problems.report(str(path), line_no, "movieId", "missing (expected movieId,title,genres)")
            continue
        if item_id not in items:
            title = record.get("title") or None
            items[item_id] = {"item_id": item_id, "title": title, "categories": _genres(record.get("genres")),
                              "year": _year(title)}
    return items


def _add_links(items: dict[str, dict], path: Path, problems: Problems) -> None:
    for _, record in csv_records(path, problems):
        item = items.get((record.get("movieId") or "").strip())
        if item is not None:
            item["imdb_id"] = record.get("imdbId") or None
            item["tmdb_id"] = record.get("tmdbId") or None


def _add_tags(items: dict[str, dict], path: Path, problems: Problems, seen: Counter) -> int:
    """Each item's most used tags (ties alphabetical). Returns the number of tag lines read."""
    counts: dict[str, Counter] = {}
    read = 0
    if path.suffix == ".csv":
        records = ((r.get("movieId"), r.get("tag")) for _, r in csv_records(path, problems))
    else:
        records = ((t.split("::")[1:3] + [None])[:2] for _, t in _text_lines(path, problems, seen))
    for item_id, tag in records:
        read += 1
        if item_id and tag and tag.strip():
            counts.setdefault(item_id.strip(), Counter())[tag.strip()] += 1
    for item_id, tags in counts.items():
        if item_id in items:
            items[item_id]["tags"] = [t for t, _ in sorted(tags.items(), key=lambda x: (-x[1], x[0]))[:TOP_TAGS]]
    return read


def _users(layout: Layout, problems: Problems, seen: Counter) -> list[dict] | None:
    path = layout.get("u.user") or layout.get("users.dat")
    if path is None:
        return None
    users, ids = [], set()
    old = path.name == "u.user"
    what = "id|age|gender|occupation|zip" if old else "UserID::Gender::Age::Occupation::Zip-code"
    for line_no, text in _text_lines(path, problems, seen):
        cells = _split_fields(text, "|" if old else "::", 5, str(path), line_no, problems, what)
        if cells is None or cells[0] in ids:
            continue
        ids.add(cells[0])
        if old:
            user_id, age, gender, occupation, zip_code = cells
            users.append({"user_id": user_id, "age": int(age) if age.isdigit() else None, "gender": gender or None,
                          "occupation": occupation or None, "zip_code": zip_code or None})
        else:
            user_id, gender, age, occupation, zip_code = cells
            job = OCCUPATIONS_1M[int(occupation)] if occupation.isdigit() and int(occupation) < 21 else occupation
            users.append({"user_id": user_id, "gender": gender or None,
                          "age_group": AGE_GROUPS_1M.get(age, age or None), "occupation": job or None,
                          "zip_code": zip_code or None})
    return users


def _frame(rows: list[dict], schema: dict[str, Any]) -> pl.DataFrame:
    names = [n for n in schema if n in ("item_id", "user_id") or any(n in r for r in rows)]
    return pl.DataFrame({n: pl.Series(n, [r.get(n) for r in rows], dtype=schema[n]) for n in names})


ITEM_COLUMNS = {"item_id": pl.Utf8, "title": pl.Utf8, "categories": pl.List(pl.Utf8), "year": pl.Int64,
                "release_date": pl.Utf8, "imdb_url": pl.Utf8, "imdb_id": pl.Utf8, "tmdb_id": pl.Utf8,
                "tags": pl.List(pl.Utf8)}
USER_COLUMNS = {"user_id": pl.Utf8, "gender": pl.Utf8, "age": pl.Int64, "age_group": pl.Utf8,
                "occupation": pl.Utf8, "zip_code": pl.Utf8}


# -- the format ------------------------------------------------------------------------------------

def load_movielens(paths: list[Path], problems: Problems, chunk_rows: int | None,
                   done: dict[str, Any]) -> Iterator[pl.DataFrame]:
    """Interaction chunks (at most `chunk_rows` rows each) of the release found in `paths`; then
    `done` gets items, users and info (files with sizes, hashes and decodings; the layout; the
    rating scale, which `prepare` keeps rather than rescaling)."""
    layout = find_layout(paths)
    ratings = layout.files[LAYOUTS[layout.name][0]]
    if layout.name == "ml-100k" or "users.dat" in layout.files:
        scale = WHOLE_STARS  # ML-100K and ML-1M: whole stars (their READMEs)
    else:
        scale = HALF_STARS  # ML-10M and later: half stars from 0.5
    counts = {"records": 0}
    rows = 0
    for chunk in _rating_chunks(ratings, layout.name, scale, problems, chunk_rows or BATCH_LINES, 0, counts):
        rows += chunk.height
        yield chunk
    files = [{**file_info(ratings, "interactions"), "records": counts["records"], "rows": rows}]

    items: dict[str, dict] = {}
    movies = layout.get("u.item") or layout.get("movies.dat") or layout.get("movies.csv")
    if movies is not None:
        seen: Counter = Counter()
        if movies.name == "u.item":
            genre_seen: Counter = Counter()
            items = _items_100k(movies, _genre_names(layout.get("u.genre"), problems, genre_seen), problems, seen)
            if layout.get("u.genre"):
                files.append({**file_info(layout.files["u.genre"], "genres"), "encoding": _encoding(genre_seen)})
        elif movies.suffix == ".dat":
            items = _items_dat(movies, problems, seen)
        else:
            items = _items_csv(movies, problems)
        entry = {**file_info(movies, "items"), "rows": len(items)}
        files.append({**entry, "encoding": _encoding(seen)} if seen else entry)
    if layout.get("links.csv") is not None:
        _add_links(items, layout.files["links.csv"], problems)
        files.append(file_info(layout.files["links.csv"], "items"))
    tags = layout.get("tags.csv") or layout.get("tags.dat")
    if tags is not None:
        seen = Counter()
        entry = {**file_info(tags, "item_tags"), "records": _add_tags(items, tags, problems, seen)}
        files.append({**entry, "encoding": _encoding(seen)} if seen else entry)
    seen = Counter()
    users = _users(layout, problems, seen)
    if users is not None:
        path = layout.get("u.user") or layout.files["users.dat"]
        files.append({**file_info(path, "users"), "rows": len(users), "encoding": _encoding(seen)})
    done.update(items=_frame(list(items.values()), ITEM_COLUMNS) if items else None,
                users=_frame(users, USER_COLUMNS) if users else None,
                info={"files": files, "layout": layout.name, "rating_scale": [scale.lo, scale.hi],
                      "rating_step": scale.step, "has_text": False})
