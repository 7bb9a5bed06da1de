//! An in-process door into the emulator's request pipeline for the fuzzer
//! (`fuzz/fuzz_targets/emulator_request.rs`): the same router, handlers and
//! state a TLS client reaches, without sockets or certificates, so hostile
//! methods, paths, queries, headers and bodies are tried by the hundred
//! thousand. Built only with the `fuzzing` feature.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request};
use tower::ServiceExt;

use super::app::App;
use super::error::EmulatorError;
use super::server;
use super::settings::DEV_TOKEN;

/// An emulator without a listener, serving requests handed to it directly.
pub struct FuzzVault {
    router: axum::Router,
}

impl FuzzVault {
    /// An emulator keeping its state in `state_dir` (a tmpfs directory
    /// keeps the fuzzer fast), accepting the development token.
    pub async fn open(state_dir: &Path) -> Result<Self, EmulatorError> {
        let app = App::in_process(state_dir, DEV_TOKEN, None).await?;
        Ok(Self { router: server::router(Arc::new(app)) })
    }

    /// Sends one request and returns the response's status and body. A
    /// request the HTTP layer itself could not carry (a method or header
    /// that is not valid HTTP) is `None`.
    pub async fn request(
        &self,
        method: &[u8],
        path_and_query: &str,
        headers: &[(&str, &[u8])],
        body: Vec<u8>,
    ) -> Option<(u16, Vec<u8>)> {
        let mut request = Request::builder().method(Method::from_bytes(method).ok()?).uri(path_and_query);
        for (name, value) in headers {
            request =
                request.header(HeaderName::from_bytes(name.as_bytes()).ok()?, HeaderValue::from_bytes(value).ok()?);
        }
        let request = request.body(Body::from(body)).ok()?;
        let response = self.router.clone().oneshot(request).await.expect("the router is infallible");
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.ok()?;
        Some((status, body.to_vec()))
    }
}
