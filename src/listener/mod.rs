//! The HTTP layer on pingora: one [`GatewayApp`] per listener. It assigns the request id,
//! enforces the body limit and the per-request timeout, dispatches to `crate::api`, renders
//! errors as problem+json, writes the access log line and records HTTP metrics.

pub mod malformed;

use crate::api::routes::{match_route, Listener, Route};
use crate::api::{self, Chunks, NoBody, Reply, Request, RequestLog, Stream};
use crate::app::AppState;
use crate::error::ApiError;
use crate::telemetry::metrics;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode};
use malformed::{write_failed, Answer};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Longest incoming `X-Request-Id` echoed back; longer or odd ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// A pingora HTTP application serving one listener.
pub struct GatewayApp {
    state: Arc<AppState>,
    listener: Listener,
}

impl GatewayApp {
    /// An app for the public or the operator listener.
    pub fn new(state: Arc<AppState>, listener: Listener) -> Self {
        Self { state, listener }
    }
}

fn request_id(session: &ServerSession) -> String {
    session
        .req_header()
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(new_request_id)
}

/// A random (version 4) UUID from the thread's userspace generator: `Uuid::new_v4` asks the
/// kernel for randomness on every call, a system call per request.
fn new_request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    id.hyphenated().encode_lower(&mut buf).to_owned()
}

/// A refused body up to this size is read and discarded, so the client (which is usually still
/// sending) can read the 413 instead of a connection reset; larger ones just close.
const MAX_DRAIN_BYTES: usize = 8 * 1024 * 1024;

/// Reads the whole body, refusing more than `limit` bytes (413).
async fn read_body(session: &mut ServerSession, limit: usize) -> Result<Bytes, ApiError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        if declared.is_some_and(|len| len <= MAX_DRAIN_BYTES) {
            drain(session).await;
        }
        return Err(ApiError::payload_too_large(limit));
    }
    let mut buf = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    drain(session).await;
                    return Err(ApiError::payload_too_large(limit));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            // Only the kind: pingora's message can quote bytes of the body.
            Err(e) => {
                return Err(ApiError::invalid(
                    "invalid_body",
                    format!("could not read request body ({})", e.etype().as_str()),
                ))
            }
        }
    }
}

/// Discards the rest of a refused body, bounded in bytes and time.
async fn drain(session: &mut ServerSession) {
    let work = async {
        let mut seen = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            seen += chunk.len();
            if seen > MAX_DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), work).await;
}

/// A request body read from the session as it arrives: each read waits at most `idle`.
struct SessionBody<'a> {
    session: &'a mut ServerSession,
    idle: Duration,
    read: u64,
}

#[async_trait]
impl Chunks for SessionBody<'_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        match tokio::time::timeout(self.idle, self.session.read_request_body()).await {
            Ok(Ok(chunk)) => {
                self.read += chunk.as_ref().map_or(0, |c| c.len() as u64);
                Ok(chunk)
            }
            // Only the kind: pingora's message can quote bytes of the body.
            Ok(Err(e)) => Err(ApiError::invalid(
                "invalid_body",
                format!("could not read request body ({})", e.etype().as_str()),
            )),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body stopped arriving",
            )),
        }
    }
}

/// How a response body is framed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `Content-Length`: the whole body is known.
    Length,
    /// Chunked (HTTP/1.1): the body is streamed.
    Chunked,
    /// Until the connection closes (a streamed body to an HTTP/1.0 client).
    Close,
}

