//! Optional bearer-token authentication of a whole server (`meta.auth_token`,
//! `worker.storage_grpc.auth_token`): a wrapper around its [`Handler`], so the handlers themselves know
//! nothing about it.
//!
//! Tokens are compared in constant time over their SHA-256 digests, so neither the content nor the
//! length of the configured token leaks through timing.

use std::rc::Rc;

use futures::FutureExt;
use subtle::ConstantTimeEq;

use super::server::Handler;
use super::Body;

/// How a refused request is answered (the server's own error format).
pub type Refusal = fn(&http::Request<hyper::body::Incoming>) -> http::Response<Body>;

/// A token to check.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl Token {
    /// `None` for an empty (unset) token.
    pub fn new(token: &str) -> Option<Token> {
        (!token.is_empty()).then(|| Token {
            digest: sha256(token.as_bytes()),
        })
    }

    /// True when `request` carries `authorization: Bearer <this token>`.
    pub fn admits<B>(&self, request: &http::Request<B>) -> bool {
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        match presented {
            Some(token) => bool::from(sha256(token.as_bytes()).ct_eq(&self.digest)),
            None => false,
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// `handler` behind `token` (if set): a request without the token gets `refuse`'s answer, unless
/// `open(path)` says its path needs none.
pub fn require_token(
    handler: Handler,
    token: Option<Token>,
    open: fn(&http::Method, &str) -> bool,
    refuse: Refusal,
) -> Handler {
    let Some(token) = token else {
        return handler;
    };
    Rc::new(move |request| {
        if open(request.method(), request.uri().path()) || token.admits(&request) {
            return handler(request);
        }
        let response = refuse(&request);
        async move { response }.boxed_local()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::get("/x");
        if let Some(value) = authorization {
            builder = builder.header(http::header::AUTHORIZATION, value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        assert!(Token::new("").is_none());
        let token = Token::new("s3cret").unwrap();
        assert!(token.admits(&request(Some("Bearer s3cret"))));
        assert!(token.admits(&request(Some("bearer  s3cret "))));
        for wrong in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("Basic s3cret"),
            Some("s3cret"),
        ] {
            assert!(!token.admits(&request(wrong)), "{wrong:?}");
        }
    }
}
