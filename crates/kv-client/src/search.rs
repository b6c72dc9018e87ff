//! Search over values (SPEC section 11): full-text and similarity queries,
//! served by nodes started with `kvd --search`.

use bytes::Bytes;
use kv_net::proto::{self, response};

use crate::{Client, Kind, Result, unexpected, write_request};

/// Options of [`Client::search_with`] and [`Client::similar_with`].
#[derive(Debug, Clone, Default)]
pub struct SearchOptions {
    /// Only keys with this prefix.
    pub prefix: Bytes,
    /// Most keys returned (0: the server's default, 100 for a search and
    /// 10 for a similar; the server answers at most 1000).
    pub limit: usize,
    /// A possibly stale answer from the node's own index instead of a
    /// linearizable one (default: [`Options::serializable`](crate::Options::serializable)).
    pub serializable: Option<bool>,
}

impl Client {
    /// Keys whose value contains every word of `query` (Unicode words, case
    /// folded), best first by BM25 score, at most `limit` (0: the server's
    /// default), only those starting with `prefix` (empty: all). Served by
    /// nodes started with `kvd --search`; linearizable unless
    /// [`Options::serializable`](crate::Options::serializable).
    ///
    /// # Errors
    ///
    /// [`Error`](crate::Error); a query without any word is
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument).
    pub async fn search(
        &self,
        query: &str,
        prefix: impl AsRef<[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, f64)>> {
        let opts = SearchOptions {
            prefix: Bytes::copy_from_slice(prefix.as_ref()),
            limit,
            serializable: None,
        };
        self.search_with(query, &opts).await
    }

    /// [`Client::search`] with all its options.
    ///
    /// # Errors
    ///
    /// As [`Client::search`].
    pub async fn search_with(
        &self,
        query: &str,
        opts: &SearchOptions,
    ) -> Result<Vec<(Bytes, f64)>> {
        let mut s = proto::Search::new();
        query.clone_into(&mut s.query);
        s.prefix = opts.prefix.clone();
        s.limit = u32::try_from(opts.limit).unwrap_or(u32::MAX);
        s.serializable = opts.serializable.unwrap_or(self.inner.opts.serializable);
        self.search_call(proto::request::Cmd::Search(s)).await
    }

    /// The `top_k` keys (0: the server's default) whose values are nearest
    /// in meaning to `text`, best first, with their cosine similarity in
    /// [-1, 1]; only keys starting with `prefix` (empty: all). As
    /// [`Client::search`] otherwise.
    ///
    /// # Errors
    ///
    /// As [`Client::search`].
    pub async fn similar(
        &self,
        text: &str,
        prefix: impl AsRef<[u8]>,
        top_k: usize,
    ) -> Result<Vec<(Bytes, f64)>> {
        let opts = SearchOptions {
            prefix: Bytes::copy_from_slice(prefix.as_ref()),
            limit: top_k,
            serializable: None,
        };
        self.similar_with(text, &opts).await
    }

    /// [`Client::similar`] with all its options (`limit` is `top_k`).
    ///
    /// # Errors
    ///
    /// As [`Client::search`].
    pub async fn similar_with(
        &self,
        text: &str,
        opts: &SearchOptions,
    ) -> Result<Vec<(Bytes, f64)>> {
        let mut s = proto::Similar::new();
        text.clone_into(&mut s.text);
        s.prefix = opts.prefix.clone();
        s.top_k = u32::try_from(opts.limit).unwrap_or(u32::MAX);
        s.serializable = opts.serializable.unwrap_or(self.inner.opts.serializable);
        self.search_call(proto::request::Cmd::Similar(s)).await
    }

    async fn search_call(&self, cmd: proto::request::Cmd) -> Result<Vec<(Bytes, f64)>> {
        let resp = self.execute(write_request(cmd), Kind::Read).await?;
        match resp.result {
            Some(response::Result::Search(r)) => {
                Ok(r.hits.into_iter().map(|h| (h.key, h.score)).collect())
            }
            _ => Err(unexpected()),
        }
    }
}
