//! Runs one command against the cluster and renders its result, plain or
//! JSON, with the exit code of SPEC section 4.

use bytes::Bytes;
use kv_client::{BatchOp, CasOutcome, Client, RangeQuery};
use serde_json::{Map, Value, json};

use crate::cli::Cmd;

/// Exit codes.
pub const OK: u8 = 0;
pub const NOT_FOUND: u8 = 1;
pub const USAGE: u8 = 2;
pub const DEFINITE: u8 = 3;
pub const UNKNOWN: u8 = 4;

/// A command's result: lines for stdout, an optional line for stderr, the
/// exit code. In JSON mode `stdout` holds exactly one line.
#[derive(Debug, Default)]
pub struct Rendered {
    pub stdout: Vec<Vec<u8>>,
    pub stderr: Option<String>,
    pub code: u8,
}

impl Rendered {
    pub fn ok_json(json: bool, value: Value, plain: Vec<Vec<u8>>) -> Rendered {
        Rendered {
            stdout: if json {
                vec![value.to_string().into_bytes()]
            } else {
                plain
            },
            stderr: None,
            code: OK,
        }
    }

    /// An invalid-input result: nothing was sent.
    pub fn usage(json: bool, message: &str) -> Rendered {
        if json {
            let v = json!({"ok": false, "error": message, "definite": true});
            Rendered {
                stdout: vec![v.to_string().into_bytes()],
                stderr: None,
                code: USAGE,
            }
        } else {
            Rendered {
                stdout: Vec::new(),
                stderr: Some(format!("error: {message}")),
                code: USAGE,
            }
        }
    }

    pub fn failure(json: bool, e: &kv_client::Error) -> Rendered {
        let code = match e {
            kv_client::Error::InvalidArgument(_) => USAGE,
            e if e.is_definite() => DEFINITE,
            _ => UNKNOWN,
        };
        let message = e.to_string();
        if json {
            let v = json!({"ok": false, "error": message, "definite": e.is_definite()});
            return Rendered {
                stdout: vec![v.to_string().into_bytes()],
                stderr: None,
                code,
            };
        }
        let note = if e.is_definite() {
            "not applied"
        } else {
            "outcome unknown: it may or may not have been applied"
        };
        Rendered {
            stdout: Vec::new(),
            stderr: Some(format!("error: {message} ({note})")),
            code,
        }
    }
}

