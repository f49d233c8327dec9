//! Who may report: a shared bearer token from a file (re-read when the file changes: a mounted
//! Secret is rotated by swapping a symlink), the cluster's own TokenReview for the agents'
//! ServiceAccount tokens, or nobody checked (`--no-auth`, explicit).

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, Hasher as _},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use axum::http::{HeaderMap, StatusCode, header};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};

use super::Refusal;

/// TokenReview results are reused this long: 5,000 agents pushing every minute would otherwise
/// ask the API server 5,000 times a minute.
pub const REVIEW_CACHE_TTL: Duration = Duration::from_secs(60);
/// Past this many cached tokens, expired entries are dropped (and, if that is not enough, all).
const REVIEW_CACHE_MAX: usize = 50_000;
/// The TokenReview `user.extra` key naming the node a bound ServiceAccount token was issued on.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading the token file {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("the token file {} is empty", .0.display())]
    Empty(PathBuf),
    #[error("{0:?} is not NAMESPACE/NAME")]
    ServiceAccount(String),
}

/// A ServiceAccount allowed to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for ServiceAccount {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(AuthError::ServiceAccount(s.into())),
        }
    }
}

impl std::fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// `--no-auth`.
    Anyone,
    /// The shared token.
    SharedToken,
    /// A reviewed ServiceAccount token; `node` when it is bound to a node (its pod's).
    ServiceAccount {
        account: ServiceAccount,
        node: Option<String>,
    },
}

impl Identity {
    /// The only node this identity may report for, when it is bound to one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Self::ServiceAccount { node, .. } => node.as_deref(),
            _ => None,
        }
    }
}

pub struct Authenticator(Kind);

enum Kind {
    Anyone,
    Token(TokenFile),
    Review(Reviewer),
}

impl Authenticator {
    pub fn anyone() -> Self {
        Self(Kind::Anyone)
    }

    pub fn token_file(path: &Path) -> Result<Self, AuthError> {
        Ok(Self(Kind::Token(TokenFile::load(path)?)))
    }

    pub fn token_review(
        client: kube::Client,
        allowed: Vec<ServiceAccount>,
        audience: Option<String>,
    ) -> Self {
        Self(Kind::Review(Reviewer {
            client,
            allowed,
            audience,
            cache: Mutex::new(HashMap::new()),
            keys: (
                std::collections::hash_map::RandomState::new(),
                std::collections::hash_map::RandomState::new(),
            ),
        }))
    }

    pub async fn check(&self, headers: &HeaderMap) -> Result<Identity, Refusal> {
        match &self.0 {
            Kind::Anyone => Ok(Identity::Anyone),
            Kind::Token(t) => t.check(bearer(headers)?).map(|()| Identity::SharedToken),
            Kind::Review(r) => r.check(bearer(headers)?).await,
        }
    }
}

fn unauthorized(message: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::UNAUTHORIZED, message)
}

fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "no Authorization header: send Authorization: Bearer <token>",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(unauthorized(
            "the Authorization header is not a bearer token: send Authorization: Bearer <token>",
        )),
    }
}

/// Equal without an early exit, so the time taken does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

struct TokenFile {
    path: PathBuf,
    state: Mutex<TokenState>,
}

struct TokenState {
    token: Vec<u8>,
    /// What the file looked like when read: a change of either means it was replaced.
    stamp: (Option<SystemTime>, u64),
    /// The last re-read failed (logged once until it works again).
    failing: bool,
}

fn stamp(path: &Path) -> std::io::Result<(Option<SystemTime>, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified().ok(), m.len()))
}

fn read_token(path: &Path) -> Result<Vec<u8>, AuthError> {
    let text = std::fs::read(path).map_err(|e| AuthError::Read(path.into(), e))?;
    let token = text.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(AuthError::Empty(path.into()));
    }
    Ok(token)
}

impl TokenFile {
    fn load(path: &Path) -> Result<Self, AuthError> {
        let stamp = stamp(path).map_err(|e| AuthError::Read(path.into(), e))?;
        Ok(Self {
            path: path.into(),
            state: Mutex::new(TokenState {
                token: read_token(path)?,
                stamp,
                failing: false,
            }),
        })
    }

    fn check(&self, offered: &str) -> Result<(), Refusal> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A stat per request (microseconds) keeps rotation immediate without a watcher.
        let now = stamp(&self.path).ok();
        if now.is_some_and(|n| n != s.stamp) {
            match read_token(&self.path) {
                Ok(token) => {
                    s.token = token;
                    s.stamp = now.unwrap_or_default();
                    s.failing = false;
                    tracing::info!(path = %self.path.display(), "token file re-read");
                }
                Err(e) if !s.failing => {
                    s.failing = true;
                    tracing::warn!(error = %crate::observed::error_chain(&e), "keeping the previous token");
                }
                Err(_) => {}
            }
        }
        if constant_time_eq(offered.as_bytes(), &s.token) {
            Ok(())
        } else {
            Err(unauthorized("wrong bearer token"))
        }
    }
}

