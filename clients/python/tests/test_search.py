"""Search over values (SPEC section 11): ``Client.search`` and
``Client.similar`` against a 3-node cluster of its own started with
``kvd --search``, checked against a brute-force model of the whole store
(read back with ``range``): every query word contained, case folded, BM25 as
kv-search documents it. And the session's cluster, started without
``--search``, says so."""

from __future__ import annotations

import math
import random
import re
import unicodedata
from typing import Optional

import pytest

import flashkv
from cluster import Cluster, wait_until

NOT_ENABLED = "search is not enabled on this node (kvd --search)"

# kv-search's BM25 parameters (crates/kv-search/src/index.rs).
K1, B = 1.2, 0.75

VOCABULARY = (
    "quick brown fox jumps over lazy dog river stone garden apple orange "
    "winter summer night morning silver golden castle forest ocean mountain "
    "little bright quiet storm bread"
).split()

#: A text of letters, single spaces, and ",", ".", "!" after a word: its
#: UAX #29 words are exactly its runs of letters.
SIMPLE = re.compile(r"[^\W\d_]+[,.!]?( [^\W\d_]+[,.!]?)*")


def texts(n: int = 40, seed: int = 20240611) -> dict[str, str]:
    """``n`` deterministic texts under ``doc/NN``: 3 to 12 words of a small
    vocabulary (so that words repeat, within a text and across texts), in
    mixed case, some with punctuation."""
    rnd = random.Random(seed)
    out = {}
    for i in range(n):
        words = [rnd.choice(VOCABULARY) for _ in range(rnd.randint(3, 12))]
        for j, w in enumerate(words):
            r = rnd.random()
            if r < 0.15:
                words[j] = w.upper()
            elif r < 0.35:
                words[j] = w.capitalize()
            if rnd.random() < 0.1:
                words[j] += rnd.choice(",.!")
        out[f"doc/{i:02d}"] = " ".join(words)
    return out


DOCS = texts()
# Not in DOCS' vocabulary, and case folding beyond ASCII: NFKC, lowercase,
# "ß" as "ss".
UNICODE_DOCS = {
    "doc/u1": "Die Straße am FLUSS",
    "doc/u2": "STRASSE und Ärger",
    "doc/u3": "ärger im Fluß",
}
# Values that are not documents: not UTF-8, and UTF-8 without a word.
NOT_DOCUMENTS = {"doc/binary": b"\xff\xfe fox \x80", "doc/noword": b"!!! ... ?"}
# For similar: a sentence, a near-duplicate of it (one word changed), and an
# unrelated one, in words of their own.
SIM = {
    "sim/a": "the violinist practised a difficult sonata every evening",
    "sim/b": "the violinist practised a difficult concerto every evening",
    "sim/c": "accountants reconcile quarterly ledgers before auditors arrive",
}


def fold(word: str) -> str:
    if word.isascii():
        return word.lower()
    return unicodedata.normalize("NFKC", word).lower().replace("ß", "ss")


def words(text: str) -> list[str]:
    return [fold(w) for w in re.findall(r"[^\W\d_]+", text)]


class Model:
    """The documents of the whole store, and the answer kv-search must give."""

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self.docs: dict[bytes, list[str]] = {}
        for k, v in pairs:
            try:
                text = v.decode("utf-8")
            except UnicodeDecodeError:
                continue  # not UTF-8: not a document
            assert not text or SIMPLE.fullmatch(text) or not words(text), (k, text)
            ws = words(text)
            if ws:
                self.docs[k] = ws

    def search(self, query: str, prefix: bytes = b"") -> dict[bytes, float]:
        """Every document under ``prefix`` holding every word of ``query``,
        with its BM25 score (over all documents, as the index keeps them)."""
        terms = sorted(set(words(query)))
        assert terms, query
        n = len(self.docs)
        avgdl = sum(len(ws) for ws in self.docs.values()) / n
        df = {t: sum(1 for ws in self.docs.values() if t in ws) for t in terms}
        out = {}
        for k, ws in self.docs.items():
            if not k.startswith(prefix) or not all(t in ws for t in terms):
                continue
            score = 0.0
            for t in sorted(terms, key=lambda t: (df[t], t)):
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                tf = ws.count(t)
                score += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * len(ws) / avgdl))
            out[k] = score
        return out


