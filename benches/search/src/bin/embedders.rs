//! The default `NgramEmbedder` against a real sentence-embedding model
//! that ships its weights in its crate (`pocket-encoder`:
//! sentence-transformers/paraphrase-MiniLM-L3-v2, 4-bit, bundled), on what
//! "similar by meaning" asks: find a text from a paraphrase that shares few
//! or no words with it. Prints top-1 accuracy and mean reciprocal rank over
//! labelled pairs, and embedding throughput.
//!
//!     cargo run --release --bin embedders

use std::time::Instant;

use kv_search::{Embedder, NgramEmbedder};

/// (document, a query that means the same in other words).
const PAIRS: &[(&str, &str)] = &[
    ("The car would not start this morning", "my automobile failed to turn on today"),
    ("How do I reset my password", "I forgot my login credentials"),
    ("The stock market fell sharply on Monday", "shares dropped a lot at the start of the week"),
    ("She adopted a small puppy from the shelter", "a young dog was taken home from the rescue"),
    ("Heavy rain flooded the streets downtown", "the city centre was under water after the storm"),
    ("The flight was delayed by three hours", "our plane left much later than scheduled"),
    ("He is learning to play the guitar", "practising a stringed instrument for the first time"),
    ("The restaurant serves excellent pasta", "great italian noodles at this place to eat"),
    ("Our team won the championship final", "we took the title in the last match"),
    ("The doctor prescribed antibiotics for the infection", "the physician gave medicine against bacteria"),
    ("Prices at the supermarket keep rising", "groceries are getting more expensive"),
    ("The laptop battery drains very quickly", "my notebook computer loses charge fast"),
    ("They are getting married next spring", "the couple will wed in a few months"),
    ("The museum opens a new dinosaur exhibit", "fossils of ancient reptiles go on display"),
    ("Traffic was terrible on the highway", "the motorway was jammed with vehicles"),
    ("I need to buy a birthday present for my mother", "looking for a gift for mum"),
    ("The server crashed after the update", "the machine went down once the patch was installed"),
    ("The children built a sandcastle at the beach", "kids made a fort of sand by the sea"),
    ("He lost his wallet on the train", "his purse went missing during the railway trip"),
    ("The concert tickets sold out in minutes", "every seat for the show was gone almost at once"),
    ("Please turn down the music, it is too loud", "lower the volume, the noise is excessive"),
    ("The bakery sells fresh bread every morning", "newly baked loaves are available daily at dawn"),
    ("Scientists discovered a new species of frog", "researchers found an unknown amphibian"),
    ("The meeting has been moved to Thursday", "we rescheduled the appointment for later this week"),
    ("My phone screen cracked when I dropped it", "the display of my mobile broke after a fall"),
    ("The hotel room had a beautiful view of the mountains", "from our lodging we could see the peaks"),
    ("He quit his job to start a company", "he resigned to found his own business"),
    ("The river froze during the cold winter", "ice covered the stream in the freezing season"),
    ("She is allergic to peanuts", "nuts make her sick"),
    ("The library extended its opening hours", "the place to borrow books now stays open longer"),
];

fn cos(a: &[f32], b: &[f32]) -> f32 {
    let (mut d, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        d += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 { 0.0 } else { d / (na.sqrt() * nb.sqrt()) }
}

/// Top-1 accuracy and mean reciprocal rank of each query's own document
/// among all documents.
fn score(docs: &[Vec<f32>], queries: &[Vec<f32>]) -> (f64, f64) {
    let (mut top1, mut mrr) = (0usize, 0.0f64);
    for (i, q) in queries.iter().enumerate() {
        let own = cos(q, &docs[i]);
        let better = docs
            .iter()
            .enumerate()
            .filter(|(j, d)| *j != i && cos(q, d) > own)
            .count();
        if better == 0 {
            top1 += 1;
        }
        mrr += 1.0 / (better + 1) as f64;
    }
    (top1 as f64 / queries.len() as f64, mrr / queries.len() as f64)
}

fn main() {
    let docs: Vec<&str> = PAIRS.iter().map(|p| p.0).collect();
    let queries: Vec<&str> = PAIRS.iter().map(|p| p.1).collect();
    // Throughput texts: the documents and queries, varied, 1,200 in all.
    let many: Vec<String> = (0..20)
        .flat_map(|i| {
            PAIRS
                .iter()
                .flat_map(move |p| [format!("{} {i}", p.0), format!("{} {i}", p.1)])
        })
        .collect();

    let ngram = NgramEmbedder::default();
    let d: Vec<Vec<f32>> = docs.iter().map(|t| ngram.embed(t)).collect();
    let q: Vec<Vec<f32>> = queries.iter().map(|t| ngram.embed(t)).collect();
    let (a1, m1) = score(&d, &q);
    let t = Instant::now();
    for s in &many {
        std::hint::black_box(ngram.embed(s));
    }
    let r1 = many.len() as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let enc = pocket_encoder::Encoder::new().expect("load the bundled model");
    let load = t.elapsed();
    let d = enc.embed(&docs).expect("embed");
    let q = enc.embed(&queries).expect("embed");
    let (a2, m2) = score(&d, &q);
    let t = Instant::now();
    for chunk in many.chunks(64) {
        std::hint::black_box(enc.embed(chunk).expect("embed"));
    }
    let r2 = many.len() as f64 / t.elapsed().as_secs_f64();
    let info = pocket_encoder::model_info();

    println!("{} paraphrase pairs; a query's own document ranked among all {} documents\n", PAIRS.len(), docs.len());
    println!("| embedder | dim | top-1 | MRR | texts/s (one thread) |");
    println!("|---|---:|---:|---:|---:|");
    println!("| NgramEmbedder (kv-search default) | {} | {a1:.2} | {m1:.2} | {r1:.0} |", ngram.dim());
    println!(
        "| pocket-encoder ({}, loaded in {:.2} s) | {} | {a2:.2} | {m2:.2} | {r2:.0} |",
        info.upstream_model, load.as_secs_f64(), info.dimensions
    );
}
