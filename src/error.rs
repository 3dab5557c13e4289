//! API errors, rendered as RFC 9457 `application/problem+json` with a stable `code`.

use crate::domain::ValidationError;
use http::StatusCode;
use serde::Serialize;

/// An error answered to a client. Build one with the constructors below so that status, `code`
/// and `title` always agree.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `organization_not_found`.
    pub code: &'static str,
    /// Human-readable explanation of this occurrence.
    pub detail: String,
    /// Seconds to put in `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
    /// Extra headers (e.g. rate-limit headers on 429).
    pub extra_headers: Vec<(&'static str, String)>,
    /// Extension members of the problem body (RFC 9457 section 3.2), e.g. the `line` and
    /// `imported` count of a refused import. Values are the gateway's own, never request bytes.
    pub extensions: Vec<(&'static str, u64)>,
}

/// The JSON body of a problem response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

impl ApiError {
    /// Any error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            extra_headers: Vec::new(),
            extensions: Vec::new(),
        }
    }

    /// 400 for input that fails validation.
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 401 with the one generic message used for every authentication failure.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing, invalid or expired credentials",
        )
    }

    /// 401 for a failed login: one body whatever the cause, so it reveals nothing.
    pub fn bad_credentials() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "invalid email or password",
        )
    }

    /// 403: authenticated, but for another organization.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404 for an unknown organization.
    pub fn org_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "organization_not_found",
            "no organization with that name",
        )
    }

    /// 404 for an unknown route.
    pub fn route_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "route_not_found", "no such route")
    }

    /// 405 for a known path with the wrong method; `allow` lists the right ones.
    pub fn method_not_allowed(allow: String) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("method not allowed on this route (allowed: {allow})"),
        );
        e.extra_headers.push(("allow", allow));
        e
    }

    /// 409 for a name or email already taken.
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    /// 413 for a body over the limit.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {limit} bytes"),
        )
    }

    /// 415 when the body is not JSON.
    pub fn unsupported_media_type() -> Self {
        Self::unsupported_media_type_of("application/json")
    }

    /// 415 when the body is not of the `expected` media type.
    pub fn unsupported_media_type_of(expected: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("request body must be {expected}"),
        )
    }

    /// The same error with an extension member added to its body.
    pub fn with_extension(mut self, name: &'static str, value: u64) -> Self {
        self.extensions.retain(|(n, _)| *n != name);
        self.extensions.push((name, value));
        self
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, detail: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail);
        e.retry_after = Some(retry_after);
        e
    }

    /// 500; the cause is logged by the caller, never shown.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the gateway log for this request id",
        )
    }

    /// The problem `title`: the status's reason phrase.
    pub fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }

    /// Serializes the problem body.
    pub fn body(&self, request_id: Option<&str>) -> Vec<u8> {
        let body = ProblemBody {
            kind: format!(
                "https://org-gateway.dev/problems/{}",
                self.code.replace('_', "-")
            ),
            title: self.title(),
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            request_id,
        };
        if self.extensions.is_empty() {
            return serde_json::to_vec(&body).expect("problem body serializes");
        }
        let mut value = serde_json::to_value(&body).expect("problem body serializes");
        if let Some(map) = value.as_object_mut() {
            for (name, v) in &self.extensions {
                map.insert((*name).to_owned(), (*v).into());
            }
        }
        serde_json::to_vec(&value).expect("problem body serializes")
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::invalid("validation_failed", e.to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl std::error::Error for ApiError {}
