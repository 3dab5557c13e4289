//! The API as the harness sees it: one keep-alive HTTP client and one call per operation.
//! Nothing here is specific to this gateway beyond the documented API contract, so the same
//! run can drive any implementation of it.

use super::stats::Outcome;
use bytes::Bytes;
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// A response reduced to what the harness needs.
#[derive(Debug)]
pub struct Reply {
    /// How the request ended.
    pub outcome: Outcome,
    /// The body of a 2xx response.
    pub body: Option<Bytes>,
    /// `Retry-After` of a refusal (429, 503), in seconds.
    pub retry_after: Option<Duration>,
}

impl Reply {
    /// The body as JSON, if it was a 2xx with a JSON body.
    pub fn json(&self) -> Option<Value> {
        self.body
            .as_ref()
            .and_then(|b| serde_json::from_slice(b).ok())
    }

    /// A string field of the JSON body.
    pub fn str_field(&self, field: &str) -> Option<String> {
        self.json()?.get(field)?.as_str().map(str::to_owned)
    }
}

/// The API under test.
#[derive(Debug, Clone)]
pub struct Api {
    client: Client,
    base: String,
}

impl Api {
    /// A client for `base_url` with keep-alive connections and a per-request timeout.
    pub fn new(base_url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            client,
            base: base_url.trim_end_matches('/').to_owned(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `POST /org/create`.
    pub async fn create_org(&self, name: &str, email: &str, password: &str) -> Reply {
        let body = json!({"organization_name": name, "email": email, "password": password});
        send(self.client.post(self.url("/org/create")).json(&body)).await
    }

    /// `POST /org/create` as relayed by a proxy for client `forwarded_for`.
    pub async fn create_org_from(
        &self,
        name: &str,
        email: &str,
        password: &str,
        forwarded_for: &str,
    ) -> Reply {
        let body = json!({"organization_name": name, "email": email, "password": password});
        let rb = self
            .client
            .post(self.url("/org/create"))
            .header("x-forwarded-for", forwarded_for)
            .json(&body);
        send(rb).await
    }

    /// `POST /admin/login`.
    pub async fn login(&self, email: &str, password: &str) -> Reply {
        let body = json!({"email": email, "password": password});
        send(self.client.post(self.url("/admin/login")).json(&body)).await
    }

    /// `GET /org/get?organization_name=`.
    pub async fn get_org(&self, name: &str) -> Reply {
        let rb = self
            .client
            .get(self.url("/org/get"))
            .query(&[("organization_name", name)]);
        send(rb).await
    }

    /// `GET /org/get?organization_name=` as the organization's admin (the full view).
    pub async fn get_org_as(&self, token: &str, name: &str) -> Reply {
        let rb = self
            .client
            .get(self.url("/org/get"))
            .query(&[("organization_name", name)])
            .bearer_auth(token);
        send(rb).await
    }

    /// `POST /data/query` with this body.
    pub async fn query(&self, token: &str, body: &Value) -> Reply {
        send(
            self.client
                .post(self.url("/data/query"))
                .bearer_auth(token)
                .json(body),
        )
        .await
    }

    /// `PUT /org/update` changing the admin email.
    pub async fn update_email(&self, token: &str, name: &str, email: &str) -> Reply {
        let body = json!({"organization_name": name, "email": email});
        send(
            self.client
                .put(self.url("/org/update"))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    /// `DELETE /org/delete?organization_name=`.
    pub async fn delete_org(&self, token: &str, name: &str) -> Reply {
        let rb = self
            .client
            .delete(self.url("/org/delete"))
            .query(&[("organization_name", name)])
            .bearer_auth(token);
        send(rb).await
    }

    /// `POST /data` with one document.
    pub async fn insert(&self, token: &str, doc: &Value) -> Reply {
        send(
            self.client
                .post(self.url("/data"))
                .bearer_auth(token)
                .json(doc),
        )
        .await
    }

    /// `GET /data/{id}`.
    pub async fn read(&self, token: &str, id: &str) -> Reply {
        send(
            self.client
                .get(self.url(&format!("/data/{id}")))
                .bearer_auth(token),
        )
        .await
    }

    /// A plain `GET` of any path.
    pub async fn raw_get(&self, path: &str) -> Reply {
        send(self.client.get(self.url(path))).await
    }
}

/// The first id of a `POST /data` response (`{"inserted_ids": ["..."]}`).
pub fn inserted_id(reply: &Reply) -> Option<String> {
    let v = reply.json()?;
    v.get("inserted_ids")?.get(0)?.as_str().map(str::to_owned)
}

async fn send(rb: RequestBuilder) -> Reply {
    match rb.send().await {
        Ok(resp) => {
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            // Read the whole body: the latency includes it and the connection stays reusable.
            match resp.bytes().await {
                Ok(body) => Reply {
                    retry_after,
                    ..classify(status, body)
                },
                Err(e) => failure(&e),
            }
        }
        Err(e) => failure(&e),
    }
}

fn classify(status: StatusCode, body: Bytes) -> Reply {
    if status.is_success() {
        Reply {
            outcome: Outcome::Ok,
            body: Some(body),
            retry_after: None,
        }
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        Reply {
            outcome: Outcome::RateLimited,
            body: None,
            retry_after: None,
        }
    } else {
        Reply {
            outcome: Outcome::Error(status.as_u16().to_string()),
            body: None,
            retry_after: None,
        }
    }
}

fn failure(e: &reqwest::Error) -> Reply {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "transport"
    };
    Reply {
        outcome: Outcome::Error(kind.into()),
        body: None,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses() {
        let ok = classify(
            StatusCode::CREATED,
            Bytes::from_static(b"{\"inserted_ids\":[\"a1\"]}"),
        );
        assert_eq!(ok.outcome, Outcome::Ok);
        assert_eq!(inserted_id(&ok).as_deref(), Some("a1"));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, Bytes::new()).outcome,
            Outcome::RateLimited
        );
        assert_eq!(
            classify(StatusCode::NOT_FOUND, Bytes::new()).outcome,
            Outcome::Error("404".into())
        );
    }

    #[test]
    fn reads_token_field() {
        let r = classify(
            StatusCode::OK,
            Bytes::from_static(b"{\"access_token\":\"t\",\"token_type\":\"bearer\"}"),
        );
        assert_eq!(r.str_field("access_token").as_deref(), Some("t"));
        assert_eq!(r.str_field("missing"), None);
    }
}
