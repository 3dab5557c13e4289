//! Requests pingora cannot parse.
//!
//! pingora's own HTTP loop (the `HttpServerApp` it derives for every `ServeHttp`) logs a failed
//! request-head read at ERROR with the error's context, which for a parse error is the raw
//! request buffer (up to 2 KiB: bearer tokens, login bodies), and then closes the connection
//! without an answer. [`ParseGuard`] runs the same loop with two differences: a malformed head
//! is answered `400 malformed_request` (or `431 request_header_too_large`) in problem+json
//! before the connection is closed, and only the error's kind and a fixed reason are logged.
//! Response write failures (the client went away) are logged the same way, without pingora's
//! request summary (method, path, Host).

use crate::error::ApiError;
use crate::telemetry::metrics;
use async_trait::async_trait;
use bytes::Bytes;
use http::StatusCode;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::{Error, ErrorType};
use std::sync::Arc;
use std::time::Duration;

/// How long the answer to a malformed request may take to write before the connection is
/// simply closed (the client may not be reading).
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle time allowed between requests on a kept-alive connection (pingora's default).
const KEEPALIVE_SECONDS: u64 = 60;

/// An application answering one parsed request on a session: it reads what it needs of the
/// body and writes the whole response (head and body, possibly in chunks).
#[async_trait]
pub trait Answer {
    /// Answers the request read into `session`; false when the response could not be
    /// written whole (the connection is then closed, never reused).
    async fn answer(&self, session: &mut ServerSession) -> bool;
}

/// Wraps an [`Answer`] app: serves its responses, answers malformed requests itself, and keeps
/// request bytes out of the log.
pub struct ParseGuard<A>(pub A);

/// Why a request head was refused: the status, the stable code, and a reason that is a fixed
/// string (never text derived from the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400 or 431.
    pub status: StatusCode,
    /// The problem `code`.
    pub code: &'static str,
    /// A fixed description, safe to log and to send.
    pub reason: &'static str,
}

/// Classifies a failed read of a request head: `Some` when the client sent something that is
/// not a valid HTTP/1 request head (answered), `None` when the connection failed or timed out
/// (nothing to answer).
pub fn classify(e: &Error) -> Option<Refusal> {
    let malformed = |reason| Refusal {
        status: StatusCode::BAD_REQUEST,
        code: "malformed_request",
        reason,
    };
    let too_large = Refusal {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        code: "request_header_too_large",
        reason: "request header section too large",
    };
    // Parse errors, the size limit, and the framing pingora refuses after parsing (conflicting
    // Content-Length, Transfer-Encoding on HTTP/1.0, ambiguous authority) share this type;
    // anything else is a failed or timed-out read.
    if *e.etype() != ErrorType::InvalidHTTPHeader {
        return None;
    }
    let parse = e
        .root_cause()
        .downcast_ref::<httparse::Error>()
        .copied()
        .or_else(|| e.cause.as_ref()?.downcast_ref::<httparse::Error>().copied());
    Some(match parse {
        Some(httparse::Error::TooManyHeaders) => too_large,
        Some(p) => malformed(parse_reason(p)),
        // Without a parser error, the only head error pingora raises before parsing is the
        // size limit; after parsing, it is framing.
        None if e.cause.is_none()
            && e.context
                .as_ref()
                .is_some_and(|c| c.as_str().starts_with("Request header larger")) =>
        {
            too_large
        }
        None => malformed("invalid request framing"),
    })
}

fn parse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in the request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// The problem+json answer to a malformed request, as a pingora response head and body.
fn refusal_response(refusal: Refusal) -> Option<(ResponseHeader, Bytes)> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let error = ApiError::new(
        refusal.status,
        refusal.code,
        format!("the request could not be parsed: {}", refusal.reason),
    );
    let body = Bytes::from(error.body(Some(&request_id)));
    let mut head = ResponseHeader::build(refusal.status, Some(5)).ok()?;
    head.insert_header(http::header::CONTENT_TYPE, "application/problem+json")
        .ok()?;
    head.insert_header(http::header::CONTENT_LENGTH, body.len())
        .ok()?;
    head.insert_header(http::header::CACHE_CONTROL, "no-store")
        .ok()?;
    head.insert_header("x-request-id", request_id).ok()?;
    Some((head, body))
}

/// Answers a malformed request (the connection is closed afterwards) and logs only the kind of
/// error.
async fn refuse(session: &mut ServerSession, e: &Error) {
    let Some(refusal) = classify(e) else {
        tracing::debug!(
            error_kind = e.etype().as_str(),
            "connection closed while reading a request"
        );
        return;
    };
    metrics::HTTP_REQUESTS
        .with_label_values(&["malformed", "OTHER", "4xx"])
        .inc();
    tracing::info!(
        status = refusal.status.as_u16(),
        code = refusal.code,
        reason = refusal.reason,
        "malformed request refused"
    );
    let Some((head, body)) = refusal_response(refusal) else {
        return;
    };
    let write = session.write_error_response(head, body);
    if let Ok(Err(e)) | Err(e) = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, write)
        .await
        .map_err(|_| Error::new(ErrorType::WriteTimedout))
    {
        tracing::debug!(
            error_kind = e.etype().as_str(),
            "refusal of a malformed request not delivered"
        );
    }
}

/// Logs a response that could not be written (the client went away), by kind only.
pub fn write_failed(e: &Error) {
    tracing::debug!(
        error_kind = e.etype().as_str(),
        "response not delivered; connection closed"
    );
}

#[async_trait]
impl<A> HttpServerApp for ParseGuard<A>
where
    A: Answer + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            // The client closed an idle kept-alive connection.
            Ok(false) => return None,
            Err(e) => {
                refuse(&mut session, &e).await;
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(KEEPALIVE_SECONDS));
        }
        if !self.0.answer(&mut session).await {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(reusable) => reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(e) => {
                write_failed(&e);
                None
            }
        }
    }
}
