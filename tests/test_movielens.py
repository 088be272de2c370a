"""Ratings-only and interactions-only data: `--format movielens`, `--format lightgcn`, and a
dataset without text through `prepare`, `train` and the text generators' refusal.

Small files are written here in each MovieLens release's own layout (GroupLens READMEs) and
encoding; the real Agent4Rec split (SOURCE.md in its folder) is prepared through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest
from typer.testing import CliRunner

from feedbackgen.cli import app
from feedbackgen.data.dataset import Dataset
from feedbackgen.data.loaders import load_tables
from feedbackgen.data.prepare import prepare
from feedbackgen.data.problems import Problems
from feedbackgen.errors import ConfigError, DataError
from feedbackgen.models import create


def write(path, lines, encoding="utf-8"):
    path.write_bytes("".join(line + "\n" for line in lines).encode(encoding))
    return path


def load(paths, fmt, **kw):
    problems = kw.pop("problems", Problems())
    loaded = load_tables(paths if isinstance(paths, list) else [paths], fmt, problems=problems, **kw)
    return loaded, problems


def ml100k(folder):
    """An ML-100K folder: 12 ratings by 4 users of 4 movies, one bad line (line 5: rating 'five')."""
    folder.mkdir(parents=True, exist_ok=True)
    ratings = [(1, 1, 5), (1, 2, 3), (1, 3, 4), (2, 1, 4), None, (2, 2, 2), (2, 4, 5), (3, 1, 1), (3, 3, 2),
               (3, 4, 4), (4, 2, 5), (4, 3, 3), (4, 4, 1)]
    write(folder / "u.data", ["3\t2\tfive\t881250949" if r is None else f"{r[0]}\t{r[1]}\t{r[2]}\t88125{i:04d}"
                              for i, r in enumerate(ratings)])
    flags = lambda *on: "|".join("1" if i in on else "0" for i in range(19))  # noqa: E731
    write(folder / "u.item", [f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy|{flags(3, 4, 5)}",
                              f"2|Café au lait (1994)|01-Jan-1994||http://x|{flags(5)}",
                              f"3|Misérables, Les (1995)|01-Jan-1995||http://y|{flags(8, 16)}",
                              f"4|unknown|||http://z|{flags(0)}"], encoding="iso-8859-1")
    write(folder / "u.genre", ["unknown|0", "Action|1", "Adventure|2", "Animation|3", "Children's|4", "Comedy|5",
                               "Crime|6", "Documentary|7", "Drama|8", "Fantasy|9", "Film-Noir|10", "Horror|11",
                               "Musical|12", "Mystery|13", "Romance|14", "Sci-Fi|15", "Thriller|16", "War|17",
                               "Western|18", ""])
    write(folder / "u.user", ["1|24|M|technician|85711", "2|53|F|other|94043", "3|23|M|writer|32067",
                              "4|24|M|technician|43537"])
    return folder


# -- MovieLens --------------------------------------------------------------------------------------

def test_ml100k_folder_latin1_pipes_and_a_bad_line_reported_at_its_line(tmp_path):
    (loaded, problems) = load(ml100k(tmp_path / "ml-100k"), "movielens")
    df = loaded.interactions
    assert df.height == 12 and df["text"].null_count() == 12
    assert df.filter(pl.col("user_id") == "1").sort("item_id")["rating"].to_list() == [5.0, 3.0, 4.0]
    assert df["timestamp"][0] == 881250000 and df["source_row"].to_list() == [0, 1, 2, 3, *range(5, 13)]
    assert problems.count == 1
    (bad,) = problems.examples
    assert bad["line"] == 5 and bad["field"] == "rating" and "1-5 in whole stars" in bad["reason"]
    assert "'five'" in bad["reason"] and bad["source"].endswith("u.data")
    items = {r["item_id"]: r for r in loaded.items.iter_rows(named=True)}
    assert items["2"]["title"] == "Café au lait (1994)" and items["3"]["title"] == "Misérables, Les (1995)"
    assert items["1"]["categories"] == ["Animation", "Children's", "Comedy"]
    assert items["3"]["categories"] == ["Drama", "Thriller"]
    assert (items["1"]["year"], items["4"]["year"]) == (1995, None)
    assert items["1"]["release_date"] == "1995-01-01" and items["4"]["title"] == "unknown"
    users = {r["user_id"]: r for r in loaded.users.iter_rows(named=True)}
    assert users["2"] == {"user_id": "2", "gender": "F", "age": 53, "occupation": "other", "zip_code": "94043"}
    files = {f["name"]: f for f in loaded.info["files"]}
    assert files["u.item"]["encoding"] == "ISO-8859-1" and files["u.user"]["encoding"] == "UTF-8"
    assert files["u.data"]["records"] == 13 and files["u.data"]["rows"] == 12
    assert loaded.info["layout"] == "ml-100k" and loaded.info["rating_scale"] == [1.0, 5.0]


def test_ml1m_dat_files_given_directly_with_coded_users(tmp_path):
    ratings = write(tmp_path / "ratings.dat", ["1::1193::5::978300760", "1::661::3::978302109",
                                               "2::1193::4::978298413", "2::661::2::978299000",
                                               "2::3408|4|978299001", "1::3408::4::978300000"])
    movies = write(tmp_path / "movies.dat", ["1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
                                             "661::James and the Giant Peach (1996)::Animation|Children's|Musical",
                                             "3408::Être et avoir (2002)::Documentary"], encoding="iso-8859-1")
    users = write(tmp_path / "users.dat", ["1::F::1::10::48067", "2::M::56::16::70072"])
    write(tmp_path / "tags.dat", ["1::1193::classic::978300760"])  # not given: files given are used as given
    loaded, problems = load([ratings, movies, users], "movielens")
    assert loaded.interactions.height == 5 and loaded.info["layout"] == "ml-1m/10m"
    (bad,) = problems.examples
    assert bad["line"] == 5 and bad["field"] is None and "2 fields separated by '::', expected 4" in bad["reason"]
    items = loaded.items.sort("item_id")
    assert items["title"].to_list() == ["One Flew Over the Cuckoo's Nest (1975)", "Être et avoir (2002)",
                                         "James and the Giant Peach (1996)"]
    assert items["categories"][2].to_list() == ["Animation", "Children's", "Musical"]
    assert items["year"].to_list() == [1975, 2002, 1996] and "tags" not in items.columns
    assert loaded.users.sort("user_id").select("age_group", "occupation").rows() == [
        ("Under 18", "K-12 student"), ("56+", "self-employed")]


def test_ml10m_half_stars_tags_and_off_scale_ratings(tmp_path):
    write(tmp_path / "ratings.dat", ["1::122::0.5::838985046", "1::185::3.5::838983525", "2::122::5::838983392",
                                     "2::185::6::838983421", "2::292::3.25::838983421", "x::292::3::838983421",
                                     "3::292::4::8389.5", "4::292::2::838983999"])
    write(tmp_path / "movies.dat", ["122::Boomerang (1992)::Comedy|Romance", "185::Net, The (1995)::Action|Crime",
                                    "292::Outbreak (1995)::(no genres listed)"])
    write(tmp_path / "tags.dat", ["15::122::dark::1215184630", "20::122::funny::1188263880",
                                  "21::122::funny::1188263880"])
    loaded, problems = load(tmp_path, "movielens")
    assert loaded.interactions["rating"].to_list() == [0.5, 3.5, 5.0, 2.0]
    assert loaded.info["rating_scale"] == [0.5, 5.0] and loaded.users is None
    reasons = {(e["line"], e["field"]): e["reason"] for e in problems.examples}
    assert set(reasons) == {(4, "rating"), (5, "rating"), (6, "user_id"), (7, "timestamp")}
    assert "0.5-5 in half stars, got '3.25'" in reasons[(5, "rating")]
    assert "expected a numeric id, got 'x'" in reasons[(6, "user_id")]
    items = {r["item_id"]: r for r in loaded.items.iter_rows(named=True)}
    assert items["122"]["tags"] == ["funny", "dark"] and items["292"]["categories"] == []


def test_ml_latest_csv_with_quoted_commas_links_and_a_wrong_header(tmp_path):
    write(tmp_path / "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4.0,964982703", "1,11,2.5,964981247",
                                     "2,11,5.0,1445714835"])
    write(tmp_path / "movies.csv", ["movieId,title,genres", "1,Toy Story (1995),Adventure|Animation",
                                    '11,"American President, The (1995)",Comedy|Drama|Romance',
                                    '12,"Dracula: Dead and Loving It (1995)",Comedy|Horror'])
    write(tmp_path / "links.csv", ["movieId,imdbId,tmdbId", "1,0114709,862", "11,0112346,9087"])
    write(tmp_path / "tags.csv", ["userId,movieId,tag,timestamp", '2,11,"politics, romance",1445714996'])
    loaded, problems = load([tmp_path], "movielens")
    assert problems.count == 0 and loaded.interactions["rating"].to_list() == [4.0, 2.5, 5.0]
    items = {r["item_id"]: r for r in loaded.items.iter_rows(named=True)}
    assert items["11"]["title"] == "American President, The (1995)" and items["11"]["year"] == 1995
    assert items["11"]["categories"] == ["Comedy", "Drama", "Romance"] and items["11"]["tags"] == ["politics, romance"]
    assert (items["1"]["imdb_id"], items["1"]["tmdb_id"]) == ("0114709", "862")
    assert "12" not in items  # never rated: only rated items are kept
    write(tmp_path / "ratings.csv", ["user_id,item_id,rating,timestamp", "1,1,4,964982703"])
    with pytest.raises(DataError, match="line 1: expected the MovieLens header 'userId,movieId,rating,timestamp'"):
        load([tmp_path], "movielens")


def test_movielens_layout_errors_name_what_was_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no MovieLens rating file .*ml-100k: u\.data.*ratings\.dat.*ratings\.csv"):
        load(tmp_path / "empty", "movielens")
    with pytest.raises(DataError, match="not a MovieLens file name"):
        load(write(tmp_path / "scores.txt", ["1\t2\t3\t4"]), "movielens")
    with pytest.raises(DataError, match="takes no --meta"):
        load(ml100k(tmp_path / "a"), "movielens", meta=tmp_path / "scores.txt")
    nested = tmp_path / "unzipped"
    ml100k(nested / "ml-100k")  # as ml-100k.zip unpacks: the files one folder down
    assert load(nested, "movielens")[0].interactions.height == 12


# -- lightgcn -------------------------------------------------------------------------------------

def test_lightgcn_adjacency_lists_empty_lines_and_bad_ids(tmp_path):
    write(tmp_path / "train.txt", ["0 10 11 12", "1 10 13", "2,10,11", "3 11 1x 12"])
    write(tmp_path / "valid.txt", ["0 13", "1 11"])
    write(tmp_path / "test.txt", ["0 14", "1", "3 10"])  # user 1: an empty test line
    meta = write(tmp_path / "meta.csv", ["movie_id,title,genres,rating,summary",
                                         '10,"Heat (1995)",Action|Crime,3.9,A heist.', "11,Up (2009),Animation,4.1,",
                                         "12,Ran (1985),Drama|War,4.3,A king divides his realm."])
    loaded, problems = load(tmp_path, "lightgcn", meta=meta, mapping={"item_id": "movie_id"})
    df = loaded.interactions
    assert df.group_by("split").len().sort("split").rows() == [("test", 2), ("train", 7), ("valid", 2)]
    assert df.filter(pl.col("user_id") == "1")["split"].to_list() == ["train", "train", "valid"]
    assert df["rating"].null_count() == df["timestamp"].null_count() == df["text"].null_count() == df.height
    reasons = {(e["line"], e["field"]): e["reason"] for e in problems.examples}
    assert set(reasons) == {(3, "user_id"), (4, "item_id")}
    assert "got '2,10,11'" in reasons[(3, "user_id")] and "token 3" in reasons[(4, "item_id")]
    assert df.filter(pl.col("user_id") == "3")["item_id"].to_list() == ["11", "12", "10"]
    items = {r["item_id"]: r for r in loaded.items.iter_rows(named=True)}
    assert items["10"]["title"] == "Heat (1995)" and items["10"]["categories"] == ["Action", "Crime"]
    assert items["12"]["description"] == "A king divides his realm." and items["11"]["description"] is None
    assert loaded.items.schema["rating"] == pl.Float64 and loaded.info["feedback"] == "implicit"
    with pytest.raises(DataError, match="--map item_id=id: column 'id' is not in the header of .*meta.csv "
                                        r"\(columns: movie_id, title, genres, rating, summary\)$"):
        load(tmp_path, "lightgcn", meta=meta, mapping={"item_id": "id"})
    with pytest.raises(DataError, match="--map item=movie_id: unknown field 'item'; known: item_id, title, "
                                        ".*did you mean 'item_id'"):
        load(tmp_path, "lightgcn", meta=meta, mapping={"item": "movie_id"})
    with pytest.raises(DataError, match="no item_id column .*--map item_id=COLUMN"):
        load(tmp_path, "lightgcn", meta=meta)
    with pytest.raises(ConfigError, match="takes its split from train.txt/valid.txt/test.txt"):
        prepare([tmp_path], "lightgcn", split="random", progress=False)
    with pytest.raises(DataError, match="no train.txt"):
        load(tmp_path / "test.txt", "lightgcn")


def test_agent4rec_split_through_the_cli(a4r_prepared):
    out, said = a4r_prepared  # `feedbackgen prepare` on the split, once for every test that needs it
    assert "no review text and no ratings" in said
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["splits"] == {"train": 74_271, "valid": 55_486, "test": 55_492}
    assert (manifest["summary"]["users"], manifest["summary"]["items"]) == (1_000, 3_292)
    assert manifest["split"] == "files" and manifest["feedback"] == "implicit"
    assert manifest["has_text"] is False and manifest["has_ratings"] is False
    skipped = {s["step"] for s in manifest["steps"] if "skipped_because" in s}
    assert skipped == {"clean_text", "drop_empty", "copies", "scrub_pii", "normalize_ratings", "explanations"}
    ds = Dataset.load(out)
    assert ds.items.height == 3_292 and ds.items["title"].null_count() == 0
    toy = ds.items.filter(pl.col("item_id") == "0").row(0, named=True)
    assert toy["title"] == "Toy Story (1995)" and toy["categories"] == ["Animation", "Children's", "Comedy"]
    assert toy["description"].startswith("A group of toys")
    with pytest.raises(DataError, match="mf needs ratings; .*a4r has none"):
        create("mf").fit(ds)


# -- a dataset without text -------------------------------------------------------------------------

def test_ratings_only_prepares_trains_mf_and_text_generators_refuse(tmp_path):
    src = ml100k(tmp_path / "ml-100k")
    out = tmp_path / "ml100k"
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", str(src), "--format", "movielens", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "no review text: skipped clean_text, drop_empty, copies, scrub_pii, explanations" in \
        " ".join(result.output.split())
    ds = Dataset.load(out)
    assert ds.interactions.height == 12 and not ds.has_text and ds.has_ratings
    assert ds.manifest["problems"]["skipped"] == 1 and not ds.has_explanations
    assert ds.users.height == 4 and ds.items.filter(pl.col("item_id") == "2")["title"][0] == "Café au lait (1994)"
    result = runner.invoke(app, ["train", str(out), "--model", "mf", "--out", str(tmp_path / "mf")])
    assert result.exit_code == 0, result.output
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "feedbackgen.cli", "train", str(out), "--model", "retrieval",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, env={**env, "COLUMNS": "300"})
    assert done.returncode == 1 and not (tmp_path / "r").exists()
    assert done.stderr.strip() == (f"error: retrieval needs review text; {out} has none (ratings-only: try a "
                                   "choice model such as `--model ease`, or `--model mf`)")
    for name in ("peter", "popular"):
        with pytest.raises(DataError, match=f"{name} needs review text"):
            create(name).fit(ds)


def test_half_stars_keep_their_scale_and_preparing_is_deterministic(tmp_path):
    write(tmp_path / "ratings.csv", ["userId,movieId,rating,timestamp",
                                     *(f"{u},{i},{(u * i) % 10 / 2 + 0.5},{1000 + u * 10 + i}"
                                       for u in range(1, 7) for i in range(1, 6))])
    a = prepare([tmp_path], "movielens", split="temporal", progress=False)
    assert sorted(a.interactions["rating"].unique()) == sorted({(u * i) % 10 / 2 + 0.5 for u in range(1, 7)
                                                                for i in range(1, 6)})
    step = next(s for s in a.manifest["steps"] if s["step"] == "normalize_ratings")
    assert step["touched"] == 0 and "kept, not rescaled" in step["note"]
    a.save(tmp_path / "a")
    prepare([tmp_path], "movielens", split="temporal", progress=False).save(tmp_path / "b")
    for name in ("interactions.parquet", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_ratings_only_csv_field_case_prepares(tmp_path):
    from feedbackgen.data.paths import data_dir

    source = data_dir().parent / "field-cases" / "11-encodings-ratings-only" / "ratings.csv"
    if not source.exists():
        pytest.fail(f"field case missing: {source}")
    ds = prepare([source], "csv", progress=False)
    assert ds.interactions.height == sum(1 for _ in source.open()) - 1 and not ds.has_text
    assert ds.manifest["has_text"] is False and ds.manifest["feedback"] == "explicit"
    copies = next(s for s in ds.manifest["steps"] if s["step"] == "copies")
    assert copies["skipped_because"] == "no review text in this source" and copies["rows_in"] == copies["rows_out"]
    assert create("mf").fit(ds).is_fitted


def test_chunk_size_changes_nothing(tmp_path):
    from polars.testing import assert_frame_equal

    ml = ml100k(tmp_path / "ml-100k")
    lg = tmp_path / "lg"
    lg.mkdir()
    write(lg / "train.txt", [f"{u} " + " ".join(str((u * 7 + k) % 13) for k in range(5)) for u in range(9)])
    write(lg / "test.txt", [f"{u} {(u * 7 + 5) % 13}" for u in range(9)])
    for source, fmt in ((ml, "movielens"), (lg, "lightgcn")):
        whole = prepare([source], fmt, progress=False, chunk_rows=10**9)
        chunked = prepare([source], fmt, progress=False, chunk_rows=2)
        assert_frame_equal(whole.interactions, chunked.interactions)
        assert whole.manifest == chunked.manifest and whole.interactions.height > 10
