//! Felix's own readiness endpoint (`HealthHost:HealthPort`, default `localhost:9099`,
//! `GET /readiness`: 200/204 ready, 503 not ready). Read with a minimal HTTP/1.0 request so no
//! HTTP client is needed for one status line.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Felix's default health endpoint (`healthHost`/`healthPort`).
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:9099";
const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FelixHealth {
    pub endpoint: String,
    /// HTTP status of `GET /readiness`.
    pub status: u16,
    /// The body Felix sends with its status (which reporters are not ready).
    pub detail: String,
}

impl FelixHealth {
    pub fn ready(&self) -> bool {
        matches!(self.status, 200 | 204)
    }
}

/// Asks Felix whether it is ready. `Err` means the endpoint could not be asked (health
/// reporting off, another port, not in this network namespace).
pub async fn read(endpoint: &str) -> Result<FelixHealth, HealthError> {
    let io = |what: &'static str| {
        move |source| HealthError::Io {
            what,
            endpoint: endpoint.to_string(),
            source,
        }
    };
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(endpoint)
            .await
            .map_err(io("connect"))?;
        s.write_all(b"GET /readiness HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .map_err(io("write to"))?;
        let mut buf = Vec::new();
        s.take(64 * 1024)
            .read_to_end(&mut buf)
            .await
            .map_err(io("read from"))?;
        Ok::<_, HealthError>(buf)
    };
    let buf = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| HealthError::Timeout {
            endpoint: endpoint.to_string(),
        })??;
    parse(endpoint, &String::from_utf8_lossy(&buf))
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("{what} {endpoint}")]
    Io {
        what: &'static str,
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{endpoint} did not answer within {TIMEOUT:?}")]
    Timeout { endpoint: String },
    #[error("{endpoint}: not an HTTP response: {status_line:?}")]
    NotHttp {
        endpoint: String,
        status_line: String,
    },
}

impl HealthError {
    /// Nothing listens on the endpoint: Felix's health server is off or elsewhere, which is
    /// not a reading error (`felix.unhealthy` then does not apply).
    pub fn not_running(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}

fn parse(endpoint: &str, response: &str) -> Result<FelixHealth, HealthError> {
    let status_line = response.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| HealthError::NotHttp {
            endpoint: endpoint.to_string(),
            status_line: status_line.to_string(),
        })?;
    let detail = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .trim()
        .chars()
        .take(500)
        .collect();
    Ok(FelixHealth {
        endpoint: endpoint.to_string(),
        status,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve_once(response: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut req = [0u8; 1024];
                let _ = s.read(&mut req).await;
                let _ = s.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn ready_and_not_ready() {
        let ok = serve_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        assert!(read(&ok).await.expect("answer").ready());
        let bad = serve_once("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\n+-------------------+\n| InternalDataplaneMainLoop | reporting non-ready |\n").await;
        let h = read(&bad).await.expect("answer");
        assert_eq!(h.status, 503);
        assert!(!h.ready());
        assert!(h.detail.contains("InternalDataplaneMainLoop"));
    }

    #[tokio::test]
    async fn no_endpoint_is_an_error_not_a_verdict() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        assert!(read(&addr).await.is_err());
        assert!(parse("x", "garbage").is_err());
    }
}