/// Adds `name` (UTF-8) or `name_base64` for `bytes` to `obj`.
fn put_bytes(obj: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(s) => obj.insert(name.to_owned(), Value::String(s.to_owned())),
        Err(_) => obj.insert(
            format!("{name}_base64"),
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}

fn line(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Parses batch lines (`put KEY VALUE`, `delete KEY`; blank lines and `#`
/// comments skipped), split like a shell would.
///
/// # Errors
///
/// A message naming the first bad line.
pub fn parse_batch(text: &str) -> Result<Vec<BatchOp>, String> {
    let mut ops = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let words = shlex::split(trimmed).ok_or_else(|| format!("line {}: bad quoting", n + 1))?;
        let op = match words.as_slice() {
            [cmd, key, value] if cmd == "put" => BatchOp::Put(
                Bytes::from(key.clone().into_bytes()),
                Bytes::from(value.clone().into_bytes()),
            ),
            [cmd, key] if cmd == "delete" => BatchOp::Delete(Bytes::from(key.clone().into_bytes())),
            _ => {
                return Err(format!(
                    "line {}: expected `put KEY VALUE` or `delete KEY`, got {trimmed:?}",
                    n + 1
                ));
            }
        };
        if matches!(&op, BatchOp::Put(k, _) | BatchOp::Delete(k) if k.is_empty()) {
            return Err(format!("line {}: empty key", n + 1));
        }
        ops.push(op);
    }
    if ops.is_empty() {
        return Err("batch is empty".into());
    }
    Ok(ops)
}

fn check_key(json: bool, key: &str) -> Result<(), Rendered> {
    if key.is_empty() {
        Err(Rendered::usage(json, "empty key"))
    } else {
        Ok(())
    }
}

/// Runs `cmd` (not `shell` or `bench`).
pub async fn run(client: &Client, cmd: Cmd, json: bool) -> Rendered {
    match execute(client, cmd, json).await {
        Ok(r) | Err(r) => r,
    }
}

async fn execute(client: &Client, cmd: Cmd, json: bool) -> Result<Rendered, Rendered> {
    let fail = |e: kv_client::Error| Rendered::failure(json, &e);
    let ok = || Rendered::ok_json(json, json!({"ok": true}), vec![b"OK".to_vec()]);
    Ok(match cmd {
        Cmd::Put { key, value } => {
            check_key(json, &key)?;
            client.put(&key, &value).await.map_err(fail)?;
            ok()
        }
        Cmd::Delete { key } => {
            check_key(json, &key)?;
            client.delete(&key).await.map_err(fail)?;
            ok()
        }
        Cmd::Get { key } => {
            check_key(json, &key)?;
            match client.get(&key).await.map_err(fail)? {
                Some(v) => {
                    let mut obj = Map::new();
                    obj.insert("ok".into(), Value::Bool(true));
                    obj.insert("found".into(), Value::Bool(true));
                    put_bytes(&mut obj, "value", &v);
                    Rendered::ok_json(json, Value::Object(obj), vec![v.to_vec()])
                }
                None => Rendered {
                    stdout: if json {
                        vec![json!({"ok": true, "found": false}).to_string().into_bytes()]
                    } else {
                        Vec::new()
                    },
                    stderr: (!json).then(|| "key not found".to_owned()),
                    code: NOT_FOUND,
                },
            }
        }
        Cmd::Cas {
            key,
            values,
            absent,
        } => {
            check_key(json, &key)?;
            let (expected, new) = match (absent, values.as_slice()) {
                (true, [new]) => (None, new),
                (false, [expected, new]) => (Some(expected.as_bytes()), new),
                (true, _) => return Err(Rendered::usage(json, "usage: cas KEY --absent NEW")),
                (false, _) => return Err(Rendered::usage(json, "usage: cas KEY EXPECTED NEW")),
            };
            match client.cas(&key, expected, new).await.map_err(fail)? {
                CasOutcome::Swapped => ok(),
                CasOutcome::Failed { current } => {
                    let mut obj = Map::new();
                    obj.insert("ok".into(), Value::Bool(false));
                    obj.insert("error".into(), Value::String("compare failed".into()));
                    match &current {
                        Some(v) => put_bytes(&mut obj, "current", v),
                        None => {
                            obj.insert("current".into(), Value::Null);
                        }
                    }
                    Rendered {
                        stdout: if json {
                            vec![Value::Object(obj).to_string().into_bytes()]
                        } else {
                            Vec::new()
                        },
                        stderr: (!json).then(|| "compare failed".to_owned()),
                        code: NOT_FOUND,
                    }
                }
            }
        }
        Cmd::Range {
            start,
            end,
            prefix,
            limit,
            keys_only,
        } => {
            let query = RangeQuery {
                start: start
                    .map(|s| Bytes::from(s.into_bytes()))
                    .unwrap_or_default(),
                end: end.map(|s| Bytes::from(s.into_bytes())).unwrap_or_default(),
                prefix: prefix
                    .map(|s| Bytes::from(s.into_bytes()))
                    .unwrap_or_default(),
                limit: limit.unwrap_or(0),
                keys_only,
            };
            if limit == Some(0) {
                return Err(Rendered::usage(json, "--limit must be positive"));
            }
            let pairs = client.range(&query).await.map_err(fail)?;
            let mut plain = Vec::with_capacity(pairs.len());
            let mut list = Vec::with_capacity(pairs.len());
            for (k, v) in &pairs {
                let mut obj = Map::new();
                put_bytes(&mut obj, "key", k);
                if keys_only {
                    plain.push(k.to_vec());
                } else {
                    put_bytes(&mut obj, "value", v);
                    plain.push(line(&[k, b"\t", v]));
                }
                list.push(Value::Object(obj));
            }
            Rendered::ok_json(json, json!({"ok": true, "pairs": list}), plain)
        }
        Cmd::Batch { file } => {
            let text = match &file {
                Some(path) if path != "-" => std::fs::read_to_string(path)
                    .map_err(|e| Rendered::usage(json, &format!("cannot read {path}: {e}")))?,
                _ => {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                        .map_err(|e| Rendered::usage(json, &format!("cannot read stdin: {e}")))?;
                    s
                }
            };
            let ops = parse_batch(&text).map_err(|e| Rendered::usage(json, &e))?;
            client.batch(ops).await.map_err(fail)?;
            ok()
        }
        Cmd::Search {
            words,
            limit,
            prefix,
        } => {
            if limit == Some(0) {
                return Err(Rendered::usage(json, "--limit must be positive"));
            }
            let hits = client
                .search(
                    &words.join(" "),
                    prefix.unwrap_or_default(),
                    limit.unwrap_or(0),
                )
                .await
                .map_err(fail)?;
            hits_rendered(json, &hits, false)
        }
        Cmd::Similar {
            text,
            top_k,
            prefix,
        } => {
            if top_k == Some(0) {
                return Err(Rendered::usage(json, "--top-k must be positive"));
            }
            let hits = client
                .similar(
                    &text.join(" "),
                    prefix.unwrap_or_default(),
                    top_k.unwrap_or(0),
                )
                .await
                .map_err(fail)?;
            hits_rendered(json, &hits, true)
        }
        Cmd::Status => status(client, json).await,
        Cmd::Member { what } => crate::admin::member(client, what, json).await?,
        Cmd::Snapshot { what } => crate::admin::snapshot(client, what, json).await?,
        Cmd::Leader {
            what: crate::cli::LeaderCmd::Transfer { id },
        } => {
            client.leader_transfer(id).await.map_err(fail)?;
            ok()
        }
        Cmd::Shell | Cmd::Bench { .. } | Cmd::Check { .. } => {
            return Err(Rendered::usage(json, "not available here"));
        }
    })
}

/// Search results: keys (with `KEY<TAB>SCORE` when `scores`), or
/// `{"ok":true,"hits":[{"key":..,"score":..}]}`.
fn hits_rendered(json: bool, hits: &[(Bytes, f64)], scores: bool) -> Rendered {
    let mut plain = Vec::with_capacity(hits.len());
    let mut list = Vec::with_capacity(hits.len());
    for (k, score) in hits {
        let mut obj = Map::new();
        put_bytes(&mut obj, "key", k);
        obj.insert("score".into(), json!(score));
        list.push(Value::Object(obj));
        if scores {
            plain.push(line(&[k, format!("\t{score:.6}").as_bytes()]));
        } else {
            plain.push(k.to_vec());
        }
    }
    Rendered::ok_json(json, json!({"ok": true, "hits": list}), plain)
}

async fn status(client: &Client, json: bool) -> Rendered {
    let endpoints = client.endpoints().to_vec();
    let mut set = tokio::task::JoinSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        let (c, e) = (client.clone(), e.clone());
        set.spawn(async move { (i, c.status(&e).await) });
    }
    let mut answers: Vec<Option<kv_client::Result<kv_client::NodeStatus>>> =
        endpoints.iter().map(|_| None).collect();
    while let Some(Ok((i, a))) = set.join_next().await {
        answers[i] = Some(a);
    }
    let answers = answers.into_iter().map(|a| {
        a.unwrap_or(Err(kv_client::Error::Unavailable {
            message: "status task failed".into(),
            definite: true,
        }))
    });
    let mut plain = Vec::new();
    let mut list = Vec::new();
    let mut answered = 0;
    for (endpoint, answer) in endpoints.iter().zip(answers) {
        match answer {
            Ok(s) => {
                answered += 1;
                plain.push(
                    format!(
                        "id={} endpoint={endpoint} role={} term={} leader_id={} commit_index={} applied_index={}",
                        s.id, s.role, s.term, s.leader_id, s.commit_index, s.applied_index
                    )
                    .into_bytes(),
                );
                list.push(json!({
                    "endpoint": endpoint, "id": s.id, "role": s.role, "term": s.term,
                    "leader_id": s.leader_id, "commit_index": s.commit_index,
                    "applied_index": s.applied_index,
                }));
            }
            Err(e) => {
                plain.push(format!("endpoint={endpoint} error={e:?}").into_bytes());
                list.push(json!({"endpoint": endpoint, "error": e.to_string()}));
            }
        }
    }
    let mut r = Rendered::ok_json(json, json!({"ok": true, "endpoints": list.clone()}), plain);
    if answered == 0 {
        r.code = DEFINITE;
        if json {
            r.stdout = vec![
                json!({"ok": false, "error": "no endpoint answered", "definite": true,
                       "endpoints": list})
                .to_string()
                .into_bytes(),
            ];
        } else {
            r.stderr = Some("error: no endpoint answered".into());
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_lines() {
        let ops = parse_batch("put a 1\n\n# c\ndelete b\nput 'x y' \"v w\"\n").unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(
            ops[2],
            BatchOp::Put(Bytes::from_static(b"x y"), Bytes::from_static(b"v w"))
        );
        assert!(parse_batch("put a").is_err());
        assert!(parse_batch("frob a b").is_err());
        assert!(parse_batch("").is_err());
    }
}
