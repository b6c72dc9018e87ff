//! Outcomes as HTTP answers (SPEC section 9): 400 invalid input, 401/403
//! permission denied, 404 absent key, 409 compare failed, 503 definite
//! failure, 504 unknown outcome; every error body is
//! `{"ok":false,"error":"..","definite":true|false}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};

/// A failed request, ready to answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    definite: bool,
}

impl ApiError {
    /// A definite failure with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            definite: true,
        }
    }

    /// 504: the request did not finish within `limit`; its outcome is
    /// unknown.
    #[must_use]
    pub fn timed_out(limit: std::time::Duration) -> ApiError {
        ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!("the request did not finish within {limit:?}"),
            definite: false,
        }
    }

    /// 400: the request is malformed; nothing was applied.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            definite: true,
        }
    }

    /// The answer for a failed client call. `had_token`: the caller sent a
    /// bearer token (a refusal is then 403, else 401).
    #[must_use]
    pub fn from_client(e: &kv_client::Error, had_token: bool) -> ApiError {
        let definite = e.is_definite();
        let status = match e {
            kv_client::Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            kv_client::Error::PermissionDenied(_) if had_token => StatusCode::FORBIDDEN,
            kv_client::Error::PermissionDenied(_) => StatusCode::UNAUTHORIZED,
            kv_client::Error::Server { .. } if definite => StatusCode::INTERNAL_SERVER_ERROR,
            _ if definite => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError {
            status,
            message: e.to_string(),
            definite,
        }
    }

    /// The status code.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What went wrong.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"ok": false, "error": self.message, "definite": self.definite})),
        )
            .into_response()
    }
}

/// The answer to a route that does not exist.
pub async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such route (see SPEC section 9)".to_owned(),
        definite: true,
    }
}

/// The answer to a route called with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: "this route does not take that method (see SPEC section 9)".to_owned(),
        definite: true,
    }
}

/// Puts `bytes` into `obj` as `"<name>"` when it is UTF-8, else as
/// `"<name>_base64"`.
pub fn put_bytes(obj: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            obj.insert(name.to_owned(), Value::String(s.to_owned()));
        }
        Err(_) => {
            obj.insert(
                format!("{name}_base64"),
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            );
        }
    }
}

/// The bytes of a `"<name>"` (UTF-8) or `"<name>_base64"` field; exactly
/// one must be given.
///
/// # Errors
///
/// 400 naming the field when neither or both are given, or the base64 is
/// malformed.
pub fn take_bytes(
    text: Option<String>,
    b64: Option<String>,
    name: &str,
) -> Result<Vec<u8>, ApiError> {
    match (text, b64) {
        (Some(t), None) => Ok(t.into_bytes()),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map_err(|e| ApiError::invalid(format!("{name}_base64: {e}"))),
        (None, None) => Err(ApiError::invalid(format!(
            "\"{name}\" (or \"{name}_base64\") is required"
        ))),
        (Some(_), Some(_)) => Err(ApiError::invalid(format!(
            "give \"{name}\" or \"{name}_base64\", not both"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_the_codes_of_the_spec() {
        let cases = [
            (kv_client::Error::InvalidArgument("x".into()), false, 400),
            (kv_client::Error::PermissionDenied("x".into()), false, 401),
            (kv_client::Error::PermissionDenied("x".into()), true, 403),
            (
                kv_client::Error::Unavailable {
                    message: "x".into(),
                    definite: true,
                },
                false,
                503,
            ),
            (
                kv_client::Error::Unavailable {
                    message: "x".into(),
                    definite: false,
                },
                false,
                504,
            ),
            (kv_client::Error::Timeout { definite: false }, false, 504),
            (kv_client::Error::Timeout { definite: true }, false, 503),
        ];
        for (e, token, code) in cases {
            assert_eq!(
                ApiError::from_client(&e, token).status().as_u16(),
                code,
                "{e:?}"
            );
        }
    }

    #[test]
    fn bytes_go_as_text_or_base64() {
        let mut m = Map::new();
        put_bytes(&mut m, "value", b"hello");
        put_bytes(&mut m, "key", &[0xff, 0x00]);
        assert_eq!(m["value"], "hello");
        assert_eq!(m["key_base64"], "/wA=");
        assert_eq!(
            take_bytes(None, Some("/wA=".into()), "v").unwrap(),
            vec![0xff, 0]
        );
        assert_eq!(take_bytes(Some("a".into()), None, "v").unwrap(), b"a");
        assert_eq!(take_bytes(None, None, "v").unwrap_err().status(), 400);
        assert_eq!(
            take_bytes(Some("a".into()), Some("YQ==".into()), "v")
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            take_bytes(None, Some("!!".into()), "v")
                .unwrap_err()
                .status(),
            400
        );
    }
}