/// When the API server answered, and its answer.
type Cached = (Instant, Result<Identity, Refusal>);

struct Reviewer {
    client: kube::Client,
    allowed: Vec<ServiceAccount>,
    audience: Option<String>,
    cache: Mutex<HashMap<u128, Cached>>,
    /// Two independently keyed SipHashes: a 128-bit key for the cache that nobody outside can
    /// compute, so the cache never holds the tokens themselves.
    keys: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
}

impl Reviewer {
    fn key(&self, token: &str) -> u128 {
        let half = |k: &std::collections::hash_map::RandomState| {
            let mut h = k.build_hasher();
            h.write(token.as_bytes());
            h.finish()
        };
        (u128::from(half(&self.keys.0)) << 64) | u128::from(half(&self.keys.1))
    }

    async fn check(&self, token: &str) -> Result<Identity, Refusal> {
        let key = self.key(token);
        let now = Instant::now();
        if let Some((at, result)) = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            && now.duration_since(*at) < REVIEW_CACHE_TTL
        {
            return result.clone();
        }
        let result = self.review(token).await?;
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= REVIEW_CACHE_MAX {
            cache.retain(|_, (at, _)| now.duration_since(*at) < REVIEW_CACHE_TTL);
            if cache.len() >= REVIEW_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (now, result.clone()));
        result
    }

