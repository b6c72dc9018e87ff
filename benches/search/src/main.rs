//! Loads N generated short texts into kv-engine alone, into kv-engine plus
//! the kv-search indexes (as a state machine would apply them, in batches),
//! and into tantivy; prints write throughput, index size, and query latency
//! and recall. See crates/kv-search/README.md for the figures.

use std::path::Path;
use std::time::{Duration, Instant};

use kv_engine::{Db, SyncMode, WriteBatch};
use kv_search::corpus::Corpus;
use kv_search::{Change, Embedder, NgramEmbedder, SearchIndex, SearchOptions};

struct Args {
    texts: usize,
    batch: usize,
    queries: usize,
    tantivy: bool,
    dir: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        texts: 1_000_000,
        batch: 1000,
        queries: 1000,
        tantivy: true,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--quick" => a.texts = 50_000,
            "--texts" => a.texts = num("--texts"),
            "--batch" => a.batch = num("--batch"),
            "--queries" => a.queries = num("--queries"),
            "--no-tantivy" => a.tantivy = false,
            "--dir" => a.dir = it.next(),
            other => panic!(
                "unknown argument {other}; use --quick | --texts N | --batch N | --queries N | --no-tantivy | --dir D"
            ),
        }
    }
    a
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

fn pct(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| {
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    (at(0.50), at(0.99))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn key(i: usize) -> Vec<u8> {
    format!("doc:{i:08}").into_bytes()
}

fn main() {
    let a = args();
    let tmp = tempfile::Builder::new()
        .prefix("search-bench")
        .tempdir_in(a.dir.as_deref().unwrap_or("/tmp"))
        .expect("tempdir");
    let root = tmp.path();
    println!(
        "search bench: {} texts, batches of {}, {} queries",
        a.texts, a.batch, a.queries
    );
    let t = Instant::now();
    let mut corpus = Corpus::new(20_000, 1);
    let texts: Vec<String> = (0..a.texts).map(|_| corpus.sentence(4, 12)).collect();
    let raw_bytes: usize = texts.iter().map(|t| t.len()).sum();
    println!(
        "generated in {:.1}s, {} of text, vocabulary 20,000 words (Zipf s=1)",
        t.elapsed().as_secs_f64(),
        mib(raw_bytes as u64)
    );
    let mut qc = Corpus::new(20_000, 99);
    let queries: Vec<String> = (0..a.queries)
        .map(|i| qc.sentence(1 + i % 3, 1 + i % 3))
        .collect();
    let sim_queries: Vec<String> = (0..a.queries.min(200)).map(|_| qc.sentence(3, 8)).collect();

    let engine = kv_engine::Options {
        sync: SyncMode::Never,
        ..kv_engine::Options::default()
    };
    let mut rows: Vec<(String, String)> = Vec::new();

    // 1. Raw store puts.
    let raw_dir = root.join("raw");
    let db = Db::open_with(&raw_dir, engine.clone()).expect("open raw");
    let t = Instant::now();
    for (b, chunk) in texts.chunks(a.batch).enumerate() {
        let mut wb = WriteBatch::new();
        for (j, text) in chunk.iter().enumerate() {
            wb.put(key(b * a.batch + j), text);
        }
        db.write(wb).expect("write");
    }
    let raw_s = t.elapsed().as_secs_f64();
    db.compact().expect("compact");
    let raw_size = dir_size(&raw_dir);
    drop(db);
    rows.push((
        "store puts, no index".into(),
        format!("{:.0} texts/s", a.texts as f64 / raw_s),
    ));
    rows.push(("store size (compacted)".into(), mib(raw_size)));

    // 2. Store puts + index apply, entry by entry.
    let store_dir = root.join("store");
    let index_dir = root.join("index");
    let db = Db::open_with(&store_dir, engine.clone()).expect("open store");
    let opts = SearchOptions::default();
    let index = SearchIndex::create(&index_dir, opts.clone()).expect("create index");
    let t = Instant::now();
    let mut apply_time = Duration::ZERO;
    let mut batch_times = Vec::new();
    for (b, chunk) in texts.chunks(a.batch).enumerate() {
        let tb = Instant::now();
        let keys: Vec<Vec<u8>> = (0..chunk.len()).map(|j| key(b * a.batch + j)).collect();
        let mut wb = WriteBatch::new();
        for (k, text) in keys.iter().zip(chunk) {
            wb.put(k, text);
        }
        db.write(wb).expect("write");
        let ta = Instant::now();
        let changes: Vec<Change<'_>> = keys
            .iter()
            .zip(chunk)
            .map(|(k, v)| Change::Put {
                key: k,
                value: v.as_bytes(),
            })
            .collect();
        index.apply(b as u64 + 1, &changes).expect("apply");
        apply_time += ta.elapsed();
        batch_times.push(tb.elapsed());
    }
    let idx_s = t.elapsed().as_secs_f64();
    let (bp50, bp99) = pct(batch_times);
    rows.push((
        "store puts + index apply".into(),
        format!(
            "{:.0} texts/s ({:.1}x slower); index apply alone {:.0} texts/s; per batch p50 {bp50:.1} ms, p99 {bp99:.1} ms",
            a.texts as f64 / idx_s,
            idx_s / raw_s,
            a.texts as f64 / apply_time.as_secs_f64()
        ),
    ));
    let st = index.stats();
    index.compact().expect("compact index");
    let idx_size = dir_size(&index_dir);
    rows.push((
        "kv-search index on disk (compacted)".into(),
        format!(
            "{} ({:.2}x the store), in memory {} (vectors, keys, graph)",
            mib(idx_size),
            idx_size as f64 / raw_size as f64,
            mib(st.memory_bytes as u64)
        ),
    ));

    // 3. Queries.
    let mut lat = Vec::new();
    let mut hits = 0usize;
    for q in &queries {
        let t = Instant::now();
        hits += index.search(q, None, 10).expect("search").len();
        lat.push(t.elapsed());
    }
    let (p50, p99) = pct(lat);
    rows.push((
        "full-text search, 1-3 words, top 10".into(),
        format!(
            "p50 {p50:.3} ms, p99 {p99:.3} ms ({:.1} hits/query)",
            hits as f64 / queries.len() as f64
        ),
    ));
    let mut exact_lat = Vec::new();
    let mut exact_hits = Vec::new();
    for q in &sim_queries {
        let t = Instant::now();
        exact_hits.push(index.similar_exact(q, 10, None).expect("exact"));
        exact_lat.push(t.elapsed());
    }
    let (e50, e99) = pct(exact_lat);
    rows.push((
        "similar, exact scan (8-bit), top 10".into(),
        format!("p50 {e50:.2} ms, p99 {e99:.2} ms"),
    ));
    let ef0 = opts.hnsw.ef_search;
    let graph = if st.approximate {
        format!(
            "HNSW (m={}, ef_search={ef0}, effective {} at this size)",
            opts.hnsw.m, st.ef_search
        )
    } else {
        "exact (below threshold)".to_owned()
    };
    rows.push((
        format!("similar, {graph}, top 10"),
        approx_row(&index, &sim_queries, &exact_hits),
    ));
    rows.push((
        "quantisation: recall@10 of 8-bit vs f32 (20k texts)".into(),
        format!("{:.3}", quant_recall(&texts, &sim_queries)),
    ));
    drop(index);
    let graph_bytes: u64 = std::fs::read_dir(&index_dir)
        .expect("index dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "graph"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let t = Instant::now();
    let index = SearchIndex::open(&index_dir, opts.clone()).expect("reopen");
    rows.push((
        "reopen (load vectors and the saved graph)".into(),
        format!(
            "{:.1} s; graph file {}; {:?}",
            t.elapsed().as_secs_f64(),
            mib(graph_bytes),
            index.graph_restored()
        ),
    ));
    drop(index);
    if st.approximate {
        for ef in [ef0 / 2, 2 * ef0] {
            let mut o = opts.clone();
            o.hnsw.ef_search = ef;
            let index = SearchIndex::open(&index_dir, o).expect("reopen");
            rows.push((
                format!(
                    "similar, HNSW (m={}, ef_search={ef}, effective {}), top 10",
                    opts.hnsw.m,
                    index.stats().ef_search
                ),
                approx_row(&index, &sim_queries, &exact_hits),
            ));
        }
    }
    drop(db);

    if a.tantivy {
        tantivy_rows(&a, &texts, &queries, root, raw_s, &mut rows);
    }
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}

/// Latency of `similar` and its recall@10 against `exact` (a result counts
/// when its exact score ties or beats the exact 10th).
fn approx_row(index: &SearchIndex, queries: &[String], exact: &[Vec<(Vec<u8>, f32)>]) -> String {
    let mut lat = Vec::new();
    let (mut hit, mut total) = (0usize, 0usize);
    for (q, exact) in queries.iter().zip(exact) {
        let t = Instant::now();
        let approx = index.similar(q, 10, None).expect("similar");
        lat.push(t.elapsed());
        if let Some(kth) = exact.last().map(|e| e.1) {
            hit += approx
                .iter()
                .filter(|x| x.1 >= kth - 1e-6)
                .count()
                .min(exact.len());
            total += exact.len();
        }
    }
    let (a50, a99) = pct(lat);
    format!(
        "p50 {a50:.3} ms, p99 {a99:.3} ms, recall@10 {:.3}",
        hit as f64 / total.max(1) as f64
    )
}

/// Recall@10 of exact search over the 8-bit vectors against exact search
/// over the float vectors, on the first 20,000 texts.
fn quant_recall(texts: &[String], queries: &[String]) -> f64 {
    let e = NgramEmbedder::default();
    let unit = |v: Vec<f32>| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let docs: Vec<(Vec<f32>, Vec<f32>)> = texts
        .iter()
        .take(20_000)
        .map(|t| {
            let f = unit(e.embed(t));
            let q = kv_search::quantize(&f).unwrap_or_default();
            let qf = unit(q.iter().map(|&x| f32::from(x)).collect());
            (f, qf)
        })
        .collect();
    let (mut hit, mut total) = (0, 0);
    for q in queries {
        let qv = unit(e.embed(q));
        let dot = |v: &[f32]| v.iter().zip(&qv).map(|(a, b)| a * b).sum::<f32>();
        let mut f: Vec<(f32, usize)> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| (dot(&d.0), i))
            .collect();
        let mut g: Vec<(f32, usize)> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| (dot(&d.1), i))
            .collect();
        f.sort_by(|a, b| b.0.total_cmp(&a.0));
        g.sort_by(|a, b| b.0.total_cmp(&a.0));
        let kth = f.get(9).map_or(0.0, |x| x.0);
        // a hit when the 8-bit top 10 holds a text whose float score ties or beats the 10th
        hit += g
            .iter()
            .take(10)
            .filter(|x| docs[x.1].0.iter().zip(&qv).map(|(a, b)| a * b).sum::<f32>() >= kth - 1e-6)
            .count();
        total += 10;
    }
    hit as f64 / total.max(1) as f64
}

fn tantivy_rows(
    a: &Args,
    texts: &[String],
    queries: &[String],
    root: &Path,
    raw_s: f64,
    rows: &mut Vec<(String, String)>,
) {
    use tantivy::collector::TopDocs;
    use tantivy::query::QueryParser;
    use tantivy::schema::{STORED, STRING, Schema, TEXT, Value};
    use tantivy::{Index, IndexWriter, ReloadPolicy, TantivyDocument, Term, doc};

    let mut sb = Schema::builder();
    let kf = sb.add_text_field("key", STRING | STORED);
    let bf = sb.add_text_field("body", TEXT);
    let schema = sb.build();
    let dir = root.join("tantivy");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let index = Index::create_in_dir(&dir, schema).expect("tantivy index");
    let mut writer: IndexWriter = index
        .writer_with_num_threads(1, 100_000_000)
        .expect("writer");
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()
        .expect("reader");
    let t = Instant::now();
    let mut commit_time = Duration::ZERO;
    let mut batch_times = Vec::new();
    for (b, chunk) in texts.chunks(a.batch).enumerate() {
        let tb = Instant::now();
        for (j, text) in chunk.iter().enumerate() {
            let k = String::from_utf8(key(b * a.batch + j)).expect("utf8");
            // an upsert, as a put must be
            writer.delete_term(Term::from_field_text(kf, &k));
            writer
                .add_document(doc!(kf => k, bf => text.as_str()))
                .expect("add");
        }
        let tc = Instant::now();
        writer.commit().expect("commit");
        reader.reload().expect("reload");
        commit_time += tc.elapsed();
        batch_times.push(tb.elapsed());
    }
    let s = t.elapsed().as_secs_f64();
    let (bp50, bp99) = pct(batch_times);
    rows.push((
        "tantivy: upsert + commit + reload per batch".into(),
        format!(
            "{:.0} texts/s alone ({:.0} texts/s with the store's puts); commit+reload {:.0}% of it; per batch p50 {bp50:.1} ms, p99 {bp99:.1} ms",
            a.texts as f64 / s,
            a.texts as f64 / (s + raw_s),
            100.0 * commit_time.as_secs_f64() / s
        ),
    ));
    writer.wait_merging_threads().expect("merge");
    rows.push(("tantivy index on disk".into(), mib(dir_size(&dir))));
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()
        .expect("reader");
    let searcher = reader.searcher();
    rows.push((
        "tantivy segments after merges".into(),
        format!("{}", searcher.segment_readers().len()),
    ));
    let mut qp = QueryParser::for_index(&index, vec![bf]);
    qp.set_conjunction_by_default();
    let mut lat = Vec::new();
    let mut hits = 0usize;
    for q in queries {
        let t = Instant::now();
        let parsed = qp.parse_query(q).expect("parse");
        let top = searcher
            .search(&parsed, &TopDocs::with_limit(10))
            .expect("search");
        for (_, addr) in &top {
            let d: TantivyDocument = searcher.doc(*addr).expect("doc");
            if d.get_first(kf).and_then(|v| v.as_str()).is_some() {
                hits += 1;
            }
        }
        lat.push(t.elapsed());
    }
    let (p50, p99) = pct(lat);
    rows.push((
        "tantivy full-text search, 1-3 words, top 10 (keys fetched)".into(),
        format!(
            "p50 {p50:.3} ms, p99 {p99:.3} ms ({:.1} hits/query)",
            hits as f64 / queries.len() as f64
        ),
    ));
}
