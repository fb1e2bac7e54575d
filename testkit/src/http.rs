//! A blocking HTTP agent for tests and whole responses read from it.

use std::time::Duration;

/// Largest response body read.
pub const BODY_LIMIT: u64 = 256 * 1024 * 1024;

/// A blocking HTTP agent that returns every status as a response (no error on 4xx/5xx), uses
/// no proxy, follows no redirect, and gives up on any call after `timeout`.
pub fn agent_with_timeout(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// A whole HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: ureq::http::HeaderMap,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// A header as text, if present and ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as (lossy) UTF-8, cut at 2000 characters, for messages.
    pub fn excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(2000)
            .collect()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.excerpt()))
    }

    /// The OCI error codes of an error body (`{"errors":[{"code":…}]}`); empty when the body
    /// is not one.
    pub fn error_codes(&self) -> Vec<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| {
                v["errors"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|e| e["code"].as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default()
    }
}

/// Reads a ureq result into a [`Resp`] (body up to [`BODY_LIMIT`]); `Err` with the transport
/// error.
pub fn read_resp(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Resp, String> {
    let mut resp = r.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT)
        .read_to_vec()
        .map_err(|e| format!("failed to read the body: {e}"))?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_of_an_oci_error_body() {
        let r = Resp {
            status: 503,
            headers: Default::default(),
            body: br#"{"errors":[{"code":"UNAVAILABLE","message":"m"}]}"#.to_vec(),
        };
        assert_eq!(r.error_codes(), vec!["UNAVAILABLE".to_string()]);
        let not_oci = Resp {
            body: b"plain".to_vec(),
            ..r
        };
        assert!(not_oci.error_codes().is_empty());
    }
}