def check_search(c: flashkv.Client, model: Model, query: str, prefix: bytes = b"",
                 serializable: Optional[bool] = None) -> list[tuple[bytes, float]]:
    """``c.search(query, prefix)`` is the model's answer: the same keys, the
    same scores, best first and ties by key; and every ``limit`` gives the
    head of it."""
    got = c.search(query, prefix=prefix, serializable=serializable)
    want = model.search(query, prefix)
    assert {k for k, _ in got} == set(want), (query, prefix, got, want)
    assert len(got) == len(want), (query, got)  # no key twice
    for k, score in got:
        assert math.isclose(score, want[k], rel_tol=1e-9, abs_tol=1e-12), (
            query, k, score, want[k])
    assert got == sorted(got, key=lambda h: (-h[1], h[0])), (query, got)
    for limit in (1, 2, 5):
        assert c.search(query, prefix=prefix, limit=limit) == got[:limit], (query, limit)
    return got


@pytest.fixture(scope="module")
def search_cluster(kvd, tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("search"), 3, extra=["--search"])
    try:
        c.start()
        c.wait_leader()
        with c.client(timeout=10) as k:
            for key, text in {**DOCS, **UNICODE_DOCS, **NOT_DOCUMENTS, **SIM}.items():
                k.put(key, text)
        yield c
    finally:
        c.stop()


@pytest.fixture
def sc(search_cluster):
    with search_cluster.client(timeout=10) as c:
        yield c


@pytest.fixture
def follower_client(search_cluster):
    """A client that knows one follower only: its linearizable searches go
    through that node."""
    li = search_cluster.wait_leader()
    f = (li + 1) % len(search_cluster.nodes)
    with flashkv.Client([search_cluster.nodes[f].listen], timeout=10) as c:
        yield c


def model_of(c: flashkv.Client) -> Model:
    return Model(c.range())


def test_search_matches_a_brute_force_model(sc):
    m = model_of(sc)
    assert len(m.docs) >= 40 + len(UNICODE_DOCS)
    queries = list(VOCABULARY)
    rnd = random.Random(7)
    for _ in range(25):
        queries.append(" ".join(rnd.sample(VOCABULARY, rnd.randint(2, 3))))
    queries += [
        "FOX", "Quick Brown", "fox, fox! FOX.", "  lazy\tdog\n",  # case, punctuation, repeats
        "strasse", "STRAßE", "ärger", "ÄRGER fluss", "fluss straße",  # folding beyond ASCII
        "xylophone", "fox xylophone",  # a word in no document
    ]
    nonempty = 0
    for q in queries:
        nonempty += bool(check_search(sc, m, q))
    assert nonempty > len(queries) // 2  # the model is not vacuous
    assert {k for k, _ in sc.search("strasse")} == {b"doc/u1", b"doc/u2"}
    assert {k for k, _ in sc.search("ärger fluss")} == {b"doc/u3"}
    assert sc.search("xylophone") == []


def test_values_that_are_not_documents_are_never_found(sc):
    # doc/binary holds "fox" among bytes that are not UTF-8.
    keys = {k for k, _ in sc.search("fox", limit=1000)}
    assert keys and b"doc/binary" not in keys and b"doc/noword" not in keys


def test_prefix_and_limit(sc):
    m = model_of(sc)
    for q in ("fox", "the", "river stone", "garden"):
        for prefix in (b"doc/", b"doc/1", "doc/2", b"doc/0", b"sim/", b"nothing/"):
            p = prefix.encode() if isinstance(prefix, str) else prefix
            got = check_search(sc, m, q, p)
            assert all(k.startswith(p) for k, _ in got)
    everything = sc.search("fox")
    assert everything and len(everything) <= 100
    assert sc.search("fox", limit=0) == everything  # 0: the server's default
    assert sc.search("fox", limit=10**12) == everything  # capped, not an error
    with pytest.raises(flashkv.InvalidArgument):
        sc.search("fox", limit=-1)


def test_writes_are_reflected_at_once(sc, follower_client):
    m0 = model_of(sc)
    key = "live/1"
    for c in (sc, follower_client):
        sc.put(key, "A zeppelin drifted over the harbour")
        assert [k for k, _ in c.search("zeppelin")] == [key.encode()]
        assert [k for k, _ in c.search("ZEPPELIN harbour", prefix="live/")] == [key.encode()]
        sc.put(key, "a submarine dived under the harbour")  # overwrite
        assert c.search("zeppelin") == []
        assert [k for k, _ in c.search("submarine")] == [key.encode()]
        check_search(c, model_of(sc), "harbour")
        sc.delete(key)
        assert c.search("submarine") == []
        assert c.search("harbour") == []
        sc.put(key, b"\xff not text zeppelin")  # an overwrite with a non-document
        assert c.search("zeppelin") == []
        sc.delete(key)
    # Back where it started: the same answers as before.
    for q in ("fox", "garden river"):
        check_search(sc, m0, q)


