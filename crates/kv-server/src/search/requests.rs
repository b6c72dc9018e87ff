//! The `Search` / `Similar` requests: a read index (unless serializable),
//! a wait until the index has applied it, then the query.

use std::time::Instant;

use bytes::Bytes;
use kv_net::proto::{self, ErrorCode, Response, ScoredKey, SearchResult};
use kv_net::server::error_response;
use tokio::time::Instant as TokioInstant;

use super::{DEFAULT_LIMIT, DEFAULT_TOP_K, MAX_RESULT_BYTES, MAX_RESULTS, NOT_ENABLED, WaitError};
use crate::service::KvService;

pub(super) fn unavailable(message: impl Into<String>) -> Response {
    error_response(0, ErrorCode::UNAVAILABLE, message)
}

pub(super) fn wait_error(e: WaitError) -> Response {
    match e {
        WaitError::Timeout => error_response(
            0,
            ErrorCode::TIMEOUT,
            "timed out waiting for the search index to catch up",
        ),
        WaitError::Failed(why) => unavailable(format!("search index unavailable: {why}")),
    }
}

pub(super) fn search_error(e: &kv_search::Error) -> Response {
    match e {
        kv_search::Error::EmptyQuery => {
            error_response(0, ErrorCode::INVALID_ARGUMENT, "the query has no words")
        }
        e => error_response(0, ErrorCode::INTERNAL, format!("search failed: {e}")),
    }
}

pub(super) fn count(n: u32, default: usize) -> usize {
    match n {
        0 => default,
        n => usize::try_from(n).unwrap_or(MAX_RESULTS).min(MAX_RESULTS),
    }
}

/// A query to run on the index.
enum Query {
    Search {
        query: String,
        prefix: Bytes,
        limit: usize,
    },
    Similar {
        text: String,
        prefix: Bytes,
        top_k: usize,
    },
}

impl KvService {
    /// Answers a `Search` or `Similar` request.
    pub(crate) async fn search_request(
        &self,
        cmd: proto::request::Cmd,
        deadline: TokioInstant,
    ) -> Result<Response, Response> {
        let (query, serializable) = match cmd {
            proto::request::Cmd::Search(s) => (
                Query::Search {
                    query: s.query,
                    prefix: s.prefix,
                    limit: count(s.limit, DEFAULT_LIMIT),
                },
                s.serializable,
            ),
            proto::request::Cmd::Similar(s) => (
                Query::Similar {
                    text: s.text,
                    prefix: s.prefix,
                    top_k: count(s.top_k, DEFAULT_TOP_K),
                },
                s.serializable,
            ),
            _ => {
                return Err(error_response(
                    0,
                    ErrorCode::INVALID_ARGUMENT,
                    "not a search",
                ));
            }
        };
        let Some(indexer) = self.search.clone() else {
            return Err(unavailable(NOT_ENABLED));
        };
        let read_index = self.read_barrier(serializable, deadline).await?;
        indexer
            .wait_applied(read_index, deadline)
            .await
            .map_err(wait_error)?;
        let until = Instant::now() + deadline.saturating_duration_since(TokioInstant::now());
        let hits = tokio::task::spawn_blocking(move || {
            indexer.with_index(until, |ix| {
                let at = ix.applied_index();
                let hits: Result<Vec<(Vec<u8>, f64)>, kv_search::Error> = match &query {
                    Query::Search {
                        query,
                        prefix,
                        limit,
                    } => ix.search(query, (!prefix.is_empty()).then_some(prefix), *limit),
                    Query::Similar {
                        text,
                        prefix,
                        top_k,
                    } => ix
                        .similar(text, *top_k, (!prefix.is_empty()).then_some(prefix))
                        .map(|v| v.into_iter().map(|(k, s)| (k, f64::from(s))).collect()),
                };
                hits.map(|h| (at, h))
            })
        })
        .await
        .map_err(|e| error_response(0, ErrorCode::INTERNAL, format!("search task failed: {e}")))?
        .map_err(wait_error)?;
        let (at, hits) = hits.map_err(|e| search_error(&e))?;
        let mut result = SearchResult::new();
        result.index = at;
        let mut bytes = 0;
        for (key, score) in hits {
            bytes += key.len() + 16;
            if bytes > MAX_RESULT_BYTES {
                break;
            }
            let mut hit = ScoredKey::new();
            hit.key = key.into();
            hit.score = score;
            result.hits.push(hit);
        }
        let mut resp = Response::new();
        resp.set_search(result);
        Ok(resp)
    }
}