fn build_response(
    status: StatusCode,
    content_type: &str,
    body: Vec<u8>,
    request_id: &str,
    headers: &[(&'static str, String)],
) -> Response<Vec<u8>> {
    build_framed(
        status,
        content_type,
        body,
        request_id,
        headers,
        Framing::Length,
    )
}

fn build_framed(
    status: StatusCode,
    content_type: &str,
    body: Vec<u8>,
    request_id: &str,
    headers: &[(&'static str, String)],
    framing: Framing,
) -> Response<Vec<u8>> {
    let mut b = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type);
    b = match framing {
        Framing::Length => b.header(http::header::CONTENT_LENGTH, body.len()),
        Framing::Chunked => b.header(http::header::TRANSFER_ENCODING, "chunked"),
        Framing::Close => b,
    };
    let mut b = b
        .header("x-request-id", request_id)
        .header(http::header::CACHE_CONTROL, "no-store");
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(body).expect("valid response parts")
}

/// The response to a HEAD request: the GET response's headers (Content-Length included) and no
/// body; pingora sends no body for HEAD.
fn without_body(response: Response<Vec<u8>>) -> Response<Vec<u8>> {
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Vec::new())
}

fn error_response(e: &ApiError, request_id: &str) -> Response<Vec<u8>> {
    let mut headers = e.extra_headers.clone();
    if let Some(s) = e.retry_after {
        headers.push(("retry-after", s.to_string()));
    }
    build_response(
        e.status,
        "application/problem+json",
        e.body(Some(request_id)),
        request_id,
        &headers,
    )
}

impl GatewayApp {
    async fn serve(
        &self,
        session: &mut ServerSession,
        route: Route,
        request_id: &str,
        log: &mut RequestLog,
    ) -> Result<Reply, ApiError> {
        let limit = self.state.config.max_body_bytes;
        let body = if route.takes_body() {
            match read_body(session, limit).await {
                Ok(b) => b,
                Err(e) => {
                    // The rest of the body is unread: the connection cannot be reused.
                    session.set_keepalive(None);
                    return Err(e);
                }
            }
        } else {
            Bytes::new()
        };
        metrics::HTTP_REQUEST_BYTES
            .with_label_values(&[route.template()])
            .inc_by(body.len() as u64);
        let head = session.req_header();
        let req = Request {
            method: head.method.clone(),
            path: head.uri.path().to_owned(),
            query: head.uri.query().unwrap_or("").to_owned(),
            headers: head.headers.clone(),
            body,
            request_id: request_id.to_owned(),
            client_ip: crate::limits::address::client_address(
                session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip()),
                &head.headers,
                &self.state.config.limits.trusted_proxies,
            ),
        };
        if !route.streams_body() {
            return api::handle(&self.state, route, &req, &mut NoBody, log).await;
        }
        let mut source = SessionBody {
            session,
            idle: Duration::from_millis(self.state.config.request_timeout_ms),
            read: 0,
        };
        let result = api::handle(&self.state, route, &req, &mut source, log).await;
        let read = source.read;
        metrics::HTTP_REQUEST_BYTES
            .with_label_values(&[route.template()])
            .inc_by(read);
        if !session.is_body_done() {
            // Answered before the whole body arrived: discard a little of the rest so the
            // client can read the answer, and never reuse the connection.
            session.set_keepalive(None);
            drain(session).await;
        }
        result
    }

    /// Writes the response; a stream's chunks are produced and written one at a time, each
    /// within the request timeout. Returns whether the whole response was written, and the
    /// body bytes sent.
    async fn write(
        &self,
        session: &mut ServerSession,
        response: Response<Vec<u8>>,
        stream: Option<Stream>,
    ) -> (bool, u64) {
        let (parts, body) = response.into_parts();
        let head: ResponseHeader = parts.into();
        if let Err(e) = session.write_response_header(Box::new(head)).await {
            write_failed(&e);
            return (false, 0);
        }
        let mut sent = body.len() as u64;
        let Some(Stream(mut chunks)) = stream else {
            if !body.is_empty() {
                if let Err(e) = session.write_response_body(body.into(), true).await {
                    write_failed(&e);
                    return (false, sent);
                }
            }
            return (true, sent);
        };
        let step = Duration::from_millis(self.state.config.request_timeout_ms);
        let mut next = (!body.is_empty()).then(|| Bytes::from(body));
        loop {
            if let Some(chunk) = next.take() {
                match tokio::time::timeout(step, session.write_response_body(chunk, false)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        write_failed(&e);
                        return (false, sent);
                    }
                    Err(_) => {
                        tracing::debug!("client stopped reading a streamed response; closed");
                        return (false, sent);
                    }
                }
            }
            match tokio::time::timeout(step, chunks.next_chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    sent += chunk.len() as u64;
                    next = Some(chunk);
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    // The status is sent already: the client sees an incomplete body.
                    tracing::warn!(
                        status = e.status.as_u16(),
                        code = e.code,
                        "streamed response aborted"
                    );
                    return (false, sent);
                }
                Err(_) => {
                    tracing::warn!("streamed response aborted: the next chunk took too long");
                    return (false, sent);
                }
            }
        }
        match session.write_response_body(Bytes::new(), true).await {
            Ok(()) => (true, sent),
            Err(e) => {
                write_failed(&e);
                (false, sent)
            }
        }
    }
}