def test_a_batch_is_searched_as_one(sc, follower_client):
    sc.put("bat/old", "an obsolete typewriter")
    sc.batch([
        flashkv.Put("bat/1", "typewriter ribbon"),
        flashkv.Put("bat/2", "typewriter ribbon ribbon"),
        ("put", "bat/3", "ribbon only"),
        flashkv.Delete("bat/old"),
    ])
    for c in (sc, follower_client):
        got = check_search(c, model_of(sc), "typewriter ribbon")
        # Same words, one more "ribbon" in a text of about the same length:
        # bat/2 scores higher.
        assert [k for k, _ in got] == [b"bat/2", b"bat/1"]
        assert [k for k, _ in c.search("obsolete")] == []
        assert {k for k, _ in c.search("ribbon", prefix="bat/")} == {b"bat/1", b"bat/2", b"bat/3"}
    sc.batch([flashkv.Delete(f"bat/{i}") for i in (1, 2, 3)])
    assert sc.search("ribbon") == []


def test_serializable_search_catches_up(sc):
    sc.put("ser/1", "a lighthouse keeper")
    want = [k for k, _ in sc.search("lighthouse", serializable=False)]
    assert want == [b"ser/1"]
    # Possibly stale, from any node's own index: there within a bound.
    wait_until("serializable search",
               lambda: [k for k, _ in sc.search("lighthouse", serializable=True)] == want, 10)
    for ep in sc.endpoints:
        with flashkv.Client([ep], timeout=10) as c:
            wait_until(f"serializable search on {ep}",
                       lambda: [k for k, _ in c.search("lighthouse", serializable=True)] == want,
                       10)
    sc.delete("ser/1")


@pytest.mark.parametrize("query", ["", "   ", "!!! ... ?", "\t\n"])
def test_a_query_without_words_is_an_invalid_argument(sc, query):
    for call in (lambda: sc.search(query), lambda: sc.similar(query)):
        with pytest.raises(flashkv.InvalidArgument) as e:
            call()
        assert e.value.definite and isinstance(e.value, ValueError)
        assert "no words" in str(e.value), str(e.value)


def test_queries_are_text(sc):
    with pytest.raises(TypeError):
        sc.search(b"fox")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sc.similar(b"fox")  # type: ignore[arg-type]
    with pytest.raises(flashkv.InvalidArgument):
        sc.similar("fox", top_k=-1)


def check_similar(got: list[tuple[bytes, float]]) -> None:
    assert all(-1.0 <= s <= 1.0 for _, s in got), got
    assert all(isinstance(k, bytes) and isinstance(s, float) for k, s in got)
    assert got == sorted(got, key=lambda h: (-h[1], h[0])), got


def test_similar_finds_the_near_duplicate_first(sc, follower_client):
    for c in (sc, follower_client):
        got = c.similar(SIM["sim/a"])
        check_similar(got)
        assert len(got) == 10  # the server's default top_k; the store holds more
        assert [k for k, _ in got[:2]] == [b"sim/a", b"sim/b"], got
        assert got[0][1] == pytest.approx(1.0, abs=0.02)  # vectors are 8 bits a dimension
        assert got[1][1] < got[0][1]
        # A near-duplicate of sim/b (a typo, another word changed): sim/b first.
        got = c.similar("The violinist practiced a dificult concerto each evening", top_k=3)
        check_similar(got)
        assert len(got) == 3 and got[0][0] == b"sim/b" and got[1][0] == b"sim/a", got
        # Only keys under the prefix; top_k bounds the answer.
        got = c.similar("accountants reconcile ledgers", prefix="sim/", top_k=50)
        check_similar(got)
        assert got[0][0] == b"sim/c", got
        assert {k for k, _ in got} == {k.encode() for k in SIM}, got
        assert c.similar(SIM["sim/a"], top_k=1) == c.similar(SIM["sim/a"])[:1]
        assert c.similar("anything at all", prefix=b"nothing/") == []


def test_similar_reflects_writes_at_once(sc, follower_client):
    text = "penguins waddle across antarctic ice shelves"
    for c in (sc, follower_client):
        sc.put("sim/live", text)
        assert c.similar(text, top_k=1)[0][0] == b"sim/live"
        sc.delete("sim/live")
        assert b"sim/live" not in {k for k, _ in c.similar(text, top_k=1000)}


def test_a_node_without_search_says_so(cluster):
    # The session's cluster was started without --search.
    with cluster.client(timeout=5) as c:
        for call in (lambda: c.search("anything"), lambda: c.similar("anything"),
                     lambda: c.search("anything", serializable=True)):
            with pytest.raises(flashkv.Unavailable) as e:
                call()
            assert NOT_ENABLED in str(e.value), str(e.value)
            assert e.value.definite and not isinstance(e.value, flashkv.Timeout), repr(e.value)