    /// The API server's verdict (outer error: it could not be asked; not cached).
    async fn review(&self, token: &str) -> Result<Result<Identity, Refusal>, Refusal> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                audiences: self.audience.clone().map(|a| vec![a]),
            },
            ..TokenReview::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let answer = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %crate::observed::error_chain(&e), "TokenReview failed");
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("could not review the token with the Kubernetes API server: {e}"),
                )
            })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(Err(unauthorized(match status.error {
                Some(e) if !e.is_empty() => {
                    format!("the Kubernetes API server rejected the token: {e}")
                }
                _ => "the Kubernetes API server rejected the token".into(),
            })));
        }
        // An authenticator that ignores audiences answers without them: the token is then valid
        // for the API server only, not for us (the TokenReview API's own advice).
        if let Some(audience) = &self.audience
            && !status.audiences.iter().flatten().any(|a| a == audience)
        {
            return Ok(Err(unauthorized(format!(
                "the token was not issued for the audience {audience:?}"
            ))));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some(account) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .map(|(ns, name)| ServiceAccount {
                namespace: ns.into(),
                name: name.into(),
            })
        else {
            return Ok(Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{username:?} is not a ServiceAccount; only the agents' ServiceAccount may report"
                ),
            )));
        };
        if !self.allowed.contains(&account) {
            let allowed: Vec<String> = self.allowed.iter().map(ToString::to_string).collect();
            return Ok(Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "ServiceAccount {account} may not report (allowed: {})",
                    allowed.join(", ")
                ),
            )));
        }
        let node = user
            .extra
            .and_then(|mut extra| extra.remove(NODE_NAME_EXTRA))
            .and_then(|v| v.into_iter().next());
        Ok(Ok(Identity::ServiceAccount { account, node }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use axum::{Json, Router, routing::post};

    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().expect("header"));
        }
        h
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn service_accounts_parse_as_namespace_slash_name() {
        let sa: ServiceAccount = "kube-system/calico-dataplane-agent"
            .parse()
            .expect("parses");
        assert_eq!(sa.to_string(), "kube-system/calico-dataplane-agent");
        for bad in ["nope", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<ServiceAccount>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_shared_token_is_checked_and_reread_when_the_file_changes() {
        let dir = std::env::temp_dir().join(format!("collector-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("token");
        std::fs::write(&path, "first-token\n").expect("write");
        let auth = Authenticator::token_file(&path).expect("loads");

        assert_eq!(
            auth.check(&headers(Some("Bearer first-token"))).await,
            Ok(Identity::SharedToken)
        );
        let missing = auth.check(&headers(None)).await.expect_err("missing");
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
        assert!(
            missing.message.contains("no Authorization header"),
            "{}",
            missing.message
        );
        let wrong = auth
            .check(&headers(Some("Bearer second-token")))
            .await
            .expect_err("wrong");
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert_eq!(wrong.message, "wrong bearer token");
        let basic = auth
            .check(&headers(Some("Basic Zm9vOmJhcg==")))
            .await
            .expect_err("basic");
        assert!(
            basic.message.contains("not a bearer token"),
            "{}",
            basic.message
        );

        // Rotation: a new file in place of the old (a different length, so the change shows
        // even within the filesystem's timestamp granularity).
        std::fs::write(dir.join("token.new"), "second-token-longer").expect("write");
        std::fs::rename(dir.join("token.new"), &path).expect("rename");
        assert_eq!(
            auth.check(&headers(Some("Bearer second-token-longer")))
                .await,
            Ok(Identity::SharedToken)
        );
        assert!(
            auth.check(&headers(Some("Bearer first-token")))
                .await
                .is_err()
        );
        // A broken rotation keeps the token that worked.
        std::fs::write(&path, "  \n").expect("write");
        assert_eq!(
            auth.check(&headers(Some("Bearer second-token-longer")))
                .await,
            Ok(Identity::SharedToken)
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(
            Authenticator::token_file(&dir.join("absent")),
            Err(AuthError::Read(..))
        ));
    }

    /// A mock API server answering TokenReviews: `good` is the agent on node-a, `other` another
    /// ServiceAccount, `user` a person; anything else is not authenticated.
    async fn mock_api() -> (kube::Client, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let app = Router::new().route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(move |Json(review): Json<serde_json::Value>| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    let token = review["spec"]["token"].as_str().unwrap_or_default();
                    let audiences = review["spec"]["audiences"].clone();
                    let status = match token {
                        "good" => serde_json::json!({"authenticated": true, "audiences": audiences, "user": {
                            "username": "system:serviceaccount:calico-system:calico-dataplane-agent",
                            "extra": {"authentication.kubernetes.io/node-name": ["node-a"]}}}),
                        "other" => serde_json::json!({"authenticated": true, "audiences": audiences, "user": {
                            "username": "system:serviceaccount:default:default"}}),
                        "user" => serde_json::json!({"authenticated": true, "audiences": audiences, "user": {"username": "alice"}}),
                        "api-server-only" => serde_json::json!({"authenticated": true, "user": {
                            "username": "system:serviceaccount:calico-system:calico-dataplane-agent"}}),
                        _ => serde_json::json!({"authenticated": false, "error": "invalid bearer token"}),
                    };
                    Json(serde_json::json!({
                        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "metadata": {}, "spec": review["spec"], "status": status
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let config = kube::Config::new(format!("http://{addr}").parse().expect("url"));
        (kube::Client::try_from(config).expect("client"), calls, task)
    }

    #[tokio::test]
    async fn token_review_allows_the_agents_service_account_and_caches_the_answer() {
        let (client, calls, task) = mock_api().await;
        let auth = Authenticator::token_review(
            client,
            vec!["calico-system/calico-dataplane-agent".parse().expect("sa")],
            Some("calico-dpagent-collector".into()),
        );
        let ok = auth
            .check(&headers(Some("Bearer good")))
            .await
            .expect("allowed");
        assert_eq!(ok.node(), Some("node-a"));
        assert_eq!(
            ok,
            Identity::ServiceAccount {
                account: "calico-system/calico-dataplane-agent".parse().expect("sa"),
                node: Some("node-a".into())
            }
        );
        let bad = auth
            .check(&headers(Some("Bearer bad")))
            .await
            .expect_err("bad");
        assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
        assert!(
            bad.message.contains("invalid bearer token"),
            "{}",
            bad.message
        );
        let other = auth
            .check(&headers(Some("Bearer other")))
            .await
            .expect_err("other");
        assert_eq!(other.status, StatusCode::FORBIDDEN);
        assert!(
            other.message.contains("default/default may not report"),
            "{}",
            other.message
        );
        let user = auth
            .check(&headers(Some("Bearer user")))
            .await
            .expect_err("user");
        assert_eq!(user.status, StatusCode::FORBIDDEN);
        assert!(
            user.message.contains("not a ServiceAccount"),
            "{}",
            user.message
        );
        let aud = auth
            .check(&headers(Some("Bearer api-server-only")))
            .await
            .expect_err("audience");
        assert_eq!(aud.status, StatusCode::UNAUTHORIZED);
        assert!(
            aud.message.contains("not issued for the audience"),
            "{}",
            aud.message
        );
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        // Positive and negative answers come from the cache for a while.
        for _ in 0..10 {
            assert!(auth.check(&headers(Some("Bearer good"))).await.is_ok());
            assert!(auth.check(&headers(Some("Bearer bad"))).await.is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert_eq!(
            auth.check(&headers(None)).await.expect_err("none").status,
            StatusCode::UNAUTHORIZED
        );
        // The API server gone: 503 (retry later), and nothing cached.
        task.abort();
        let _ = task.await;
        let down = auth
            .check(&headers(Some("Bearer new")))
            .await
            .expect_err("down");
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            down.message.contains("could not review the token"),
            "{}",
            down.message
        );
    }
}