#[async_trait]
impl Answer for GatewayApp {
    async fn answer(&self, session: &mut ServerSession) -> bool {
        let started = Instant::now();
        metrics::HTTP_IN_FLIGHT.inc();
        let request_id = request_id(session);
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        let mut log = RequestLog::default();
        // HEAD is answered as GET without the body (load balancers probe with it).
        let is_head = method == http::Method::HEAD;
        let route_method = if is_head {
            http::Method::GET
        } else {
            method.clone()
        };
        let matched = match_route(self.listener, &route_method, &path);
        let template = matched
            .as_ref()
            .map(|r| r.template())
            .unwrap_or("unmatched");
        let outcome = match matched {
            Ok(route) => {
                let timeout = Duration::from_millis(self.state.config.request_timeout_ms);
                // Every log line of the request carries its id.
                let span = tracing::info_span!("request", request_id = %request_id);
                let work = self
                    .serve(session, route, &request_id, &mut log)
                    .instrument(span);
                if route.long_running() {
                    // Bounded step by step instead (each body read, store batch and chunk).
                    work.await
                } else {
                    match tokio::time::timeout(timeout, work).await {
                        Ok(r) => r,
                        Err(_) => {
                            session.set_keepalive(None);
                            Err(ApiError::unavailable(
                                "request_timeout",
                                "the request took too long and was abandoned",
                                1,
                            ))
                        }
                    }
                }
            }
            Err(e) => Err(e),
        };
        let mut code = outcome.as_ref().err().map(|e| e.code);
        let (response, stream) = match outcome {
            Ok(reply) => {
                let framing = match (&reply.stream, session.req_header().version) {
                    (None, _) => Framing::Length,
                    (Some(_), http::Version::HTTP_10 | http::Version::HTTP_09) => {
                        session.set_keepalive(None);
                        Framing::Close
                    }
                    (Some(_), _) => Framing::Chunked,
                };
                let response = build_framed(
                    reply.status,
                    reply.content_type,
                    reply.body,
                    &request_id,
                    &reply.headers,
                    framing,
                );
                (response, reply.stream)
            }
            Err(e) => (error_response(&e, &request_id), None),
        };
        let (response, stream) = if is_head {
            (without_body(response), None)
        } else {
            (response, stream)
        };
        let status = response.status();
        let streamed = stream.is_some();
        let (written, sent) = self.write(session, response, stream).await;
        if streamed && !written {
            code = Some("stream_aborted");
        }
        let elapsed = started.elapsed();
        let class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        // Unknown methods share one label value so clients cannot grow the series count.
        let method_label = match method {
            http::Method::GET
            | http::Method::POST
            | http::Method::PUT
            | http::Method::PATCH
            | http::Method::DELETE
            | http::Method::HEAD
            | http::Method::OPTIONS => method.as_str(),
            _ => "OTHER",
        };
        metrics::HTTP_REQUESTS
            .with_label_values(&[template, method_label, class])
            .inc();
        metrics::HTTP_DURATION
            .with_label_values(&[template, method_label])
            .observe(elapsed.as_secs_f64());
        metrics::HTTP_RESPONSE_BYTES
            .with_label_values(&[template])
            .inc_by(sent);
        metrics::HTTP_IN_FLIGHT.dec();
        if let Some(org) = log.org_id {
            self.state.top_tenants.record(org);
        }
        let org = log.org_id.map(|o| o.to_string());
        tracing::info!(
            target: "access",
            request_id = %request_id,
            method = %method,
            route = template,
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            org_id = org.as_deref().unwrap_or("-"),
            error = code.unwrap_or("-"),
            "request"
        );
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_distinct_version_4_uuids() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        for id in [a, b] {
            let parsed = uuid::Uuid::parse_str(&id).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
            assert_eq!(id, parsed.hyphenated().to_string());
        }
    }
}
